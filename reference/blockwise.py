"""Blockwise attention: the same function as `sdpa`, one (query tile, key tile) at a time.

The notes name this as the way past the N^2 pattern. Per query tile it keeps
the online-softmax state and never holds more than a (block_n, block_m) tile:

    m_i   running max of the scores seen so far        (..., bn)
    l_i   running sum of exp(s - m_i)                  (..., bn)
    acc   running sum of exp(s - m_i) @ V              (..., bn, Dv)

When a new tile raises the max from m_old to m_new, everything accumulated so
far is rescaled by exp(m_old - m_new); at the end O = acc / l_i and
lse = m_i + log(l_i). Rows that saw no unmasked key keep m_i = -inf and give
O = 0, lse = -inf, exactly like `sdpa`; a row holding NaN stays NaN.

The online-softmax loop is written once, in `rows.online` (the row-sampled
reference runs the same loop over chosen rows); this runs it per query tile.
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError
from .rows import _grouped_rows, online
from .sdpa import prepare_qkv


def blockwise_sdpa(q, k, v, *, mask=None, causal=None, scale=None, mods=(), block_n: int = 64, block_m: int = 64,
                   return_lse: bool = False):
    """`sdpa` computed tile by tile: q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) -> O (B, H, N, Dv).

    block_n, block_m: query and key tile sizes (any positive ints; need not divide N or M).
    With return_lse, also returns lse (B, H, N).
    """
    if block_n < 1 or block_m < 1:
        raise AttentionInputError(f"block_n, block_m: must be >= 1, got {block_n}, {block_m}")
    q, k, v, mods, scale, (B, H, Hkv, N, M, D, Dv) = prepare_qkv(q, k, v, mask, causal, scale, mods)
    outs, lses = [], []
    for start in range(0, N, block_n):
        rows = np.arange(start, min(start + block_n, N))
        o, lse = online(_grouped_rows(q, Hkv, rows), k, v, rows, mods=mods, N=N, M=M, scale=scale, block_m=block_m)
        outs.append(o.reshape(B, H, len(rows), Dv))
        lses.append(lse.reshape(B, H, len(rows)))
    out = np.concatenate(outs, axis=2)
    return (out, np.concatenate(lses, axis=2)) if return_lse else out
