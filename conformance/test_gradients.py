"""Backward agreement: dQ, dK, dV match the float64 reference backward for every backend that declares grad."""
from attnbench.check import check_backward, failure_message

from .cases import BACKWARD_PROBLEMS as PROBLEMS

NEEDS_GRAD = True


def test_backward_matches_reference(backend, device, problem):
    verdicts = check_backward(backend, problem, device)
    assert all(v.passed for v in verdicts), failure_message(backend.name, problem, verdicts, device, backward=True)
