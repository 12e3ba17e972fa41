"""Row-sampled reference: exact float64 attention of chosen rows, at any N and M, never an (N, M) matrix.

One output row needs only its own query against every key, so the verdict on
R chosen rows costs O(R · M · D) time, not O(N · M · D). Keys are visited in
blocks of `block_m` with the online softmax (float64), so memory is one
(B, H, R, block_m) tile. Scores come from the one block function
(`block.scores`), the softmax state from `block.initial_state` (a sink starts
it): every reference path agrees on every input.

    sdpa_rows(q, k, v, rows, ...)                     -> O (B, H, R, Dv), lse (B, H, R)
    sdpa_backward_rows(q, k, v, dO, query_rows, key_rows, ...)
                                                      -> dQ (B, H, Rq, D), dK (B, Hkv, Rk, D), dV (B, Hkv, Rk, Dv)

The backward of a key row sums over every query, and each query's P needs its
own lse and delta = rowsum(dO * O): those are computed for all N queries,
blockwise (query blocks x key blocks), O(N · M · (D + Dv)) time and O(N + tile)
memory; then dK, dV of the chosen keys cost one more O(N · Rk · (D + Dv)) pass.

Masks are anything broadcastable to (B, H, N, M) (bool, True = attend, or a
float bias; `mods.mask`, a modification here); causal alignments as in `mods.causal` (likewise); GQA, Dv != D,
a custom scale and modifications (`mods`) as in `sdpa`.
"""
from __future__ import annotations

import numpy as np

from . import block
from ._checks import AttentionInputError
from .sdpa import prepare_qkv

BLOCK_M = 4096
BLOCK_N = 512


