"""Split-KV (flash-decoding): the keys cut into chunks, a partial output and log-sum-exp per chunk, one combine.

A decode step has few queries (N 1..16) against a long cache (M in the thousands): one worker per (batch, head,
query tile) leaves most of a GPU idle. Split-KV gives each worker one chunk of the keys; every chunk runs the
ordinary online softmax on its keys alone and writes its normalised partial O_s (B, H, N, Dv) and lse_s (B, H, N);
a combine step then rescales each partial by exp(lse_s - lse):

    lse = log(sum_s exp(lse_s) [+ exp(sink)])          O = sum_s exp(lse_s - lse) O_s

FlashAttention-2's split kernel and `combine_attn_seqk_parallel` (csrc/flash_attn/src/flash_fwd_kernel.h),
flash-decoding (Dao et al. 2023) and FlashInfer's `merge_state` (include/flashinfer/attention/cascade.cuh)
combine the same way. Shared here by torch_blockwise and triton_blockwise (and the mutation twin mirrors it).

Edge cases the combine must keep:
- a chunk whose keys are all masked (a window or causal diagonal that never reaches it) has lse_s = -inf and
  O_s = 0: weight exp(-inf) = 0, it adds nothing;
- a row whose every key is masked has every lse_s = -inf: O = 0 and lse = -inf (the reference's behaviour), no
  0/0 (the max is replaced by 0 before the subtraction, as FlashAttention's combine does);
- a sink (gpt-oss) is one term of the denominator: it joins the combine once, never once per chunk;
- a NaN anywhere in a row stays NaN (max and sum propagate it).

Shape letters: B batch, H query heads, N queries, M keys, Dv value dim, S splits.
"""
from __future__ import annotations

import math

import torch

# FlashAttention-2's cap on splits (set_params_splitkv: num_splits_heuristic(..., 128)).
MAX_SPLITS = 128


def num_splits_heuristic(work_items: int, workers: int, key_blocks: int, max_splits: int = MAX_SPLITS) -> int:
    """How many chunks to cut the keys into: FlashAttention-2's `num_splits_heuristic` (csrc/flash_attn/
    flash_api.cpp), a pure function here.

    work_items: programs without splitting (B * H * query tiles); workers: what runs at once (FlashAttention passes
    2 x the SM count); key_blocks: key tiles of M. If the work items already fill 80% of the workers, 1. Else the
    smallest split count whose wave efficiency (work_items * s / workers over its ceiling) is within 85% of the
    best, skipping counts that give the same blocks per split as one fewer (64 blocks in 11 or 12 splits is 6 per
    split either way: 12 would be 11 splits in fact).
    """
    if work_items >= 0.8 * workers:
        return 1
    max_splits = min(max_splits, workers, key_blocks)

    def eligible(s: int) -> bool:
        return s == 1 or -(-key_blocks // s) != -(-key_blocks // (s - 1))

    def efficiency(s: int) -> float:
        waves = work_items * s / workers
        return waves / math.ceil(waves) if eligible(s) else 0.0

    best = max((efficiency(s) for s in range(1, max_splits + 1)), default=0.0)
    return next((s for s in range(1, max_splits + 1) if eligible(s) and efficiency(s) >= 0.85 * best), 1)


def key_chunks(m: int, block: int, splits: int) -> list[slice]:
    """The S key chunks of 0..M: whole tiles of `block` keys, ceil(tiles / S) per chunk, as FlashAttention's
    n_blocks_per_split; the last chunks may be short or (when tiles do not divide evenly) absent."""
    tiles = -(-m // block)
    per = -(-tiles // max(1, splits))
    return [slice(start, min(start + per * block, m)) for start in range(0, m, per * block)]


def device_workers(device: torch.device) -> int:
    """What runs at once on `device`: 2 x the SM count on CUDA (FlashAttention's argument), torch's intra-op
    threads on the CPU."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return torch.get_num_threads()


def combine(o_parts: torch.Tensor, lse_parts: torch.Tensor, sink: torch.Tensor | None = None):
    """(O (.., Dv), lse (..)) from S partials: o_parts (S, .., Dv), each normalised over its own chunk (0 where
    the chunk saw no key), lse_parts (S, ..) natural log (-inf: saw no key), in the work dtype. sink: logits
    broadcastable to lse (..), one more term of every row's denominator, or None."""
    terms = lse_parts if sink is None else torch.cat([lse_parts, sink.expand_as(lse_parts[0])[None]])
    top = terms.amax(dim=0)
    shift = torch.where(top == float("-inf"), torch.zeros_like(top), top)        # every term -inf: no -inf - -inf
    weights = torch.exp(lse_parts - shift)                                          # (S, ..)
    total = torch.exp(terms - shift).sum(dim=0)                                     # the sink counted here, once
    empty = total == 0
    safe = torch.where(empty, torch.ones_like(total), total)
    out = (weights[..., None] * o_parts).sum(dim=0) / safe[..., None]
    lse = torch.where(empty, torch.full_like(total, float("-inf")), shift + torch.log(safe))
    return out, lse
