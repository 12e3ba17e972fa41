"""torch_blockwise: the online-softmax (FlashAttention) algorithm in plain PyTorch ops, one key tile at a time.

The float64 spec is `attnbench.reference.blockwise`; this is the same loop on
tensors. All queries are processed together and the keys are streamed in tiles
of BLOCK_M, so the largest intermediate is one (B, H, N, BLOCK_M) score tile:
memory grows like N, not N^2. State per query row: running max m_i, running sum
l_i = sum exp(s - m_i), accumulator acc = sum exp(s - m_i) V, rescaled by
exp(m_old - m_new) whenever a tile raises the max. Float16/bfloat16 inputs are
computed in float32 (as a fused kernel accumulates) and the output is rounded
once. Grouped-query heads are a reshape of the queries, not a copy of K/V.
Causal (both alignments) and bool/bias masks are sliced per key tile; rows
that see no key give O = 0 and lse = -inf, like the reference.

CPU and CUDA, every dtype, lse, and a backward (a torch.autograd.Function)
that is blockwise too, so it also holds O(N) memory: P is recomputed per key
tile from the saved lse, dS = P * (dP - delta). delta = rowsum(P * dP) is
summed in a first pass over the tiles rather than taken as rowsum(dO * O) (the
FlashAttention-2 shortcut, equal in exact arithmetic): like the plain formula's
autograd, a row that sees a single key then gets dS = 0 exactly, where the
shortcut leaves a rounding residue that measurably exceeded the float32 budget
(dK at D 256, Dv 160, causal).
"""
from __future__ import annotations

import torch

from ._torch_common import TorchBackend
from attnbench.precision import FLOAT32_INTERNAL, for_half

from .base import Capabilities
from .masks import causal_offset, grouped_mask
from .registry import register

BLOCK_M = 128


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions (accumulate like a fused kernel), the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def tile_keep(mask, causal, n: int, cols: slice, offset: int, device):
    """Bool (.., N, bm) of the pairs a tile may attend (None: all), from a bool mask and the causal rule."""
    keep = None
    if causal is not None:
        j = torch.arange(cols.start, cols.stop, device=device)
        keep = j[None, :] <= torch.arange(n, device=device)[:, None] + offset            # (N, bm)
    if mask is not None and mask.dtype == torch.bool:
        tile = mask[..., cols]
        keep = tile if keep is None else keep & tile
    return keep


def key_tiles(n: int, m: int, causal, block_m: int) -> list[slice]:
    """Key tiles (slices of M) that at least one query may see: causal drops the tiles right of the diagonal."""
    last = m - 1 if causal is None else min(m - 1, n - 1 + causal_offset(causal, n, m))
    return [slice(start, min(start + block_m, m)) for start in range(0, last + 1, block_m)]


def tile_scores(qg, k, v, mask, causal, cols: slice, work):
    """Scaled, masked scores (B, Hkv, G, N, bm) of one key tile, and its K (B, Hkv, 1, bm, D), V (.., bm, Dv).

    qg: queries (B, Hkv, G, N, D) already multiplied by the scale, in the work dtype.
    mask: None, bool or float (B|1, Hkv|1, G|1, N|1, M).
    """
    N, M = qg.shape[3], k.shape[2]
    kt = k[:, :, cols].to(work).unsqueeze(2)
    vt = v[:, :, cols].to(work).unsqueeze(2)
    s = qg @ kt.transpose(-1, -2)
    if mask is not None and mask.dtype != torch.bool:
        s = s + mask[..., cols].to(work)
    keep = tile_keep(mask, causal, N, cols, causal_offset(causal, N, M), qg.device)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return s, kt, vt


