"""Blockwise attention: the same function as `sdpa`, one (query tile, key tile) at a time.

The notes name this as the way past the N^2 pattern. Per query tile it keeps
the online-softmax state and never holds more than a (block_n, block_m) tile:

    m_i   running max of the scores seen so far        (..., bn)
    l_i   running sum of exp(s - m_i)                  (..., bn)
    acc   running sum of exp(s - m_i) @ V              (..., bn, Dv)

When a new tile raises the max from m_old to m_new, everything accumulated so
far is rescaled by exp(m_old - m_new); at the end O = acc / l_i and
lse = m_i + log(l_i). Rows that saw no unmasked key keep m_i = -inf and give
O = 0, lse = -inf, exactly like `sdpa`.
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError
from .sdpa import group_queries, prepare, ungroup


def _tile_bias(bias, rows: slice, cols: slice):
    """The (.., bn, bm) slice of a bias broadcastable to (B, Hkv, G, N, M); scalars pass through."""
    return bias if np.ndim(bias) == 0 else bias[..., rows, cols]


def _attend_query_tile(qg, k, v, bias, scale, rows: slice, block_m: int):
    """Online softmax over key tiles for one query tile; returns (O, lse) for those rows."""
    q_tile = qg[..., rows, :]                                               # (B, Hkv, G, bn, D)
    M = k.shape[2]
    m_i = np.full(q_tile.shape[:-1], -np.inf)                               # (B, Hkv, G, bn)
    l_i = np.zeros(q_tile.shape[:-1])
    acc = np.zeros((*q_tile.shape[:-1], v.shape[-1]))                       # (B, Hkv, G, bn, Dv)
    for start in range(0, M, block_m):
        cols = slice(start, min(start + block_m, M))
        s = scale * np.einsum("bkgnd,bkmd->bkgnm", q_tile, k[:, :, cols]) + _tile_bias(bias, rows, cols)
        m_new = np.maximum(m_i, s.max(axis=-1))
        shift = np.where(m_new == -np.inf, 0.0, m_new)                      # all masked so far: nothing to rescale
        p = np.exp(s - shift[..., None])
        alpha = np.exp(m_i - shift)
        l_i = alpha * l_i + p.sum(axis=-1)
        acc = alpha[..., None] * acc + np.einsum("bkgnm,bkme->bkgne", p, v[:, :, cols])
        m_i = m_new
    seen = l_i > 0
    out = np.where(seen[..., None], acc / np.where(seen, l_i, 1.0)[..., None], 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(seen, m_i + np.log(np.where(seen, l_i, 1.0)), -np.inf)
    return out, lse


def blockwise_sdpa(q, k, v, *, mask=None, causal=None, scale=None, block_n: int = 64, block_m: int = 64,
                   return_lse: bool = False):
    """`sdpa` computed tile by tile: q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) -> O (B, H, N, Dv).

    block_n, block_m: query and key tile sizes (any positive ints; need not divide N or M).
    With return_lse, also returns lse (B, H, N).
    """
    if block_n < 1 or block_m < 1:
        raise AttentionInputError(f"block_n, block_m: must be >= 1, got {block_n}, {block_m}")
    q, k, v, bias, scale, (B, H, Hkv, N, M, D, Dv) = prepare(q, k, v, mask, causal, scale)
    qg = group_queries(q, Hkv)
    outs, lses = [], []
    for start in range(0, N, block_n):
        o, lse = _attend_query_tile(qg, k, v, bias, scale, slice(start, min(start + block_n, N)), block_m)
        outs.append(o)
        lses.append(lse)
    out = ungroup(np.concatenate(outs, axis=-2))
    return (out, ungroup(np.concatenate(lses, axis=-1))) if return_lse else out