def _check_rows(name: str, rows, length: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0 or rows.min() < 0 or rows.max() >= length:
        raise AttentionInputError(f"{name}: expected indices in 0..{length - 1}, got {rows.tolist()[:8]}...")
    return rows


def online(qg, k, v, qi, *, mods, N: int, M: int, scale: float, block_m: int = BLOCK_M):
    """(O (B, Hkv, G, R, Dv), lse (B, Hkv, G, R)) of grouped query rows qi against every key, blockwise:
    the online softmax, written once (`blockwise_sdpa` runs it per query tile)."""
    Hkv, G = qg.shape[1], qg.shape[2]
    m_i, l_i = block.initial_state(mods, qi, qg.shape[:-1], N, M, Hkv * G, Hkv)
    acc = np.zeros((*qg.shape[:-1], v.shape[-1]))
    for start in range(0, M, block_m):
        kj = np.arange(start, min(start + block_m, M))
        s = block.scores(qg, k, qi, kj, mods=mods, N=N, M=M, scale=scale)
        m_new = np.maximum(m_i, s.max(axis=-1))
        shift = np.where(m_new == -np.inf, 0.0, m_new)                       # nothing seen yet: nothing to rescale
        p = np.exp(s - shift[..., None])
        alpha = np.exp(m_i - shift)
        l_i = alpha * l_i + p.sum(axis=-1)
        acc = alpha[..., None] * acc + block.group_matmul(p, v[:, :, kj])
        m_i = m_new
    seen = l_i != 0                                                           # NaN rows are not empty: keep NaN
    out = np.where(seen[..., None], acc / np.where(seen, l_i, 1.0)[..., None], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(seen, m_i + np.log(np.where(seen, l_i, 1.0)), -np.inf)
    return out, lse


def _grouped_rows(q, Hkv: int, rows):
    B, H, _, D = q.shape
    return q[:, :, rows].reshape(B, Hkv, H // Hkv, len(rows), D)


def sdpa_rows(q, k, v, rows, *, mask=None, causal=None, scale=None, mods=(), block_m: int = BLOCK_M):
    """(O (B, H, R, Dv), lse (B, H, R)) of query rows `rows` (R,) for q (B, H, N, D), k (B, Hkv, M, D),
    v (B, Hkv, M, Dv): equal to `sdpa(...)[:, :, rows]`, without forming (N, M)."""
    q, k, v, mods, scale, (B, H, Hkv, N, M, D, Dv) = prepare_qkv(q, k, v, mask, causal, scale, mods)
    rows = _check_rows("rows", rows, N)
    out, lse = online(_grouped_rows(q, Hkv, rows), k, v, rows, mods=mods, N=N, M=M, scale=scale, block_m=block_m)
    return out.reshape(B, H, len(rows), Dv), lse.reshape(B, H, len(rows))


def _all_lse_and_delta(qg, k, v, gg, kwargs, N, block_n, block_m):
    """lse and delta = rowsum(dO * O), both (B, Hkv, G, N), for every query, blockwise."""
    lse = np.empty(qg.shape[:-1])
    delta = np.empty(qg.shape[:-1])
    for start in range(0, N, block_n):
        qi = np.arange(start, min(start + block_n, N))
        out, lse[..., qi] = online(qg[..., qi, :], k, v, qi, block_m=block_m, **kwargs)
        delta[..., qi] = np.sum(gg[..., qi, :] * out, axis=-1)
    return lse, delta


def _probabilities(s, lse):
    """P = exp(S - lse); 0 for rows that see no key (lse = -inf)."""
    return np.exp(s - np.where(np.isneginf(lse), np.inf, lse)[..., None])


def _score_grads(qg, k, gg, v, qi, kj, lse, delta, kwargs):
    """P and dS of rows qi against keys kj (B, Hkv, G, len(qi), len(kj)), dS through the modifications."""
    s, factor = block.scores(qg, k, qi, kj, with_grad=True, **kwargs)
    p = _probabilities(s, lse)
    ds = p * (gg @ v[:, :, None, kj].swapaxes(-1, -2) - delta[..., None])
    return p, ds if factor is None else ds * np.where(p > 0, factor, 0.0)


def sdpa_backward_rows(q, k, v, grad_out, query_rows, key_rows, *, mask=None, causal=None, scale=None, mods=(),
                       block_n: int = BLOCK_N, block_m: int = BLOCK_M):
    """(dQ (B, H, Rq, D) at `query_rows`, dK (B, Hkv, Rk, D) and dV (B, Hkv, Rk, Dv) at `key_rows`) of
    sum(O * grad_out), grad_out (B, H, N, Dv): the rows of `sdpa_backward`, without forming (N, M)."""
    q, k, v, mods, scale, (B, H, Hkv, N, M, D, Dv) = prepare_qkv(q, k, v, mask, causal, scale, mods)
    g = np.asarray(grad_out, dtype=np.float64)
    if g.shape != (B, H, N, Dv):
        raise AttentionInputError(f"grad_out: expected shape {(B, H, N, Dv)}, got {g.shape}")
    qr, kr = _check_rows("query_rows", query_rows, N), _check_rows("key_rows", key_rows, M)
    G = H // Hkv
    qg, gg = q.reshape(B, Hkv, G, N, D), g.reshape(B, Hkv, G, N, Dv)
    kwargs = dict(mods=mods, N=N, M=M, scale=scale)
    lse, delta = _all_lse_and_delta(qg, k, v, gg, kwargs, N, block_n, block_m)

    dq = np.zeros((B, Hkv, G, len(qr), D))                                    # dQ_i = scale sum_j dS_ij K_j
    for start in range(0, M, block_m):
        kj = np.arange(start, min(start + block_m, M))
        _, ds = _score_grads(qg[..., qr, :], k, gg[..., qr, :], v, qr, kj, lse[..., qr], delta[..., qr], kwargs)
        dq += ds @ k[:, :, None, kj]

    dk = np.zeros((B, Hkv, len(kr), D))                                       # dK_j = scale sum_i dS_ij Q_i
    dv = np.zeros((B, Hkv, len(kr), Dv))                                      # dV_j = sum_i P_ij dO_i
    for start in range(0, N, block_n):
        qi = np.arange(start, min(start + block_n, N))
        p, ds = _score_grads(qg[..., qi, :], k, gg[..., qi, :], v, qi, kr, lse[..., qi], delta[..., qi], kwargs)
        dk += (ds.swapaxes(-1, -2) @ qg[..., qi, :]).sum(axis=2)              # GQA: summed over the group
        dv += (p.swapaxes(-1, -2) @ gg[..., qi, :]).sum(axis=2)
    return scale * dq.reshape(B, H, len(qr), D), scale * dk, dv
