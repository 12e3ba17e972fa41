"""Input validation shared by every public entry point.

Errors name the argument, the expected form and what was given, and are raised
before any work is done. `AttentionInputError` subclasses `ValueError` so
callers that already catch `ValueError` keep working.
"""
from __future__ import annotations

import numpy as np

from attnbench.errors import AttentionInputError  # noqa: F401 - defined without NumPy for the CLI, re-exported

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")


def as_float64(name: str, x, *, rank: int | None = None) -> np.ndarray:
    """Return `x` as a float64 array, checking it is real, non-empty and of `rank`."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise AttentionInputError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if rank is not None and arr.ndim != rank:
        raise AttentionInputError(f"{name}: expected rank {rank}, got shape {arr.shape} (rank {arr.ndim})")
    if arr.size == 0:
        raise AttentionInputError(f"{name}: empty array of shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def normalize_causal(causal) -> str | None:
    """Map `causal` (None, False, True, "top_left", "bottom_right") to None or an alignment."""
    if causal is None or causal is False:
        return None
    if causal is True:
        return "top_left"
    if causal in CAUSAL_ALIGNMENTS:
        return causal
    raise AttentionInputError(f"causal: expected None, True, False or one of {CAUSAL_ALIGNMENTS}, got {causal!r}")


def check_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[int, int, int, int, int, int, int]:
    """Check q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv); return (B, H, Hkv, N, M, D, Dv)."""
    B, H, N, D = q.shape
    Bk, Hkv, M, Dk = k.shape
    Bv, Hv, Mv, Dv = v.shape
    if (Bk, Bv) != (B, B):
        raise AttentionInputError(f"batch: q, k, v must share B; got q {q.shape}, k {k.shape}, v {v.shape}")
    if Dk != D:
        raise AttentionInputError(f"head dim: q and k must share D; got q {q.shape} (D={D}), k {k.shape} (D={Dk})")
    if (Hv, Mv) != (Hkv, M):
        raise AttentionInputError(f"k, v: must share (Hkv, M); got k {k.shape}, v {v.shape}")
    if H % Hkv:
        raise AttentionInputError(f"heads: H={H} (q {q.shape}) must be a multiple of Hkv={Hkv} (k {k.shape})")
    return B, H, Hkv, N, M, D, Dv


def check_mask(mask, shape: tuple[int, int, int, int]) -> np.ndarray | None:
    """Check `mask` is bool or float and broadcastable to `shape` (B, H, N, M)."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.dtype != np.bool_ and arr.dtype.kind != "f":
        raise AttentionInputError(f"mask: expected bool (True = attend) or a float bias, got dtype {arr.dtype}")
    try:
        np.broadcast_shapes(arr.shape, shape)
    except ValueError:
        raise AttentionInputError(f"mask: shape {arr.shape} does not broadcast to (B, H, N, M) = {shape}") from None
    if arr.ndim > 4 or np.broadcast_shapes(arr.shape, shape) != shape:
        raise AttentionInputError(f"mask: shape {arr.shape} does not broadcast to (B, H, N, M) = {shape}")
    return arr if arr.dtype == np.bool_ else arr.astype(np.float64, copy=False)
