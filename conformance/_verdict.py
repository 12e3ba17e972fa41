"""The one assertion every conformance test makes: `attnbench.evaluate` passed this (backend, problem, device).

The verdict is the one `attnbench check` and perf give (`attnbench.evaluate`), declared known deviations
included and listed here as warnings (`pytest -ra` shows them), so a problem cannot pass on one path and fail
on another.
"""
from __future__ import annotations

import warnings

import pytest

from attnbench.deviations import KnownDeviationWarning
from attnbench.evaluate import Evaluation, evaluate


def assert_passes(backend, problem, device: str, *, backward: bool = False) -> Evaluation:
    """Evaluate the forward (or, with backward, the gradients) and fail the test with every verdict and the
    repro line unless it passed; a problem the backend does not declare is a skip with its reason."""
    result = evaluate(backend, problem, device, backward=backward, forward=not backward)
    if result.skipped is not None:
        pytest.skip(f"{backend.name}: {result.skipped}")
    for note in result.notes:
        warnings.warn(KnownDeviationWarning(note))
    for line in result.unjudged:
        warnings.warn(UserWarning(f"{backend.name} on {problem.id}: not judged: {line}"))
    assert result.passed, result.message()
    return result
