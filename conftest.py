"""Repository-wide pytest hooks. The conformance suite's options (--backend, --long, ...) are registered here too,
so `pytest tests/FILE.py --long` knows them without collecting conformance/ (attnbench/pytest_plugin.py)."""
from attnbench.pytest_plugin import register as register_suite_options


def pytest_addoption(parser, pluginmanager):
    register_suite_options(pluginmanager)


def pytest_collection_modifyitems(session, config, items):
    """Run tests marked `starts_first` first (stable order otherwise).

    Under pytest-xdist a long test collected last starts when the other workers have nearly finished and then
    runs alone; started first, the rest of the suite spreads over the other workers meanwhile (longest job first).
    The order is deterministic, so every xdist worker collects the same list.
    """
    items.sort(key=lambda item: item.get_closest_marker("starts_first") is None)


def pytest_terminal_summary(terminalreporter):
    """Print what tests recorded with `record_property("summary", text)`, and the mutation score gathered from
    every `record_property("mutation", line)` (one per mutant, tests/test_mutation_score.py), serial or -n."""
    mutation_lines = []
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, text in getattr(report, "user_properties", ()):
                if name == "summary" and report.when == "call":
                    terminalreporter.write_sep("-", report.nodeid.split("::")[-1])
                    terminalreporter.write_line(str(text))
                elif name == "mutation" and report.when == "call":
                    mutation_lines.append(str(text))
    if mutation_lines:
        killed = sum(line.split()[1] == "killed" for line in mutation_lines)
        terminalreporter.write_sep("-", "mutation score")
        terminalreporter.write_line(f"mutation score: {killed}/{len(mutation_lines)} killed")
        terminalreporter.write_line("\n".join(sorted(mutation_lines)))
