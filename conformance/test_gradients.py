"""Backward agreement: dQ, dK, dV match the float64 reference backward for every backend that declares grad, and
the sink logits' gradient d sink (H,) where it declares sink_grad (`budget.sink_grad_bound`; full checks)."""
from ._verdict import assert_passes

from .cases import BACKWARD_PROBLEMS as PROBLEMS

NEEDS_GRAD = True


def test_backward_matches_reference(backend, device, problem):
    assert_passes(backend, problem, device, backward=True)
