"""Mutants: the correct blockwise twin with exactly one realistic bug each.

Every class overrides one step of `BlockwiseTwin`; its docstring's first line
names the bug. A conformance suite that passes any of these is too weak
(`tests/test_mutation_score.py` checks that each one is killed).

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys,
D query/key dim, Dv value dim.
"""
from __future__ import annotations

import math

import torch

from .twin import KEY_TILE, NEG_INF, QUERY_TILE, BlockwiseTwin, TiledBackwardTwin


class MeanV(BlockwiseTwin):
    """mean_v: uniform weights, O = mean of V over the keys, ignoring Q, K and every mask."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        B, H, N, _ = q.shape
        mean = v[:, self.kv_heads(H, k.shape[1], q.device)].mean(dim=-2, keepdim=True)  # (B, H, 1, Dv)
        return mean.expand(B, H, N, v.shape[-1]), torch.zeros(B, H, N, dtype=q.dtype, device=q.device)


class ScaleMissing(BlockwiseTwin):
    """scale_missing: forgets 1/sqrt(D), softmax(Q K^T)."""

    def effective_scale(self, D, scale):
        return 1.0


class ScaleTwice(BlockwiseTwin):
    """scale_twice: applies the scale twice (once in Q, once in the scores)."""

    def effective_scale(self, D, scale):
        return super().effective_scale(D, scale) ** 2


class ScaleAfterSoftmax(BlockwiseTwin):
    """scale_after_softmax: softmax of the unscaled scores, the scale multiplied into the output instead."""

    def scores(self, q, k_tile, bias_tile, scale, cols=None):
        return super().scores(q, k_tile, bias_tile, 1.0, cols)

    def finish(self, m, l, acc, scale):
        out, lse = super().finish(m, l, acc, scale)
        return out * scale, lse


class CausalOffByOne(BlockwiseTwin):
    """causal_off_by_one: j < i instead of j <= i (each query loses its own key)."""

    def causal_keep(self, n, m, alignment, device):
        offset = 0 if alignment == "top_left" else m - n
        return torch.arange(m, device=device)[None, :] < torch.arange(n, device=device)[:, None] + offset


class CausalAlwaysTopLeft(BlockwiseTwin):
    """causal_always_top_left: top-left alignment where bottom-right was asked (differs only when N != M)."""

    def causal_keep(self, n, m, alignment, device):
        return super().causal_keep(n, m, "top_left", device)


class CausalAlwaysBottomRight(BlockwiseTwin):
    """causal_always_bottom_right: bottom-right alignment where top-left was asked (differs only when N != M)."""

    def causal_keep(self, n, m, alignment, device):
        return super().causal_keep(n, m, "bottom_right", device)


class DropsLastPartialTile(BlockwiseTwin):
    """drops_last_partial_tile: loops over M // KEY_TILE full tiles, skipping the ragged tail of the keys."""

    def key_tiles(self, M):
        return [slice(j, j + KEY_TILE) for j in range(0, M - M % KEY_TILE, KEY_TILE)]


class NoRescale(BlockwiseTwin):
    """no_rescale: online softmax that does not rescale l and acc by exp(m - m') when the running max grows."""

    def online_update(self, m, l, acc, s, v_tile):
        m_new, _, _ = super().online_update(m, l, acc, s, v_tile)
        shift = torch.where(m_new == NEG_INF, torch.zeros_like(m_new), m_new).detach()
        p = torch.exp(s - shift)
        return m_new, l + p.sum(dim=-1, keepdim=True), acc + p @ v_tile


class NoMaxSubtraction(BlockwiseTwin):
    """no_max_subtraction: exp(S) without subtracting the row max, which overflows to inf on large logits."""

    def online_update(self, m, l, acc, s, v_tile):
        p = torch.exp(s)
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        return m_new, l + p.sum(dim=-1, keepdim=True), acc + p @ v_tile

    def finish(self, m, l, acc, scale):
        out = acc / torch.where(l > 0, l, torch.ones_like(l))
        return out, torch.log(l).squeeze(-1)   # no shift was taken out, so none is added back


class MaskedRowsNaN(BlockwiseTwin):
    """masked_rows_nan: O = acc / l with no guard, so a row whose every key is masked gives 0 / 0 = NaN."""

    def finish(self, m, l, acc, scale):
        _, lse = super().finish(m, l, acc, scale)
        return acc / l, lse


