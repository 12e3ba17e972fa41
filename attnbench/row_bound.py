"""Budget condition 1 on chosen rows, blockwise over keys: `budget.forward_bound` / `budget.lse_bound` rows.

The bound of a query row depends on that row alone (its scores, P, O), so it is computed for chosen rows
against every key in blocks, with BLAS matmuls and O(rows · block) memory, from the row-sampled reference's
O and lse (P = exp(S - lse)). Same formula as `budget.forward_bound` (see there for the derivation);
`tests/test_check_rows.py` holds the two equal on small problems, so they cannot drift apart.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims, R rows.
"""
from __future__ import annotations

import numpy as np

from attnbench.budget import LAMBDA, UNIT_ROUNDOFF
from attnbench.reference.rows import BLOCK_M, _grouped, bias_rows


def row_bounds(q, k, v, out, lse, rows, *, mask, causal, scale: float, dtype: str, block_m: int = BLOCK_M):
    """(bound on |O - O_ref| (B, H, R, Dv), bound on |lse - lse_ref| (B, H, R)) at query `rows` (R,).

    q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) float64; out (B, H, R, Dv), lse (B, H, R): the
    reference at those rows; mask broadcastable to (B, H, N, M) or None; causal None or an alignment.
    """
    u = UNIT_ROUNDOFF[dtype]
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G = H // Hkv
    R = len(rows)
    qg = q[:, :, rows].reshape(B, Hkv, G, R, D)
    lse_g = lse.reshape(B, Hkv, G, R)
    shift = np.where(np.isneginf(lse_g), np.inf, lse_g)[..., None]            # rows with no key: P = 0
    t_seen = np.zeros((B, Hkv, G, R))                                           # max t over keys with P > 0
    t_finite = np.zeros((B, Hkv, G, R))                                         # max t over unmasked keys
    mass = np.zeros((B, Hkv, G, R, v.shape[-1]))
    p_sum = np.zeros((B, Hkv, G, R))
    for start in range(0, M, block_m):
        kj = np.arange(start, min(start + block_m, M))
        bias = np.broadcast_to(_grouped(bias_rows(mask, causal, rows, kj, N, M), Hkv, G), (B, Hkv, G, R, len(kj)))
        kt, vt = k[:, :, None, kj], v[:, :, None, kj]
        p = np.exp(scale * (qg @ kt.swapaxes(-1, -2)) + bias - shift)
        finite = np.isfinite(bias)
        t = abs(scale) * (np.abs(qg) @ np.abs(kt).swapaxes(-1, -2)) + np.where(finite, np.abs(bias), 0.0)
        t_seen = np.maximum(t_seen, np.max(np.where(p > 0, t, 0.0), axis=-1))
        t_finite = np.maximum(t_finite, np.max(np.where(finite, t, 0.0), axis=-1))
        mass += p @ np.abs(vt)
        p_sum += p.sum(axis=-1)
    out_g = np.abs(out.reshape(B, Hkv, G, R, -1))
    score_err = LAMBDA * u * (np.sqrt(D) + 2) * t_seen
    spread = mass + p_sum[..., None] * out_g
    bound = score_err[..., None] * spread + LAMBDA * u * (np.sqrt(M) + 2) * mass + u * out_g
    finite_lse = np.isfinite(lse_g)
    lse_err = np.where(finite_lse, LAMBDA * u * (np.sqrt(D) + 2) * t_finite + LAMBDA * u * (np.sqrt(M) + 2)
                       + u * np.abs(np.where(finite_lse, lse_g, 0.0)), 0.0)
    return bound.reshape(B, H, R, -1), lse_err.reshape(B, H, R)
