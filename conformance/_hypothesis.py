"""Hypothesis profiles for the property suites.

    ci        (default) few examples, derandomized, no example database: the same
              examples on every run and machine, so CI is reproducible and bounded.
    thorough  many random examples, for a night run or before a release.

Pick one with `ATTNBENCH_HYPOTHESIS_PROFILE=thorough` or `pytest --hypothesis-profile thorough`
(the flag wins: hypothesis' pytest plugin loads it after this module ran). `ATTNBENCH_THOROUGH_EXAMPLES=N`
sets the thorough profile's examples per test (default 500) for a long search.
"""
import os

from hypothesis import HealthCheck, settings

# Drawing whole problems is slow-ish and filtering by capabilities rejects some draws; neither is a bug.
_QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]

settings.register_profile("ci", max_examples=25, derandomize=True, database=None, deadline=None,
                          suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("thorough", max_examples=int(os.environ.get("ATTNBENCH_THOROUGH_EXAMPLES", "500")), deadline=None, suppress_health_check=_QUIET,
                          print_blob=True)
settings.load_profile(os.environ.get("ATTNBENCH_HYPOTHESIS_PROFILE", "ci"))


def examples(ci_fraction: float = 1.0) -> int:
    """max_examples for a test that should run `ci_fraction` of the profile's examples (backward is dearer)."""
    return max(1, int(settings().max_examples * ci_fraction))
