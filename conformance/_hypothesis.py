"""Example counts for the property suites. The hypothesis profiles (`ci`, the default, and `thorough`) are
registered and loaded by attnbench/pytest_plugin.py, before hypothesis' pytest plugin reads
`--hypothesis-profile`, however the suite is started (checkout, `attnbench conformance`, `--pyargs`)."""
from hypothesis import settings


def examples(ci_fraction: float = 1.0) -> int:
    """max_examples for a test that should run `ci_fraction` of the profile's examples (backward is dearer)."""
    return max(1, int(settings().max_examples * ci_fraction))
