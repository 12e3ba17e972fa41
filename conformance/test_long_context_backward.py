"""Long context, backward: dQ at the chosen query rows, dK and dV at the chosen key rows (see long_cases)."""
from attnbench.check import check_backward, failure_message

from .long_cases import BACKWARD as PROBLEMS
from .long_cases import LONG_BACKWARD as LONG_PROBLEMS  # noqa: F401 - added by conftest with --long

NEEDS_GRAD = True


def test_backward_at_long_context(backend, device, problem):
    verdicts = check_backward(backend, problem, device)
    assert all(v.passed for v in verdicts), failure_message(backend.name, problem, verdicts, device, backward=True)
