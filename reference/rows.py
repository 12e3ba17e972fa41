"""Row-sampled reference: exact float64 attention of chosen rows, at any N and M, never an (N, M) matrix.

One output row needs only its own query against every key, so the verdict on
R chosen rows costs O(R · M · D) time, not O(N · M · D). Keys are visited in
blocks of `block_m` with the online softmax of `blockwise` (float64), so memory
is one (B, H, R, block_m) tile.

    sdpa_rows(q, k, v, rows, ...)                     -> O (B, H, R, Dv), lse (B, H, R)
    sdpa_backward_rows(q, k, v, dO, query_rows, key_rows, ...)
                                                      -> dQ (B, H, Rq, D), dK (B, Hkv, Rk, D), dV (B, Hkv, Rk, Dv)
    bias_rows(mask, causal, rows, cols, N, M)         -> the float64 bias (B|1, H|1, R, C) of those rows and keys

The backward of a key row sums over every query, and each query's P needs its
own lse and delta = rowsum(dO * O): those are computed for all N queries,
blockwise (query blocks x key blocks), O(N · M · (D + Dv)) time and O(N + tile)
memory; then dK, dV of the chosen keys cost one more O(N · Rk · (D + Dv)) pass.

Masks are anything broadcastable to (B, H, N, M) (bool, True = attend, or a
float bias); causal alignments as in `masks`; GQA, Dv != D and a custom scale
as in `sdpa`.
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError
from .masks import causal_offset
from .sdpa import prepare_qkv

BLOCK_M = 4096
BLOCK_N = 512


def _index(x: np.ndarray, axis: int, idx: np.ndarray) -> np.ndarray:
    """Rows/cols `idx` of `x` along `axis`, or `x` unchanged where that axis is broadcast (size 1)."""
    return x if x.shape[axis] == 1 else np.take(x, idx, axis=axis)


def bias_rows(mask, causal, rows, cols, N: int, M: int):
    """Additive float64 bias (B|1, H|1, R, C) of query rows `rows` (R,) and keys `cols` (C,), or 0.0.

    mask: None, bool (True = attend) or a float bias, broadcastable to (B, H, N, M).
    causal: None, "top_left" or "bottom_right".
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    bias: np.ndarray | float = 0.0
    if mask is not None:
        m = np.asarray(mask)
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)                         # (B|1, H|1, N|1, M|1)
        m = _index(_index(m, 2, rows), 3, cols)
        bias = np.where(m, 0.0, -np.inf) if m.dtype == np.bool_ else m.astype(np.float64)
    if causal is not None:
        keep = cols[None, :] <= rows[:, None] + causal_offset(causal, N, M)   # (R, C)
        bias = bias + np.where(keep, 0.0, -np.inf)
    return bias


def _grouped(bias, Hkv: int, G: int):
    """A bias (b, h, R, C) with h in {1, H} as (b, Hkv|1, G|1, R, C), matching grouped queries."""
    if np.ndim(bias) == 0:
        return bias
    bias = np.asarray(bias)
    if bias.ndim < 4:
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    b, h = bias.shape[:2]
    return bias.reshape(b, Hkv, G, *bias.shape[2:]) if h != 1 else bias[:, :, None]


