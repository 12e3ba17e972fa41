"""Softmax: scores -> weights that are positive and sum to one along `axis`.

    softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)

Subtracting the row maximum changes nothing mathematically (the factor cancels)
and keeps exp from overflowing. A row that is entirely -inf (every key masked)
gives all-zero weights and a log-sum-exp of -inf, the convention every backend
is held to. NaN and +inf in the input propagate as NaN.
"""
from __future__ import annotations

import numpy as np


def _shifted_exp(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (exp(x - shift), shift) with shift = row max, or 0 where the row max is -inf."""
    row_max = np.max(x, axis=axis, keepdims=True)
    shift = np.where(row_max == -np.inf, 0.0, row_max)
    return np.exp(x - shift), shift


def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64; all -inf rows give zeros (not NaN)."""
    x = np.asarray(x, dtype=np.float64)
    e, _ = _shifted_exp(x, axis)
    total = np.sum(e, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = e / total
    return np.where(total == 0, 0.0, weights)


def logsumexp(x, axis: int = -1) -> np.ndarray:
    """log(sum(exp(x))) along `axis`, stable; -inf for rows that are entirely -inf."""
    x = np.asarray(x, dtype=np.float64)
    e, shift = _shifted_exp(x, axis)
    with np.errstate(divide="ignore"):
        return np.squeeze(shift + np.log(np.sum(e, axis=axis, keepdims=True)), axis=axis)
