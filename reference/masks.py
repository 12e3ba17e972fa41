"""Causal masks: a query may not look at keys that come after it.

`causal_mask(n, m, alignment)` is a bool (N, M) grid, True where query i may attend key j.

    top_left      j <= i            the diagonal starts at the top-left corner;
                                    torch's `is_causal=True`. With N > M the last
                                    queries see every key; with N < M the last keys
                                    are never seen.
    bottom_right  j <= i + (M - N)  the diagonal ends at the bottom-right corner:
                                    the N queries are the *last* N positions of a
                                    length-M sequence (decoding with a KV cache).
                                    With N > M the first N - M queries see no key.

For N == M both are the ordinary lower-triangular mask.
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError, normalize_causal


def causal_offset(alignment, n: int, m: int) -> int:
    """Key j is visible from query i when j <= i + offset: 0 for top_left, M - N for bottom_right.

    The one definition every backend and the reference share (`attnbench.implementations.masks` re-exports it).
    """
    return m - n if normalize_causal(alignment) == "bottom_right" else 0


def causal_mask(n: int, m: int, alignment: str = "top_left") -> np.ndarray:
    """Bool (N, M): True where query i may attend key j under `alignment`."""
    if n < 1 or m < 1:
        raise AttentionInputError(f"causal_mask: n and m must be >= 1, got n={n}, m={m}")
    return np.arange(m)[None, :] <= np.arange(n)[:, None] + causal_offset(alignment, n, m)


def mask_to_bias(mask, causal, n: int, m: int) -> np.ndarray | float:
    """Fold a bool/float `mask` and a `causal` alignment into one additive bias (0 or -inf for bools)."""
    bias: np.ndarray | float = 0.0
    if mask is not None:
        mask = np.asarray(mask)
        bias = np.where(mask, 0.0, -np.inf) if mask.dtype == np.bool_ else mask.astype(np.float64)
    alignment = normalize_causal(causal)
    if alignment is not None:
        bias = bias + np.where(causal_mask(n, m, alignment), 0.0, -np.inf)
    return bias