class GqaModulo(BlockwiseTwin):
    """gqa_modulo: query head h reads KV head h % Hkv instead of h // (H / Hkv)."""

    def kv_heads(self, H, Hkv, device):
        return torch.arange(H, device=device) % Hkv


class IgnoresStrides(BlockwiseTwin):
    """ignores_strides: reads each input's storage as if it were contiguous (B, H, L, D)."""

    def read(self, x):
        return torch.as_strided(x, x.shape, torch.empty(x.shape, device="meta").stride(), x.storage_offset())


class SoftmaxOverQueries(BlockwiseTwin):
    """softmax_over_queries: normalises each key's column over the queries instead of each query's row over the keys.

    Not expressible tile by tile over keys, so this one computes the scores densely (one tile of all M keys).
    """

    def key_tiles(self, M):
        return [slice(0, M)]

    def online_update(self, m, l, acc, s, v_tile):
        p = torch.softmax(s, dim=-2).nan_to_num(0.0)            # dim -2 is N: the bug
        return s.amax(dim=-1, keepdim=True), torch.ones_like(l), p @ v_tile


class LseOffByLogScale(BlockwiseTwin):
    """lse_off_by_log_scale: returns the log-sum-exp shifted by log(scale), as if taken before scaling."""

    def finish(self, m, l, acc, scale):
        out, lse = super().finish(m, l, acc, scale)
        return out, lse + math.log(scale)


class LseFiniteWhenMasked(BlockwiseTwin):
    """lse_finite_when_masked: lse = m + log(max(l, tiny)) with m taken as 0, finite where every key is masked."""

    def finish(self, m, l, acc, scale):
        out, _ = super().finish(m, l, acc, scale)
        shift = torch.where(m == NEG_INF, torch.zeros_like(m), m)
        return out, (shift + torch.log(l.clamp_min(torch.finfo(l.dtype).tiny))).squeeze(-1)


class DkDvSwapped(BlockwiseTwin):
    """dk_dv_swapped: the backward returns (dQ, dV, dK); shapes agree, so it runs, whenever Dv == D."""

    def corrupt_grads(self, dq, dk, dv, *, scale):
        return dq, dv, dk


class DqMissingScale(BlockwiseTwin):
    """dq_missing_scale: the backward forgets the scale in dQ = scale dS K."""

    def corrupt_grads(self, dq, dk, dv, *, scale):
        return dq / scale, dk, dv


class Nondeterministic(BlockwiseTwin):
    """nondeterministic: every other call reduces the key tiles in reverse order (as split-KV atomics might).

    Each result is within budget; only bitwise run-to-run equality can tell.
    """

    calls = 0

    def tile_order(self, tiles):
        self.calls += 1
        return tiles[::-1] if self.calls % 2 == 0 else tiles


class BiasSignFlipped(BlockwiseTwin):
    """bias_sign_flipped: subtracts the additive float mask instead of adding it."""

    def bias(self, mask, causal, B, N, M, dtype, device):
        if mask is not None and mask.dtype != torch.bool:
            mask = -mask
        return super().bias(mask, causal, B, N, M, dtype, device)


class DropsKeysBeyondTileCount(BlockwiseTwin):
    """drops_keys_beyond_tile_count: visits at most 8 key tiles (256 keys), silently ignoring every key after."""

    def key_tiles(self, M):
        return super().key_tiles(M)[:8]


class HalfPrecisionAccumulator(BlockwiseTwin):
    """half_precision_accumulator: rounds the running denominator l and accumulator acc to the input's half
    dtype once per key tile (a kernel keeping its online-softmax state in float16/bfloat16 registers)."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        self.state_dtype = q.dtype
        return super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)

    def online_update(self, m, l, acc, s, v_tile):
        m, l, acc = super().online_update(m, l, acc, s, v_tile)
        return m, l.to(self.state_dtype).to(l.dtype), acc.to(self.state_dtype).to(acc.dtype)


class OutputDtypeChanged(BlockwiseTwin):
    """output_dtype_changed: returns the float32 accumulator for float16/bfloat16 inputs (never rounded back)."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        out, lse = super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)
        return (out.float() if q.dtype in (torch.float16, torch.bfloat16) else out), lse


