"""Budget condition 1 and the declared-precision bound on chosen rows, blockwise over keys.

`condition_one` gives the rows of `budget.forward_bound` / `budget.lse_bound`, `precision.model_bounds` the
bound a backend's declared `Precision` implies; both from one pass over the keys (`row_stats`).

The bound of a query row depends on that row alone (its scores, P, O), so it is computed for chosen rows
against every key in blocks, with BLAS matmuls and O(rows · block) memory, from the row-sampled reference's
O and lse (P = exp(S - lse)). Same formula as `budget.forward_bound` (see there for the derivation);
`tests/test_check_rows.py` holds the two equal on small problems, so they cannot drift apart.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims, R rows.
"""
from __future__ import annotations

import numpy as np

from attnbench.budget import FLUSH_THRESHOLD, LAMBDA, UNIT_ROUNDOFF
from attnbench.precision import HALF_SUBNORMAL, Precision, RowStats, model_bounds
from attnbench.reference import block, mods as modifications
from attnbench.reference.rows import BLOCK_M


def row_stats(q, k, v, lse, rows, *, mask, causal, scale: float, mods=(), block_m: int = BLOCK_M,
              tiny: float = 0.0) -> RowStats:
    """The per-row sums both bounds are built from (`precision.RowStats`, grouped (B, Hkv, G, R[, Dv])).

    q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) float64; lse (B, H, R): the reference at `rows`
    (P = exp(S - lse)); mask broadcastable to (B, H, N, M) or None; causal None or an alignment; mods: bound
    modifications; tiny: the weight below which a kernel's exp flushes to 0 (`budget.FLUSH_THRESHOLD`). Scores
    and their magnitude T come from the reference's block function.

    A modification that adds roundings to each score (softcap: `extra_roundings`, each within u |s| <= u T)
    raises the score error from LAMBDA u (sqrt(D) + 2) T to at most LAMBDA u (sqrt(D) + 2 + extra) T: T is
    scaled by (sqrt(D) + 2 + extra) / (sqrt(D) + 2), so every bound built on it carries the extra terms.
    """
    B, H, N, D = q.shape
    Hkv, M, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    R = len(rows)
    qg = q[:, :, rows].reshape(B, Hkv, G, R, D)
    lse_g = lse.reshape(B, Hkv, G, R)
    shift = np.where(np.isneginf(lse_g), np.inf, lse_g)[..., None]            # rows with no key: P = 0
    per_row, per_elem = (B, Hkv, G, R), (B, Hkv, G, R, Dv)
    t_seen, t_finite, p_sum, p2, visible = (np.zeros(per_row) for _ in range(5))
    mass, p2_v2, p2_vs, vis_v2, vis_v, flushed = (np.zeros(per_elem) for _ in range(6))
    kwargs = dict(mask=mask, causal=causal, mods=mods, N=N, M=M, scale=scale)
    widen = (np.sqrt(D) + 2 + modifications.extra_roundings(mods)) / (np.sqrt(D) + 2)
    for start in range(0, M, block_m):
        kj = np.arange(start, min(start + block_m, M))
        vt = v[:, :, None, kj]
        p = np.exp(block.scores(qg, k, rows, kj, **kwargs) - shift)
        t, finite = block.magnitude(qg, k, rows, kj, **kwargs)
        t = widen * t
        t_seen = np.maximum(t_seen, np.max(np.where(p > 0, t, 0.0), axis=-1))
        t_finite = np.maximum(t_finite, np.max(np.where(finite, t, 0.0), axis=-1))
        abs_v, vis = np.abs(vt), finite.astype(np.float64)
        mass += p @ abs_v
        flushed += np.minimum(p, tiny) @ abs_v
        p_sum += p.sum(axis=-1)
        p2 += (p * p).sum(axis=-1)
        p2_v2 += (p * p) @ (abs_v * abs_v)
        p2_vs += (p * p) @ vt
        vis_v2 += vis @ (abs_v * abs_v)
        vis_v += vis @ abs_v
        visible += vis.sum(axis=-1)
    return RowStats(t_seen, t_finite, mass, p_sum, p2_v2, p2_vs, p2, vis_v2, vis_v, visible, flushed)


def condition_one(stats: RowStats, out, lse, *, dtype: str, D: int, M: int):
    """Budget condition 1 (bound on |O - O_ref| (B, Hkv, G, R, Dv), on |lse - lse_ref| (B, Hkv, G, R)) from
    `row_stats`; out, lse: the reference at the rows, grouped alike."""
    u = UNIT_ROUNDOFF[dtype]
    out_g = np.abs(out)
    score_err = LAMBDA * u * (np.sqrt(D) + 2) * stats.t_seen
    spread = stats.mass + stats.p_sum[..., None] * out_g
    # The output's own rounding: u |O|, and half the subnormal spacing where O is that small (float16 below
    # 6.1e-5: a row whose every weight a sink dwarfs); a row that sees no key must still be exactly 0.
    subnormal = np.where(stats.p_sum[..., None] > 0, HALF_SUBNORMAL[dtype], 0.0)
    bound = (score_err[..., None] * spread + LAMBDA * u * (np.sqrt(M) + 2) * stats.mass + u * out_g + stats.flushed
             + subnormal)
    finite_lse = np.isfinite(lse)
    lse_err = np.where(finite_lse, LAMBDA * u * (np.sqrt(D) + 2) * stats.t_finite + LAMBDA * u * (np.sqrt(M) + 2)
                       + u * np.abs(np.where(finite_lse, lse, 0.0)), 0.0)
    return bound, lse_err


def row_bounds(q, k, v, out, lse, rows, *, mask, causal, scale: float, dtype: str, block_m: int = BLOCK_M,
               precision: Precision | None = None, lse_dtype: str = "float32", mods=()):
    """(bound on |O - O_ref| (B, H, R, Dv), bound on |lse - lse_ref| (B, H, R)) at query `rows` (R,): condition
    1, or with `precision` the declared-precision bounds (`attnbench.precision.model_bounds`).

    out (B, H, R, Dv), lse (B, H, R): the reference at those rows; other arguments as in `row_stats`.
    """
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G, R = H // Hkv, len(rows)
    stats = row_stats(q, k, v, lse, rows, mask=mask, causal=causal, scale=scale, mods=mods, block_m=block_m,
                      tiny=FLUSH_THRESHOLD[dtype])
    out_g, lse_g = out.reshape(B, Hkv, G, R, -1), lse.reshape(B, Hkv, G, R)
    if precision is None:
        bound, lse_err = condition_one(stats, out_g, lse_g, dtype=dtype, D=D, M=M)
    else:
        bound, lse_err = model_bounds(stats, out_g, lse_g, precision=precision, dtype=dtype, D=D, M=M,
                                      lse_dtype=lse_dtype)
    return bound.reshape(B, H, R, -1), lse_err.reshape(B, H, R)
