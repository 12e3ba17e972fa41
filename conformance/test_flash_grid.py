"""FlashAttention's own test grid (conformance/flash_grid.py): forward and backward of every backend that
declares the problem, under the one budget, with declared known deviations (attnbench/deviations.py) reported
as such.

    pytest conformance/test_flash_grid.py                  # CI: the slice in flash_grid.CI_GRID
    pytest conformance/test_flash_grid.py --grid flash     # all 648 problems (see README for the time)
"""
import warnings

from attnbench.check import check_backward, check_forward, failure_message
from attnbench.deviations import KnownDeviationWarning

from .flash_grid import grid_problems as PROBLEMS  # noqa: N812 - conftest reads PROBLEMS (callable: options)


def _judged(verdicts):
    """The check's verdicts (known deviations already judged there), each one it re-labelled listed as a warning."""
    for note in verdicts.notes:
        warnings.warn(KnownDeviationWarning(note))
    return verdicts


def test_flash_grid_forward(backend, device, problem):
    verdicts = _judged(check_forward(backend, problem, device))
    assert all(v.passed for v in verdicts), failure_message(backend.name, problem, verdicts, device)


def test_flash_grid_backward(backend, device, problem):
    if not backend.capabilities(device).grad:
        import pytest

        pytest.skip(f"{backend.name}: no backward (grad) support")
    verdicts = _judged(check_backward(backend, problem, device))
    assert all(v.passed for v in verdicts), failure_message(backend.name, problem, verdicts, device, backward=True)