class PerHeadMaskCollapsed(BlockwiseTwin):
    """per_head_mask_collapsed: applies head 0's mask to every head (reads mask[:, :1], as if it were (B, 1, N, M))."""

    def bias(self, mask, causal, B, N, M, dtype, device):
        return super().bias(None if mask is None else mask[:, :1], causal, B, N, M, dtype, device)


class WritesInputInPlace(BlockwiseTwin):
    """writes_input_in_place: pre-scales Q in place (q *= scale) and then uses scale 1: right output, but the
    caller's q is changed."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        q.mul_(self.effective_scale(q.shape[-1], scale))
        return super().blockwise(q, k, v, mask=mask, causal=causal, scale=1.0)


class ScaleRoundedToInputDtype(BlockwiseTwin):
    """scale_rounded_to_input_dtype: rounds the softmax scale to the input dtype before using it (bfloat16 0.3 ->
    0.30078: every score 0.26% too large), the bug our own numpy backend had."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        self.io_dtype = q.dtype
        return super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)

    def effective_scale(self, D, scale):
        return float(torch.tensor(super().effective_scale(D, scale), dtype=self.io_dtype))


class OneSidedOutputRounding(BlockwiseTwin):
    """one_sided_output_rounding: rounds the float32 result up (toward +inf) to the half dtype instead of to
    nearest: each element within one ulp, every error on one side."""

    def round_output(self, out, io_dtype):
        nearest = out.to(io_dtype)
        if io_dtype not in (torch.float16, torch.bfloat16):
            return nearest
        below = nearest.to(out.dtype) < out
        return torch.where(below, torch.nextafter(nearest, torch.full_like(nearest, math.inf)), nearest)


class StatisticsInInputDtype(BlockwiseTwin):
    """statistics_in_input_dtype: keeps the per-tile softmax statistics (running max and denominator) in the
    half input dtype, rounding them once per key tile; the accumulator stays float32."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        self.io_dtype = q.dtype
        return super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)

    def online_update(self, m, l, acc, s, v_tile):
        m, l, acc = super().online_update(m, l, acc, s, v_tile)
        return m, l.to(self.io_dtype).to(l.dtype), acc


# --- the half-precision accumulator class in the backward: a hand-written backward (`TiledBackwardTwin`) -----------

class DkDvHalfAccumulator(TiledBackwardTwin):
    """dkdv_half_accumulator: keeps each key tile's dK and dV accumulators in the half input dtype, rounding them
    after every query tile's share (QUERY_TILE queries) is added: error grows with N (see `budget`)."""

    def sum_query_tiles(self, parts):
        total = torch.zeros_like(parts[:, :, 0])
        for i in range(parts.shape[2]):
            total = (total + parts[:, :, i]).to(self.half_dtype(parts)).to(parts.dtype)
        return total


class DqHalfAccumulator(TiledBackwardTwin):
    """dq_half_accumulator: keeps the dQ accumulator in the half input dtype, rounding it after every key tile's
    share (KEY_TILE keys) is added: error grows with M (see `budget`)."""

    def accumulate_dq(self, dq, part):
        return (dq + part).to(self.half_dtype(dq)).to(dq.dtype)


LOST_TILE_ROWS, LOST_TILE_WORKERS = 64, 1000


class LostTileInLargeGrid(BlockwiseTwin):
    """lost_tile_in_large_grid: a persistent schedule of 1000 workers over (batch, head, 64-query tile) blocks
    whose worker 0 never writes its second block (block 1000): 64 output rows of one head stay zero, only in
    grids of more than 1000 blocks."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        out, lse = super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)
        B, H, N, _ = out.shape
        tiles = -(-N // LOST_TILE_ROWS)
        if B * H * tiles <= LOST_TILE_WORKERS:
            return out, lse
        b, h, t = (int(i) for i in torch.unravel_index(torch.tensor(LOST_TILE_WORKERS), (B, H, tiles)))
        lost = torch.zeros(B, H, N, 1, dtype=torch.bool, device=out.device)
        lost[b, h, t * LOST_TILE_ROWS:(t + 1) * LOST_TILE_ROWS] = True
        return out.masked_fill(lost, 0.0), lse


# --- modifications (`attnbench.reference.mods`): one class of bug each ---------------------------------------------

class WindowOffByOne(BlockwiseTwin):
    """window_off_by_one: the window's left edge exclusive (i + M - N - j < left): each query loses its oldest key."""

    def window_keep(self, n, m, window, device):
        keep = super().window_keep(n, m, window, device)
        left = window[0]
        d = torch.arange(n, device=device)[:, None] + m - n - torch.arange(m, device=device)[None, :]
        return keep & (d != left) if left >= 0 else keep


