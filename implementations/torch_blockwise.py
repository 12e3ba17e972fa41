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

Modifications (`torch_mods`: window, softcap, ALiBi, sinks, documents, prefix-LM) apply per tile in
the work dtype. With a sliding window (or a prefix-LM) the queries are processed in tiles of
BLOCK_N too, and each query tile visits only the key tiles its window reaches
(tile skipping, as FlashAttention's local kernel does): time grows like
N · (window + tile), not N · M. A sink starts each row's state at (m, l) =
(sink, 1), one more term of the denominator with value 0; where the sink
logits require grad, the backward returns theirs, -sum P_sink delta per head.

Split-KV (flash-decoding, `split_kv`): for few queries against many keys the keys are cut into chunks of whole
tiles, each chunk's online softmax gives a partial O and lse, and `split_kv.combine` rescales them by
exp(lse_s - lse); the sink joins the combine once. `auto_splits` chooses the count by FlashAttention-2's
heuristic on CUDA (1 where the work already fills the device's workers; 1 on the CPU); `num_splits` on the
backend forces it. Here
the chunks run one after another: it is the split path's arithmetic, for checking, not a speed-up.

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

from dataclasses import replace

import torch

from ._torch_common import TorchBackend
from attnbench.precision import FLOAT32_INTERNAL, for_half

from . import split_kv, torch_mods
from .base import Capabilities
from .masks import causal_offset, grouped_mask
from .registry import register

BLOCK_M = 128
BLOCK_N = 256          # query tile under a sliding window (one tile of all N otherwise)
NO_MODS = torch_mods.TorchMods()


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


def key_tiles(n: int, m: int, causal, block_m: int, rows: slice | None = None, mods=NO_MODS) -> list[slice]:
    """Key tiles (slices of M) that at least one query of `rows` (default all) may see: causal drops the tiles
    right of the diagonal, a window those outside it. Tiles are aligned to multiples of block_m."""
    rows = rows or slice(0, n)
    first, last = torch_mods.key_range(mods, rows.start, rows.stop - 1, n, m)
    if causal is not None:
        last = min(last, rows.stop - 1 + causal_offset(causal, n, m))
    return [slice(start, min(start + block_m, m)) for start in range(first // block_m * block_m, last + 1, block_m)]


def query_tiles(n: int, mods) -> list[slice]:
    """Query tiles: BLOCK_N rows each under a window or a prefix-LM (so key tiles can be skipped per query tile),
    else one."""
    step = BLOCK_N if mods.window is not None or mods.prefix_lm is not None else n
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def tile_scores(qg, k, v, mask, causal, rows: slice, cols: slice, work, n: int, mods=NO_MODS):
    """Scaled, modified, masked scores (B, Hkv, G, R, bm) of query tile `rows` against one key tile, its
    K (B, Hkv, 1, bm, D), V (.., bm, Dv), and d S / d (scaled scores) where a softcap makes it not 1 (else None).

    qg: the tile's queries (B, Hkv, G, R, D) already multiplied by the scale, in the work dtype; n: all N.
    mask: None, bool or float (B|1, Hkv|1, G|1, N|1, M).
    """
    M = k.shape[2]
    kt = k[:, :, cols].to(work).unsqueeze(2)
    vt = v[:, :, cols].to(work).unsqueeze(2)
    s = qg @ kt.transpose(-1, -2)
    factor = None
    if not mods.empty:
        s, factor = torch_mods.scores(s, mods, torch.arange(rows.start, rows.stop, device=qg.device),
                                      torch.arange(cols.start, cols.stop, device=qg.device), n, M, with_grad=True)
    mask = None if mask is None else (mask if mask.shape[-2] == 1 else mask[..., rows, :])
    if mask is not None and mask.dtype != torch.bool:
        s = s + mask[..., cols].to(work)
    keep = tile_keep(mask, causal, rows.stop - rows.start, cols, causal_offset(causal, n, M) + rows.start,
                     qg.device)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return s, kt, vt, factor


def grouped(q, k, mask, scale):
    """(scale * q) as (B, Hkv, G, N, D) in the work dtype, and the mask as (B|1, Hkv|1, G|1, N|1, M)."""
    B, H, N, D = q.shape
    qg = q.to(compute_dtype(q.dtype)).reshape(B, k.shape[1], H // k.shape[1], N, D) * scale
    return qg, grouped_mask(mask, k.shape[1], H // k.shape[1])


def initial_state(qg, mods, dv: int):
    """(m, l, acc) a tile of grouped queries qg (B, Hkv, G, R, D) starts from: (-inf, 0, 0), or (sink, 1, 0)."""
    m_i = torch.full(qg.shape[:-1], float("-inf"), dtype=qg.dtype, device=qg.device)    # (B, Hkv, G, R)
    l_i = torch.zeros_like(m_i)
    sink = torch_mods.sink_logits(mods, qg.shape[1], qg.dtype)
    if sink is not None:
        m_i, l_i = sink.expand_as(m_i).clone(), torch.ones_like(l_i)
    return m_i, l_i, torch.zeros((*qg.shape[:-1], dv), dtype=qg.dtype, device=qg.device)


def online_softmax(qg, k, v, mask, causal, rows: slice, tiles: list[slice], n: int, mods, state):
    """The running (m, l, acc) of query tile `rows` (qg: its grouped queries (B, Hkv, G, R, D)) after the key
    `tiles`, starting from `state` (`initial_state`). mask: grouped, as `grouped` returns it; n: all N."""
    m_i, l_i, acc = state
    M = k.shape[2]
    for cols in tiles:
        s, _, vt, _ = tile_scores(qg, k, v, mask, causal, rows, cols, qg.dtype, n,
                                  torch_mods.for_tile(mods, rows, cols, n, M))
        m_new = torch.maximum(m_i, s.amax(dim=-1))
        shift = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)      # nothing seen yet
        p = torch.exp(s - shift[..., None])
        alpha = torch.exp(m_i - shift)
        l_i = alpha * l_i + p.sum(dim=-1)
        acc = alpha[..., None] * acc + p @ vt
        m_i = m_new
    return m_i, l_i, acc


def normalise(m_i, l_i, acc):
    """(O (.., R, Dv), lse (.., R)) from a finished state; rows that saw no key give O = 0, lse = -inf."""
    empty = l_i == 0                                                          # saw no key; NaN rows are not empty
    l_safe = torch.where(empty, torch.ones_like(l_i), l_i)
    return acc / l_safe[..., None], torch.where(empty, torch.full_like(m_i, float("-inf")), m_i + torch.log(l_safe))


def blockwise_forward(q, k, v, *, mask, causal, scale, block_m: int = BLOCK_M, mods=NO_MODS, splits: int = 1):
    """O (B, H, N, Dv) in q's dtype and lse (B, H, N) in the work dtype, for q (B, H, N, D), k (B, Hkv, M, D),
    v (B, Hkv, M, Dv); mask None, bool (True = attend) or a float bias, rank 4 broadcastable to (B, H, N, M).
    splits > 1: the split-KV path (`split_tile`)."""
    B, H, N, D = q.shape
    M, Dv = k.shape[2], v.shape[3]
    qg_all, mask = grouped(q, k, mask, scale)
    outs, lses = [], []
    for rows in query_tiles(N, mods):
        qg = qg_all[..., rows, :]
        tiles = key_tiles(N, M, causal, block_m, rows, mods)
        if splits > 1:
            o, lse = split_tile(qg, k, v, mask, causal, rows, tiles, N, mods, splits, block_m)
        else:
            o, lse = normalise(*online_softmax(qg, k, v, mask, causal, rows, tiles, N, mods,
                                               initial_state(qg, mods, Dv)))
        outs.append(o)
        lses.append(lse)
    out = torch.cat(outs, dim=3).reshape(B, H, N, Dv).to(q.dtype)
    return out, torch.cat(lses, dim=3).reshape(B, H, N)


def split_tile(qg, k, v, mask, causal, rows: slice, tiles: list[slice], n: int, mods, splits: int, block_m: int):
    """(O, lse) of query tile `rows` by split-KV (`split_kv`): the keys cut into `splits` chunks of whole tiles,
    each chunk's visible `tiles` run from an empty state (no sink: it joins the combine once), then combined. A
    chunk the window or the causal diagonal hides entirely is an empty partial (lse -inf), as a kernel's idle
    split writes it. The chunks run one after another here: the arithmetic of the split path, not its speed."""
    M, Dv = k.shape[2], v.shape[3]
    no_sink = replace(mods, sinks=None)
    parts = [normalise(*online_softmax(qg, k, v, mask, causal, rows,
                                       [t for t in tiles if chunk.start <= t.start < chunk.stop], n, no_sink,
                                       initial_state(qg, no_sink, Dv)))
             for chunk in split_kv.key_chunks(M, block_m, splits)]
    sink = torch_mods.sink_logits(mods, qg.shape[1], qg.dtype)
    return split_kv.combine(torch.stack([o for o, _ in parts]), torch.stack([lse for _, lse in parts]), sink)


def auto_splits(q, k, block_m: int = BLOCK_M) -> int:
    """Splits for q (B, H, N, D) against k (B, Hkv, M, D) by FlashAttention's rule (`split_kv.
    num_splits_heuristic`): work items B * H * ceil(N / 64) (its query tile), key blocks of block_m, the device's
    workers. Only on CUDA: here the chunks run one after another, so on a CPU a split is all cost and no
    parallelism (forced splits still check the path there)."""
    if q.device.type != "cuda":
        return 1
    B, H, N, _ = q.shape
    return split_kv.num_splits_heuristic(B * H * -(-N // 64), split_kv.device_workers(q.device),
                                         -(-k.shape[2] // block_m))


def blockwise_backward(q, k, v, mask, lse, d_out, *, causal, scale, block_m: int = BLOCK_M, mods=NO_MODS,
                       sink_grad: bool = False):
    """(dQ, dK, dV) shaped like q, k, v from lse (B, H, N) and dO (B, H, N, Dv), one key tile at a time (and one
    query tile at a time under a window). The softcap's derivative 1 - tanh^2 scales dS per tile.

    sink_grad: also d sink (H,) float32, -sum_{b,n} P_sink delta with P_sink = exp(sink - lse) and delta the
    row's sum P dP the key tiles already form (= rowsum(dO O) exactly; `reference.sdpa_backward`)."""
    B, H, N, D = q.shape
    Hkv, M, Dv = k.shape[1], k.shape[2], v.shape[3]
    qg_all, mask = grouped(q, k, mask, scale)
    do_all = d_out.to(qg_all.dtype).reshape(B, Hkv, H // Hkv, N, Dv)
    lse_all = lse.to(qg_all.dtype).reshape(qg_all.shape[:-1])
    lse_all = torch.where(lse_all == float("-inf"), torch.full_like(lse_all, float("inf")), lse_all)  # P = 0
    dq = torch.zeros_like(qg_all)
    dk = torch.zeros((B, Hkv, M, D), dtype=qg_all.dtype, device=q.device)
    dv = torch.zeros((B, Hkv, M, Dv), dtype=qg_all.dtype, device=q.device)
    sink = torch_mods.sink_logits(mods, Hkv, qg_all.dtype) if sink_grad else None      # (1, Hkv, G, 1)
    dsink = torch.zeros(qg_all.shape[1:3], dtype=qg_all.dtype, device=q.device)        # (Hkv, G)
    for rows in query_tiles(N, mods):
        qg, do, lse_t = qg_all[..., rows, :], do_all[..., rows, :], lse_all[..., rows]
        tiles = key_tiles(N, M, causal, block_m, rows, mods)

        def recompute(cols):
            s, kt, vt, factor = tile_scores(qg, k, v, mask, causal, rows, cols, qg.dtype, N,
                                            torch_mods.for_tile(mods, rows, cols, N, M))
            # P, dP (B, Hkv, G, R, bm), K, and the softcap's derivative (None without one)
            return torch.exp(s - lse_t[..., None]), do @ vt.transpose(-1, -2), kt, factor

        delta = sum((p * dp).sum(dim=-1) for p, dp, _, _ in map(recompute, tiles))   # (B, Hkv, G, R)
        if sink is not None:
            dsink -= (torch.exp(sink.detach() - lse_t) * delta).sum(dim=(0, 3))
        for cols in tiles:
            p, dp, kt, factor = recompute(cols)
            ds = p * (dp - delta[..., None])
            if factor is not None:                     # through the softcap: d(cap tanh(x / cap))/dx = 1 - tanh^2
                ds = ds * factor
            dq[..., rows, :] += ds @ kt
            dk[:, :, cols] += (ds.transpose(-1, -2) @ qg).sum(dim=2)               # qg carries the scale
            dv[:, :, cols] += (p.transpose(-1, -2) @ do).sum(dim=2)               # GQA: summed over the group
    grads = (dq.reshape(B, H, N, D) * scale).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    return (*grads, dsink.reshape(H).to(torch.float32)) if sink_grad else grads


class BlockwiseAttention(torch.autograd.Function):
    """O, lse = BlockwiseAttention.apply(q, k, v, mask, causal, scale, mods, sinks); lse and the mask get no
    gradient; sinks (H,), the sink logits `mods` carries, get theirs when they require it."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, scale, mods=NO_MODS, splits=1, sinks=None):
        out, lse = blockwise_forward(q, k, v, mask=mask, causal=causal, scale=scale, mods=mods, splits=splits)
        ctx.save_for_backward(q, k, v, mask, lse)
        ctx.causal, ctx.scale, ctx.mods = causal, scale, mods
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, _d_lse):
        q, k, v, mask, lse = ctx.saved_tensors
        sink_grad = ctx.needs_input_grad[8]
        grads = blockwise_backward(q, k, v, mask, lse, d_out, causal=ctx.causal, scale=ctx.scale, mods=ctx.mods,
                                   sink_grad=sink_grad)
        return (*grads[:3], None, None, None, None, None, grads[3] if sink_grad else None)


def blockwise_attention(q, k, v, *, mask, causal, scale, return_lse=False, mods=NO_MODS, splits=None):
    """O (B, H, N, Dv) [and lse (B, H, N)] for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv).

    splits: key chunks of the split-KV forward (1: unsplit); None chooses by `auto_splits`. The backward is the
    unsplit one from the combined lse, whichever path the forward took."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    splits = auto_splits(q, k) if splits is None else splits
    out, lse = BlockwiseAttention.apply(q, k, v, mask, causal, scale, mods, splits, mods.sinks)
    return (out, lse) if return_lse else out


@register
class TorchBlockwise(TorchBackend):
    """torch_blockwise: online-softmax over key tiles in plain PyTorch, memory linear in N (CPU, CUDA; grad; lse)."""

    name = "torch_blockwise"
    devices = ("cpu", "cuda")
    # Half inputs: scores, statistics and both passes in float32, the result rounded once (measured:
    # reports/precision/; every conformance check holds it to the claim).
    # KV layouts natively: each sequence's keys gathered through its offsets or block table (`kv_torch`).
    caps = Capabilities(grad=True, lse=True, precision=for_half(FLOAT32_INTERNAL), mods=torch_mods.SUPPORTED,
                        kv_layouts=("dense", "ragged", "paged"), kv_append=True, sink_grad=True)
    num_splits: int | None = None      # split-KV chunks to force (1: never split); None: `auto_splits` decides

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False, mods=NO_MODS):
        return blockwise_attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse,
                                   mods=mods, splits=self.num_splits)
