"""The one block function: scores of query rows against key columns, with the modifications.

Every float64 path (`sdpa`, `sdpa_backward`, `sdpa_rows`, `sdpa_backward_rows`, `blockwise_sdpa`) and the
error budget's row statistics compute scores here, and every softmax state starts from `initial_state`, so
they agree on every input, NaN and -inf included:

    S = mods(scale Q K^T)                 -inf where a masking modification (causal, window, a bool mask, ...)
                                          hides the key

Score modifications (softcap, ALiBi) apply in the problem's order to the scaled scores, an input float bias
last (`mods.mask.InputMask`, appended by `mods.with_mask`), then every masking modification hides its keys
(causal is one: `mods.causal`, joined by `mods.with_causal`; a bool mask another; see `mods.base`). Sinks join
the softmax's denominator through `initial_state`, not the scores.

Shape letters: B batch, H query heads, Hkv key/value heads, G = H / Hkv, N, M, D, Dv, R rows, C columns.
"""
from __future__ import annotations

import numpy as np

from . import mods as modifications


def group_matmul(a, b):
    """a (B, Hkv, G, R, X) @ b (B|1, Hkv|1, X, Y) -> (B, Hkv, G, R, Y): the G query heads that share a KV head as
    one matrix of G R rows, one BLAS product per KV head instead of G skinny ones (decode: R of a few rows). Each
    element is the same dot product; a ≤ 4-D `a` (no group axis) is a plain matmul."""
    with np.errstate(invalid="ignore"):          # NaN/Inf inputs propagate by design (the adversarial cases)
        if a.ndim < 5:
            return a @ b
        B, Hkv, G, R, X = a.shape
        return (a.reshape(B, Hkv, G * R, X) @ b).reshape(B, Hkv, G, R, b.shape[-1])


def key_block(k, cols: np.ndarray):
    """k[:, :, cols]: a view where cols are consecutive (every pass over the keys visits them in blocks: no copy of
    a (B, Hkv, C, D) block), else a gather."""
    if len(cols) and cols[-1] - cols[0] + 1 == len(cols) and np.all(np.diff(cols) == 1):
        return k[:, :, int(cols[0]):int(cols[-1]) + 1]
    return k[:, :, cols]


def block_of(rows, cols, N: int, M: int, H: int, Hkv: int) -> modifications.Block:
    return modifications.Block(np.asarray(rows), np.asarray(cols), N, M, H, Hkv)


def scores(qg, k, rows, cols, *, mods, N: int, M: int, scale: float, with_grad: bool = False):
    """Final scores (B, Hkv, G, R, C) of grouped query rows qg (B, Hkv, G, R, D) against keys `cols` of
    k (B, Hkv, M, D); with_grad also returns d S / d (scale Q K^T) (None: 1, no nonlinear modification).
    mods: bound modifications, causal and the input mask among them (`mods.with_causal`, `mods.with_mask`)."""
    Hkv, G = qg.shape[1], qg.shape[2]
    rows, cols = np.asarray(rows), np.asarray(cols)
    raw = scale * group_matmul(qg, key_block(k, cols).swapaxes(-1, -2))
    block = block_of(rows, cols, N, M, Hkv * G, Hkv)
    s, factor = modifications.apply(raw, mods, block, with_grad=True)
    return (s, factor) if with_grad else s


def magnitude(qg, k, rows, cols, *, mods, N: int, M: int, scale: float):
    """(T (B, Hkv, G, R, C), visible): T = |scale| sum_d |q_d k_d| + |bias| after the modifications (ALiBi's,
    an input bias's finite entries), 0 where a key is hidden: the magnitude every score's rounding error is
    relative to (`attnbench.budget`)."""
    Hkv, G = qg.shape[1], qg.shape[2]
    block = block_of(rows, cols, N, M, Hkv * G, Hkv)
    t = abs(scale) * group_matmul(np.abs(qg), np.abs(key_block(k, cols)).swapaxes(-1, -2))
    t = modifications.magnitude(t, mods, block)
    keep = modifications.visible(mods, block)
    if keep is None:                                          # every key visible: T as it is, no pass over it
        return t, np.broadcast_to(np.True_, t.shape)
    return np.where(keep, t, 0.0), np.broadcast_to(keep, t.shape)


def visibility(shape: tuple, rows, cols, *, mods, N: int, M: int):
    """The `visible` of `magnitude` alone (no product): True where no masking modification hides the key,
    a broadcast view of shape (B, Hkv, G, R, C)."""
    keep = modifications.visible(mods, block_of(rows, cols, N, M, shape[1] * shape[2], shape[1]))
    return np.broadcast_to(np.True_ if keep is None else keep, shape)


def initial_state(mods, rows, shape, N: int, M: int, H: int, Hkv: int):
    """(m, l) the online softmax of rows (shape (B, Hkv, G, R)) starts from: (-inf, 0), or with a sink logit
    (sink, 1): the sink is one more term exp(sink - m) of the denominator, with value 0."""
    sink = modifications.sink_logits(mods, block_of(rows, np.arange(0), N, M, H, Hkv))
    if sink is None:
        return np.full(shape, -np.inf), np.zeros(shape)
    return np.broadcast_to(sink, shape).copy(), np.ones(shape)
