"""Repository-wide pytest hooks (the conformance suite's own options live in conformance/conftest.py)."""


def pytest_collection_modifyitems(session, config, items):
    """Run tests marked `starts_first` first (stable order otherwise).

    Under pytest-xdist a long test collected last starts when the other workers have nearly finished and then
    runs alone; started first, the rest of the suite spreads over the other workers meanwhile (longest job first).
    The order is deterministic, so every xdist worker collects the same list.
    """
    items.sort(key=lambda item: item.get_closest_marker("starts_first") is None)
