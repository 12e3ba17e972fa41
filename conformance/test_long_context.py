"""Long context, forward: every backend whose capabilities cover it, at N, M in the thousands (see long_cases).

A kernel that drops keys beyond a tile count, keeps its running accumulator in half precision, or mishandles
the last partial tile of a long sequence passes every small case and fails here.
"""
from ._verdict import assert_passes

from .long_cases import FORWARD as PROBLEMS
from .long_cases import LONG_FORWARD as LONG_PROBLEMS  # noqa: F401 - added by conftest with --long


def test_forward_at_long_context(backend, device, problem):
    assert_passes(backend, problem, device)
