"""Forward agreement: every backend's output (and lse) matches the float64 reference within the derived budget."""
from attnbench.check import check_forward, failure_message

from .cases import FORWARD_PROBLEMS as PROBLEMS


def test_forward_matches_reference(backend, device, problem):
    verdicts = check_forward(backend, problem, device)
    assert all(v.passed for v in verdicts), failure_message(backend.name, problem, verdicts, device)
