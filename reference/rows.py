"""Row-sampled reference: exact float64 attention of chosen rows, at any N and M, never an (N, M) matrix.

One output row needs only its own query against every key, so the verdict on
R chosen rows costs O(R · M · D) time, not O(N · M · D). Keys are visited in
blocks of `block_m` with the online softmax (float64), so memory is one
(B, H, R, block_m) tile. Scores come from the one block function
(`block.scores`), the softmax state from `block.initial_state` (a sink starts
it): every reference path agrees on every input.

    sdpa_rows(q, k, v, rows, ...)                     -> O (B, H, R, Dv), lse (B, H, R)
    sdpa_rows_with_scores(q, k, v, rows, ...)         -> O, lse, the score blocks [(kj, S (B, Hkv, G, R, C))]
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
from . import mods as modifications
from ._checks import AttentionInputError, as_float64, check_mask, check_qkv
from .sdpa import prepare_qkv

BLOCK_M = 4096
BLOCK_N = 512
# Score blocks `sdpa_rows_with_scores` keeps for the row statistics of the same rows, up to this many float64
# elements in all (256 MiB: N 16 against M 131,073 with H 8 needs 11.5 M); above it they are computed again.
KEEP_SCORES_ELEMENTS = 1 << 25


class Float64Reads:
    """K or V (B, Hkv, M, D) held in float16 or float32 (a problem past 2^31 elements a tensor:
    `attnbench.problem.make_inputs`) read as float64 one block at a time: indexing returns what it selects,
    converted exactly, so no float64 copy of the whole tensor (16 GiB at 2^31) is ever made."""

    def __init__(self, x: np.ndarray):
        self.held, self.shape, self.ndim = x, x.shape, x.ndim

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.held[index], dtype=np.float64)


def float64_reads(name: str, x):
    """`x` as float64 (`as_float64`), or, held in float16/float32, as `Float64Reads` of it."""
    if isinstance(x, Float64Reads):
        return x
    arr = np.asarray(x)
    if arr.dtype in (np.float16, np.float32) and arr.ndim == 4 and arr.size:
        return Float64Reads(arr)
    return as_float64(name, arr, rank=4)


def prepare_rows(q, k, v, rows, mask, causal, scale, mods=()):
    """`prepare_qkv` for query rows `rows` (R,): (q's rows grouped (B, Hkv, G, R, D) float64, k, v
    (`float64_reads`: float64 a block at a time where held in float16/float32), mods (causal and the mask among
    them, as `prepare_qkv` puts them), scale, rows, dims)."""
    q, k, v = float64_reads("q", q), float64_reads("k", k), float64_reads("v", v)
    B, H, Hkv, N, M, D, Dv = check_qkv(q, k, v)
    rows = _check_rows("rows", rows, N)
    mask = check_mask(mask, (B, H, N, M))
    scale = 1.0 / np.sqrt(D) if scale is None else float(scale)
    if not np.isfinite(scale):
        raise AttentionInputError(f"scale: expected a finite number or None, got {scale!r}")
    mods = modifications.check(modifications.with_mask(modifications.with_causal(causal, mods), mask))
    qg = q[:, :, rows].reshape(B, Hkv, H // Hkv, len(rows), D)
    return qg, k, v, mods, scale, rows, (B, H, Hkv, N, M, D, Dv)


def _check_rows(name: str, rows, length: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0 or rows.min() < 0 or rows.max() >= length:
        raise AttentionInputError(f"{name}: expected indices in 0..{length - 1}, got {rows.tolist()[:8]}...")
    return rows


def score_blocks(qg, k, qi, *, mods, N: int, M: int, scale: float, block_m: int = BLOCK_M):
    """Yield (keys kj (C,), scores S (B, Hkv, G, R, C)) of grouped query rows qi against each block of block_m
    keys in turn: the one block function, in the order every pass over the keys visits them."""
    for start in range(0, M, block_m):
        kj = np.arange(start, min(start + block_m, M))
        yield kj, block.scores(qg, k, qi, kj, mods=mods, N=N, M=M, scale=scale)


def key_slice(kj: np.ndarray) -> slice:
    """The keys kj of a `score_blocks` block (consecutive) as a slice: a view of K or V, not a copy."""
    return slice(int(kj[0]), int(kj[-1]) + 1)


def online(qg, k, v, qi, *, mods, N: int, M: int, scale: float, block_m: int = BLOCK_M, blocks=None):
    """(O (B, Hkv, G, R, Dv), lse (B, Hkv, G, R)) of grouped query rows qi against every key, blockwise:
    the online softmax, written once (`blockwise_sdpa` runs it per query tile). blocks: the `score_blocks` of
    these rows, already computed (None: computed here)."""
    Hkv, G = qg.shape[1], qg.shape[2]
    m_i, l_i = block.initial_state(mods, qi, qg.shape[:-1], N, M, Hkv * G, Hkv)
    acc = np.zeros((*qg.shape[:-1], v.shape[-1]))
    if blocks is None:
        blocks = score_blocks(qg, k, qi, mods=mods, N=N, M=M, scale=scale, block_m=block_m)
    for kj, s in blocks:
        m_new = np.maximum(m_i, s.max(axis=-1))
        shift = np.where(m_new == -np.inf, 0.0, m_new)                       # nothing seen yet: nothing to rescale
        p = np.exp(s - shift[..., None])
        alpha = np.exp(m_i - shift)
        l_i = alpha * l_i + p.sum(axis=-1)
        acc = alpha[..., None] * acc + block.group_matmul(p, v[:, :, key_slice(kj)])
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
    out, lse, _ = sdpa_rows_with_scores(q, k, v, rows, mask=mask, causal=causal, scale=scale, mods=mods,
                                        block_m=block_m, keep_elements=0)
    return out, lse


def sdpa_rows_with_scores(q, k, v, rows, *, mask=None, causal=None, scale=None, mods=(), block_m: int = BLOCK_M,
                          keep_elements: int = KEEP_SCORES_ELEMENTS):
    """(O, lse, blocks) as `sdpa_rows`, blocks the `score_blocks` list [(kj, S (B, Hkv, G, R, C))] of the rows
    when the scores hold at most keep_elements elements (else None): the row statistics of the same rows
    (`attnbench.row_bound.row_stats`) read them instead of computing every score a second time."""
    qg, k, v, mods, scale, rows, (B, H, Hkv, N, M, D, Dv) = prepare_rows(q, k, v, rows, mask, causal, scale, mods)
    kwargs = dict(mods=mods, N=N, M=M, scale=scale)
    blocks = (list(score_blocks(qg, k, rows, block_m=block_m, **kwargs)) if B * H * len(rows) * M <= keep_elements
              else None)
    out, lse = online(qg, k, v, rows, block_m=block_m, blocks=blocks, **kwargs)
    return out.reshape(B, H, len(rows), Dv), lse.reshape(B, H, len(rows)), blocks


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