def grouped(q, k, mask, scale):
    """(scale * q) as (B, Hkv, G, N, D) in the work dtype, and the mask as (B|1, Hkv|1, G|1, N|1, M)."""
    B, H, N, D = q.shape
    qg = q.to(compute_dtype(q.dtype)).reshape(B, k.shape[1], H // k.shape[1], N, D) * scale
    return qg, grouped_mask(mask, k.shape[1], H // k.shape[1])


def blockwise_forward(q, k, v, *, mask, causal, scale, block_m: int = BLOCK_M):
    """O (B, H, N, Dv) in q's dtype and lse (B, H, N) in the work dtype, for q (B, H, N, D), k (B, Hkv, M, D),
    v (B, Hkv, M, Dv); mask None, bool (True = attend) or a float bias, rank 4 broadcastable to (B, H, N, M)."""
    B, H, N, D = q.shape
    M, Dv = k.shape[2], v.shape[3]
    qg, mask = grouped(q, k, mask, scale)
    m_i = torch.full(qg.shape[:-1], float("-inf"), dtype=qg.dtype, device=q.device)    # (B, Hkv, G, N)
    l_i = torch.zeros_like(m_i)
    acc = torch.zeros((*qg.shape[:-1], Dv), dtype=qg.dtype, device=q.device)         # (B, Hkv, G, N, Dv)
    for cols in key_tiles(N, M, causal, block_m):
        s, _, vt = tile_scores(qg, k, v, mask, causal, cols, qg.dtype)
        m_new = torch.maximum(m_i, s.amax(dim=-1))
        shift = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)  # nothing seen yet
        p = torch.exp(s - shift[..., None])
        alpha = torch.exp(m_i - shift)
        l_i = alpha * l_i + p.sum(dim=-1)
        acc = alpha[..., None] * acc + p @ vt
        m_i = m_new
    empty = l_i == 0                                                          # saw no key; NaN rows are not empty
    l_safe = torch.where(empty, torch.ones_like(l_i), l_i)
    out = (acc / l_safe[..., None]).reshape(B, H, N, Dv).to(q.dtype)          # empty rows: acc is 0
    lse = torch.where(empty, torch.full_like(m_i, float("-inf")), m_i + torch.log(l_safe))
    return out, lse.reshape(B, H, N)


def blockwise_backward(q, k, v, mask, lse, d_out, *, causal, scale, block_m: int = BLOCK_M):
    """(dQ, dK, dV) shaped like q, k, v from lse (B, H, N) and dO (B, H, N, Dv), one key tile at a time."""
    B, H, N, D = q.shape
    Hkv, M, Dv = k.shape[1], k.shape[2], v.shape[3]
    qg, mask = grouped(q, k, mask, scale)
    do = d_out.to(qg.dtype).reshape(B, Hkv, H // Hkv, N, Dv)
    lse = lse.to(qg.dtype).reshape(qg.shape[:-1])
    lse = torch.where(lse == float("-inf"), torch.full_like(lse, float("inf")), lse)  # rows that saw no key: P = 0
    tiles = key_tiles(N, M, causal, block_m)

    def recompute(cols):
        s, kt, vt = tile_scores(qg, k, v, mask, causal, cols, qg.dtype)
        return torch.exp(s - lse[..., None]), do @ vt.transpose(-1, -2), kt       # P, dP (B, Hkv, G, N, bm), K

    delta = sum((p * dp).sum(dim=-1) for p, dp, _ in map(recompute, tiles))       # (B, Hkv, G, N)
    dq = torch.zeros_like(qg)
    dk = torch.zeros((B, Hkv, M, D), dtype=qg.dtype, device=q.device)
    dv = torch.zeros((B, Hkv, M, Dv), dtype=qg.dtype, device=q.device)
    for cols in tiles:
        p, dp, kt = recompute(cols)
        ds = p * (dp - delta[..., None])
        dq += ds @ kt
        dk[:, :, cols] = (ds.transpose(-1, -2) @ qg).sum(dim=2)                 # qg carries the scale
        dv[:, :, cols] = (p.transpose(-1, -2) @ do).sum(dim=2)                 # GQA: summed over the group
    return (dq.reshape(B, H, N, D) * scale).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class BlockwiseAttention(torch.autograd.Function):
    """O, lse = BlockwiseAttention.apply(q, k, v, mask, causal, scale); lse and the mask get no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, scale):
        out, lse = blockwise_forward(q, k, v, mask=mask, causal=causal, scale=scale)
        ctx.save_for_backward(q, k, v, mask, lse)
        ctx.causal, ctx.scale = causal, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, _d_lse):
        q, k, v, mask, lse = ctx.saved_tensors
        grads = blockwise_backward(q, k, v, mask, lse, d_out, causal=ctx.causal, scale=ctx.scale)
        return (*grads, None, None, None)


def blockwise_attention(q, k, v, *, mask, causal, scale, return_lse=False):
    """O (B, H, N, Dv) [and lse (B, H, N)] for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, lse = BlockwiseAttention.apply(q, k, v, mask, causal, scale)
    return (out, lse) if return_lse else out


@register
class TorchBlockwise(TorchBackend):
    """torch_blockwise: online-softmax over key tiles in plain PyTorch, memory linear in N (CPU, CUDA; grad; lse)."""

    name = "torch_blockwise"
    devices = ("cpu", "cuda")
    # Half inputs: scores, statistics and both passes in float32, the result rounded once (measured:
    # reports/precision/; every conformance check holds it to the claim).
    caps = Capabilities(grad=True, lse=True, precision=for_half(FLOAT32_INTERNAL))

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return blockwise_attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse)