def _check_rows(name: str, rows, length: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0 or rows.min() < 0 or rows.max() >= length:
        raise AttentionInputError(f"{name}: expected indices in 0..{length - 1}, got {rows.tolist()[:8]}...")
    return rows


def _scores(qg, k, mask, causal, qi, kj, N, M, scale):
    """Scaled, biased scores (B, Hkv, G, len(qi), len(kj)) of grouped queries qg (B, Hkv, G, len(qi), D)."""
    Hkv, G = qg.shape[1], qg.shape[2]
    s = scale * (qg @ k[:, :, None, kj].swapaxes(-1, -2))
    return s + _grouped(bias_rows(mask, causal, qi, kj, N, M), Hkv, G)


def _online(qg, k, v, mask, causal, qi, N, M, scale, block_m):
    """(O (B, Hkv, G, R, Dv), lse (B, Hkv, G, R)) of grouped query rows qi against every key, blockwise."""
    m_i = np.full(qg.shape[:-1], -np.inf)
    l_i = np.zeros(qg.shape[:-1])
    acc = np.zeros((*qg.shape[:-1], v.shape[-1]))
    for start in range(0, M, block_m):
        kj = np.arange(start, min(start + block_m, M))
        s = _scores(qg, k, mask, causal, qi, kj, N, M, scale)
        m_new = np.maximum(m_i, s.max(axis=-1))
        shift = np.where(m_new == -np.inf, 0.0, m_new)                       # nothing seen yet: nothing to rescale
        p = np.exp(s - shift[..., None])
        alpha = np.exp(m_i - shift)
        l_i = alpha * l_i + p.sum(axis=-1)
        acc = alpha[..., None] * acc + p @ v[:, :, None, kj]
        m_i = m_new
    seen = l_i != 0                                                           # NaN rows are not empty: keep NaN
    out = np.where(seen[..., None], acc / np.where(seen, l_i, 1.0)[..., None], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(seen, m_i + np.log(np.where(seen, l_i, 1.0)), -np.inf)
    return out, lse


def _grouped_rows(q, Hkv: int, rows):
    B, H, _, D = q.shape
    return q[:, :, rows].reshape(B, Hkv, H // Hkv, len(rows), D)


def sdpa_rows(q, k, v, rows, *, mask=None, causal=None, scale=None, block_m: int = BLOCK_M):
    """(O (B, H, R, Dv), lse (B, H, R)) of query rows `rows` (R,) for q (B, H, N, D), k (B, Hkv, M, D),
    v (B, Hkv, M, Dv): equal to `sdpa(...)[:, :, rows]`, without forming (N, M)."""
    q, k, v, mask, causal, scale, (B, H, Hkv, N, M, D, Dv) = prepare_qkv(q, k, v, mask, causal, scale)
    rows = _check_rows("rows", rows, N)
    out, lse = _online(_grouped_rows(q, Hkv, rows), k, v, mask, causal, rows, N, M, scale, block_m)
    return out.reshape(B, H, len(rows), Dv), lse.reshape(B, H, len(rows))


def _all_lse_and_delta(qg, k, v, gg, mask, causal, N, M, scale, block_n, block_m):
    """lse and delta = rowsum(dO * O), both (B, Hkv, G, N), for every query, blockwise."""
    lse = np.empty(qg.shape[:-1])
    delta = np.empty(qg.shape[:-1])
    for start in range(0, N, block_n):
        qi = np.arange(start, min(start + block_n, N))
        out, lse[..., qi] = _online(qg[..., qi, :], k, v, mask, causal, qi, N, M, scale, block_m)
        delta[..., qi] = np.sum(gg[..., qi, :] * out, axis=-1)
    return lse, delta


def _probabilities(s, lse):
    """P = exp(S - lse); 0 for rows that see no key (lse = -inf)."""
    return np.exp(s - np.where(np.isneginf(lse), np.inf, lse)[..., None])


def sdpa_backward_rows(q, k, v, grad_out, query_rows, key_rows, *, mask=None, causal=None, scale=None,
                       block_n: int = BLOCK_N, block_m: int = BLOCK_M):
    """(dQ (B, H, Rq, D) at `query_rows`, dK (B, Hkv, Rk, D) and dV (B, Hkv, Rk, Dv) at `key_rows`) of
    sum(O * grad_out), grad_out (B, H, N, Dv): the rows of `sdpa_backward`, without forming (N, M)."""
    q, k, v, mask, causal, scale, (B, H, Hkv, N, M, D, Dv) = prepare_qkv(q, k, v, mask, causal, scale)
    g = np.asarray(grad_out, dtype=np.float64)
    if g.shape != (B, H, N, Dv):
        raise AttentionInputError(f"grad_out: expected shape {(B, H, N, Dv)}, got {g.shape}")
    qr, kr = _check_rows("query_rows", query_rows, N), _check_rows("key_rows", key_rows, M)
    G = H // Hkv
    qg, gg = q.reshape(B, Hkv, G, N, D), g.reshape(B, Hkv, G, N, Dv)
    lse, delta = _all_lse_and_delta(qg, k, v, gg, mask, causal, N, M, scale, block_n, block_m)

    dq = np.zeros((B, Hkv, G, len(qr), D))                                    # dQ_i = scale sum_j dS_ij K_j
    for start in range(0, M, block_m):
        kj = np.arange(start, min(start + block_m, M))
        p = _probabilities(_scores(qg[..., qr, :], k, mask, causal, qr, kj, N, M, scale), lse[..., qr])
        dp = gg[..., qr, :] @ v[:, :, None, kj].swapaxes(-1, -2)
        dq += (p * (dp - delta[..., qr, None])) @ k[:, :, None, kj]

    dk = np.zeros((B, Hkv, len(kr), D))                                       # dK_j = scale sum_i dS_ij Q_i
    dv = np.zeros((B, Hkv, len(kr), Dv))                                      # dV_j = sum_i P_ij dO_i
    for start in range(0, N, block_n):
        qi = np.arange(start, min(start + block_n, N))
        p = _probabilities(_scores(qg[..., qi, :], k, mask, causal, qi, kr, N, M, scale), lse[..., qi])
        dp = gg[..., qi, :] @ v[:, :, None, kr].swapaxes(-1, -2)
        ds = p * (dp - delta[..., qi, None])                                  # (B, Hkv, G, n, Rk)
        dk += (ds.swapaxes(-1, -2) @ qg[..., qi, :]).sum(axis=2)              # GQA: summed over the group
        dv += (p.swapaxes(-1, -2) @ gg[..., qi, :]).sum(axis=2)
    return scale * dq.reshape(B, H, len(qr), D), scale * dk, dv
