"""FlashAttention's own test grid (conformance/flash_grid.py): forward and backward of every backend that
declares the problem, under the one budget, with declared known deviations (attnbench/deviations.py) reported
as such.

    pytest conformance/test_flash_grid.py                  # CI: the slice in flash_grid.CI_GRID
    pytest conformance/test_flash_grid.py --grid flash     # all 5,184 problems (see README for the time)
"""
from ._verdict import assert_passes
from .flash_grid import grid_problems as PROBLEMS  # noqa: N812 - conftest reads PROBLEMS (callable: options)


def test_flash_grid_forward(backend, device, problem):
    assert_passes(backend, problem, device)


def test_flash_grid_backward(backend, device, problem):
    if not backend.capabilities(device).grad:
        import pytest

        pytest.skip(f"{backend.name}: no backward (grad) support")
    assert_passes(backend, problem, device, backward=True)