class WindowWrongSide(BlockwiseTwin):
    """window_wrong_side: left and right swapped (a causal window looks ahead instead of behind)."""

    def window_keep(self, n, m, window, device):
        return super().window_keep(n, m, window[::-1], device)


class WindowTopLeft(BlockwiseTwin):
    """window_top_left: the window aligned top-left (i - j) where FlashAttention aligns it bottom-right."""

    def window_keep(self, n, m, window, device):
        keep = super().window_keep(max(n, m), max(n, m), window, device)
        return keep[:n, :m]


class SoftcapBeforeScale(BlockwiseTwin):
    """softcap_before_scale: scale * cap tanh(q k / cap): the cap applied to the unscaled scores."""

    def scores(self, q, k_tile, bias_tile, scale, cols=None):
        if cols is None or self.mods.softcap is None:
            return super().scores(q, k_tile, bias_tile, scale, cols)
        s = self.softcap(q @ k_tile.transpose(-1, -2), self.mods.softcap) * scale
        return s if bias_tile is None else s + bias_tile


class AlibiHeadsReversed(BlockwiseTwin):
    """alibi_heads_reversed: ALiBi slopes read in reverse head order."""

    def alibi_slopes(self, slopes):
        return super().alibi_slopes(slopes.flip(-1))


class AlibiFirstBatchSlopes(BlockwiseTwin):
    """alibi_first_batch_slopes: per-batch ALiBi slopes, batch 0's used for every batch."""

    def alibi_slopes(self, slopes):
        return super().alibi_slopes(slopes[:1] if slopes.ndim == 2 else slopes)


class SinkMissing(BlockwiseTwin):
    """sink_missing: the sink logit left out of the softmax denominator."""

    def sink_state(self, m, l):
        return m, l


class DocumentLeaksAcrossBoundary(BlockwiseTwin):
    """document_leaks_across_boundary: a query also sees the last key of the previous document."""

    def document_keep(self, ids, n, m):
        keep = super().document_keep(ids, n, m)
        previous = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)          # key j counted in document ids[j + 1]
        position = (torch.arange(n, device=ids.device) + m - n).clamp(0, m - 1)
        return keep | (ids[:, position][:, :, None] == previous[:, None, :])[:, None]


# --- split-KV (flash-decoding): the combine of the chunks' partials ------------------------------------------------

class SplitCombineNoRescale(BlockwiseTwin):
    """split_combine_no_rescale: split-KV combine that averages the chunks' partial outputs, leaving out the
    exp(lse_s - lse) rescale (each chunk weighed alike, whatever share of the softmax mass its keys hold)."""

    def combine(self, parts, sink):
        _, lse = super().combine(parts, sink)
        seen = [(o, (l > NEG_INF).to(o.dtype)[..., None]) for o, l in parts]
        count = sum(s for _, s in seen)
        return sum(o * s for o, s in seen) / count.clamp_min(1), lse


class SinkPerSplit(BlockwiseTwin):
    """sink_per_split: split-KV where every chunk starts from the sink's state (sink, 1), so the sink joins the
    denominator once per chunk (and once more in the combine) instead of once."""

    def chunk_start(self, m, l):
        return self.sink_state(m, l) if self.mods.sinks is not None else (m, l)


# --- KV layouts (`attnbench.reference.layouts`, read by `implementations/kv_torch.py`): one class of bug each --------

