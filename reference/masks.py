"""Causal masks as arrays, for callers that want the whole (N, M) grid: a query may not look at keys after it.

The rule and its two alignments live in one place, the `Causal` modification (`mods/causal.py`, conventions cited
there); these are its views as a bool grid, an additive bias and the offset backends share:

    top_left      j <= i            torch's `is_causal=True` (torch.tril)
    bottom_right  j <= i + (M - N)  FlashAttention's causal: the N queries are the last N of M positions

For N == M both are the ordinary lower-triangular mask.
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError, normalize_causal
from .mods.base import Block
from .mods.causal import Causal, offset


def causal_offset(alignment, n: int, m: int) -> int:
    """Key j is visible from query i when j <= i + offset: 0 for top_left (and no causal), M - N for bottom_right.

    The one definition every backend and the reference share (`attnbench.implementations.masks` re-exports it).
    """
    return offset(normalize_causal(alignment), n, m)


def causal_mask(n: int, m: int, alignment: str = "top_left") -> np.ndarray:
    """Bool (N, M): True where query i may attend key j under `alignment`."""
    if n < 1 or m < 1:
        raise AttentionInputError(f"causal_mask: n and m must be >= 1, got n={n}, m={m}")
    return Causal.parse(alignment).keep(Block(np.arange(n), np.arange(m), n, m, 1, 1))


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
