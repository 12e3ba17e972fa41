"""Forward agreement: every backend's output (and lse) matches the float64 reference within the derived budget."""
from ._verdict import assert_passes

from .cases import FORWARD_PROBLEMS as PROBLEMS


def test_forward_matches_reference(backend, device, problem):
    assert_passes(backend, problem, device)
