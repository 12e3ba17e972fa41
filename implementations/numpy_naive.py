"""numpy: the textbook formula in NumPy, computed in the input dtype.

S = (scale * Q) K^T + bias, P = softmax(S) with the row max subtracted, O = P V;
Q is scaled before the product so that a float16 Q K^T larger than 65504 whose
scaled value fits does not overflow, and the product scale * Q is formed in
float32 for float16 and rounded once (as torch and FlashAttention apply the
scale): rounding the scale itself to float16 (1/sqrt(32) -> 0.17676, 1.1e-4 off)
would skew every score of a row the same way, a systematic error that the
2x-naive rule rightly failed (README, "Known deviations"); NaN and inf inputs propagate as in the reference;
every intermediate is held in the input dtype (float16, float32 or float64;
NumPy has no bfloat16). Grouped-query heads are handled by reshaping queries
into (B, Hkv, G, N, D) groups, with no copy of K or V. CPU only, no autograd.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from attnbench.problem import Inputs, Problem, apply_layout
from attnbench.reference import normalize_causal
from attnbench.reference.masks import causal_mask

from ._validate import check_attention_args
from .base import Backend, Capabilities
from .masks import as_4d, grouped_mask
from .registry import register


def _modified(s, mods, N: int, M: int, Hkv: int):
    """Grouped scores s (B, Hkv, G, N, M) after the softcap and ALiBi of `mods` (reference modifications, bound),
    in their order and in s's dtype, and the bool keep of the window and prefix-LM (N, M) and documents
    (B, 1, 1, N, M) (None without any)."""
    dtype = s.dtype
    distance = np.arange(N)[:, None] + (M - N) - np.arange(M)[None, :]       # i + M - N - j (bottom-right)
    keep = None
    for m in mods:
        if m.key == "softcap":
            s = dtype.type(m.cap) * np.tanh(s / dtype.type(m.cap))
        elif m.key == "alibi":
            # slope x distance in float32 (float64 for float64), rounded once to s's dtype: as the naive formula
            # and FlashAttention's float32 slopes (rounding the slope to float16 first cost 3x the naive error)
            work = np.promote_types(dtype, np.float32)
            slopes = np.asarray(m.slopes, dtype=work)
            slopes = (slopes if slopes.ndim == 2 else slopes[None]).reshape(-1, Hkv, slopes.shape[-1] // Hkv, 1, 1)
            s = s - (slopes * np.abs(distance).astype(work)).astype(dtype)
        elif m.key == "window":
            band = np.ones((N, M), dtype=bool)
            band &= (distance <= m.left) if m.left >= 0 else band
            band &= (distance >= -m.right) if m.right >= 0 else band
            keep = band if keep is None else keep & band
        elif m.key == "document":                        # (B, 1, 1, N, M): the query's key position's document
            ids = np.asarray(m.ids)
            same = ids[:, np.clip(np.arange(N) + M - N, 0, M - 1)][:, :, None] == ids[:, None, :]
            keep = same[:, None, None] if keep is None else keep & same[:, None, None]
        elif m.key == "prefix_lm":                       # (N, M): in the prefix, or at or before the query
            prefix = (np.arange(M)[None, :] < m.length) | (distance >= 0)
            keep = prefix if keep is None else keep & prefix
    return s, keep


def numpy_attention(q, k, v, *, mask, causal, scale, mods=()):
    """O (B, H, N, Dv) in q's dtype for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv); mask bool or bias;
    mods: the problem's modifications, bound (window, softcap, ALiBi, sinks: a sink is one more softmax column)."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    dtype = q.dtype
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    qg = q.reshape(B, Hkv, H // Hkv, N, D)                                   # (B, Hkv, G, N, D)
    # Scale q before the product: Q K^T itself can exceed float16's 65504 when Q K^T * scale does not. The
    # product is formed in at least float32 and rounded once: a scale rounded to float16 is a systematic error.
    wide = np.promote_types(dtype, np.float32)
    scaled_q = (qg.astype(wide) * wide.type(scale)).astype(dtype)
    s = scaled_q @ np.swapaxes(k, -1, -2)[:, :, None]                        # (B, Hkv, G, N, M)
    s, window = _modified(s, mods, N, M, Hkv)
    allowed = np.ones((N, M), dtype=bool) if causal is None else causal_mask(N, M, causal)
    allowed = allowed if window is None else allowed & window
    mask = grouped_mask(mask, Hkv, H // Hkv)                                  # (B|1, Hkv|1, G|1, N|1, M)
    if mask is not None and mask.dtype == np.bool_:
        allowed = allowed & mask
    elif mask is not None:
        s = s + mask.astype(dtype)
    s = np.where(allowed, s, dtype.type(-np.inf))
    sinks = next((np.asarray(m.logits, dtype=dtype) for m in mods if m.key == "sinks"), None)
    if sinks is not None:                                   # one more column, of value 0: only the denominator
        column = np.broadcast_to(sinks.reshape(1, Hkv, H // Hkv, 1, 1), (*s.shape[:-1], 1))
        s = np.concatenate([s, column], axis=-1)
    row_max = s.max(axis=-1, keepdims=True)
    e = np.exp(s - np.where(row_max == -np.inf, dtype.type(0), row_max))
    total = e.sum(axis=-1, keepdims=True)
    # Only an empty row (total == 0) becomes zeros; a NaN total must propagate NaN, as the reference does.
    p = np.where(total == 0, dtype.type(0), e / np.where(total == 0, dtype.type(1), total))
    p = p[..., :M]
    return (p @ v[:, :, None]).reshape(B, H, N, -1)


@register
class NumpyBackend(Backend):
    """numpy: the textbook formula in NumPy in the input dtype (no bfloat16, no autograd)."""

    name = "numpy"
    devices = ("cpu",)
    # float16 up to 16,385 keys: NumPy has no float16 BLAS (a 16 x 65,537 float16 product took 14 s here).
    caps = Capabilities(dtypes=("float16", "float32", "float64"), max_seq_by_dtype=(("float16", 16385),),
                        mods=("window", "softcap", "alibi", "sinks", "document", "prefix_lm"))

    def prepare(self, inputs: Inputs, problem: Problem, *, device: str = "cpu",
                return_lse: bool = False) -> Callable[[], Any]:
        dtype = np.dtype(problem.dtype)
        q, k, v = (apply_layout(x.astype(dtype), problem.layout, contiguous=np.ascontiguousarray,
                                zeros=lambda *shape: np.zeros(shape, dtype)) for x in (inputs.q, inputs.k, inputs.v))
        mask = as_4d(inputs.mask)
        causal, scale, mods = problem.causal, problem.scale, inputs.mods
        return lambda: numpy_attention(q, k, v, mask=mask, causal=causal, scale=scale, mods=mods)

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, *, mask=None, causal=None, scale=None):
        """The public entry for arrays: validate first, then `numpy_attention`. Shapes as there."""
        check_attention_args(q, k, v, mask, causal=causal, scale=scale, dtypes=self.caps.dtypes, who=self.name)
        return numpy_attention(q, k, v, mask=None if mask is None else as_4d(np.asarray(mask)),
                               causal=normalize_causal(causal), scale=scale)

    def to_numpy(self, value) -> np.ndarray:
        return np.asarray(value, dtype=np.float64)