class PagedIgnoresBlockTable(BlockwiseTwin):
    """paged_ignores_block_table: reads sequence b's pages as if stored in order (page b * max_pages + t //
    page_size, the pool before it was permuted) instead of through the block table."""

    def key_slots(self, layout, geometry, b, t):
        if layout.key != "paged":
            return super().key_slots(layout, geometry, b, t)
        page = (b * geometry.block_table.shape[1] + t // layout.page_size) % geometry.num_pages
        return page * layout.page_size + t % layout.page_size


class RaggedKeysShifted(BlockwiseTwin):
    """ragged_keys_shifted: sequence b's keys start one row late (cu_seqlens_k[b] + 1): it loses its first key
    and sees the next sequence's first one."""

    def key_slots(self, layout, geometry, b, t):
        slots = super().key_slots(layout, geometry, b, t)
        return (slots + 1).clamp(max=geometry.slots - 1) if layout.key == "ragged" else slots


class AppendOffByOne(BlockwiseTwin):
    """append_off_by_one: writes the new keys at cache_seqlens[b] - 1, over the cache's last key, leaving the
    last slot it then reads unwritten."""

    def append_at(self, cache_seqlens, b):
        return super().append_at(cache_seqlens, b) - 1


class PrefixOffByOne(BlockwiseTwin):
    """prefix_lm_off_by_one: the prefix reaches one key too far (j <= P), so every query sees key P."""

    def prefix_keep(self, n, m, prefix, device):
        return super().prefix_keep(n, m, prefix + 1, device)


class SinkGradSignFlipped(BlockwiseTwin):
    """sink_grad_sign_flipped: d sink = +sum P_sink rowsum(dO O), the minus of dP/d sink = -P P_sink dropped."""

    def corrupt_sink_grad(self, dsink):
        return -dsink


class SplitPartialHalf(BlockwiseTwin):
    """split_partial_half: split-KV that stores each chunk's normalised partial O_s in the half input dtype
    (FlashAttention's o_accum is float32) before the combine rescales and sums them: one more rounding of
    about |O_s| u per chunk, each within an ulp."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        self.io_dtype = q.dtype
        return super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)

    def combine(self, parts, sink):
        return super().combine([(o.to(self.io_dtype).to(o.dtype), lse) for o, lse in parts], sink)


class AppendWrapsInPage(BlockwiseTwin):
    """append_wraps_in_page: writes new key i into the page of the first new key at offset (cache_seqlens[b] + i)
    % page_size, so an append that crosses a page edge wraps over the start of that page and leaves the next
    page's slots unwritten."""

    def sequence_kv(self, problem, flat_k, flat_v, new_k, new_v, cache_seqlens, b):
        self.appending = problem.append > 0          # the next `key_slots` call places the new keys
        return super().sequence_kv(problem, flat_k, flat_v, new_k, new_v, cache_seqlens, b)

    def key_slots(self, layout, geometry, b, t):
        if not (layout.key == "paged" and getattr(self, "appending", False)):
            return super().key_slots(layout, geometry, b, t)
        self.appending = False
        page = int(geometry.block_table[b, int(t[0]) // layout.page_size])
        return page * layout.page_size + t % layout.page_size


class KeyIndexWrapsAt2To17(BlockwiseTwin):
    """key_index_wraps_at_2_17: a key index held in 17 bits: key j >= 131,072 is read as key j - 131,072 (a step
    at 2^17, as SDPA's efficient kernel had one at 2^16, pytorch issue 162588)."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        M = k.shape[2]
        if M > 1 << 17:
            wrapped = torch.arange(M, device=k.device) % (1 << 17)
            k, v = k[:, :, wrapped], v[:, :, wrapped]
        return super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)



class GqaGradSumInInputDtype(BlockwiseTwin):
    """gqa_grad_sum_in_input_dtype: K and V gathered to the query heads in the input dtype (before the cast), so
    the backward rounds each query head's dK, dV to it and sums a KV group's G of them in it: the split-KV
    partials' class (`split_partial_half`) in the backward's reduction over a group."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        heads = self.kv_heads(q.shape[1], k.shape[1], q.device)
        return super().blockwise(q, k[:, heads], v[:, heads], mask=mask, causal=causal, scale=scale)


GRID_INDEX_WRAP = 1 << 16


class GridIndexWrapsAt2To16(BlockwiseTwin):
    """grid_index_wraps_at_2_16: a launch grid over B * H programs indexed in 16 bits: program p >= 65,536 (batch
    p // H, head p % H) computes the heads of program p - 65,536 and writes them as its own."""

    def blockwise(self, q, k, v, *, mask, causal, scale):
        out, lse = super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)
        B, H = out.shape[:2]
        if B * H <= GRID_INDEX_WRAP:
            return out, lse
        wrapped = torch.arange(B * H, device=out.device) % GRID_INDEX_WRAP
        return out.flatten(0, 1)[wrapped].unflatten(0, (B, H)), lse.flatten(0, 1)[wrapped].unflatten(0, (B, H))
