"""Long context, backward: dQ at the chosen query rows, dK and dV at the chosen key rows (see long_cases)."""
from ._verdict import assert_passes

from .long_cases import BACKWARD as PROBLEMS
from .long_cases import LONG_BACKWARD as LONG_PROBLEMS  # noqa: F401 - added by conftest with --long

NEEDS_GRAD = True


def test_backward_at_long_context(backend, device, problem):
    assert_passes(backend, problem, device, backward=True)
