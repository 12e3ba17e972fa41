"""torch_flex's KV layouts, read the FlexAttention way: one call over the packed batch, a block mask per layout.

Ragged (attention-gym's document masking over a packed batch): q (total_q, H, D) and k, v (total_k, Hkv, .) are
one sequence of length total_q against total_k, and the mask_mod keeps query row q of sequence s = seq(q) against
key row kv of the same sequence only. Sequence s's bottom-right distance i_s + M_s - N_s - j_s is
q - kv + cu_seqlens_k[s + 1] - cu_seqlens_q[s + 1] in packed rows, so causal, windows and ALiBi compose in the same
mask_mod and score_mod as for a dense problem. `create_block_mask` derives the block mask from that mask_mod, so a
fused kernel skips every tile across two sequences (and right of each sequence's diagonal).

Paged (FlexAttention's `PagedAttention`, torch.nn.attention.experimental._paged_attention): the pool (num_pages,
page_size, Hkv, D) is read as one key sequence (1, Hkv, num_pages page_size, D) that every batch row broadcasts
over; the helper's page table and its inverse (physical page -> logical page) are filled from our block table,
a logical block mask (key blocks of one page) is converted to physical pages (`convert_logical_block_mask`), and
its mask_mod and score_mod see the logical key index, bounded by M_b = cache_seqlens[b] + K (`kv_len`). Appended
keys are written into a copy of the pool with `PagedAttention.assign` (flash_attn_with_kvcache writes in place; the
caller's cache stays as it was); into a copy of a dense cache (B, Hkv, M, D) by a scatter.

Shape letters: B sequences, H, Hkv heads, N, M the longest lengths, N_b, M_b sequence b's, K appended keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Positions:
    """Where a (q_idx, kv_idx) pair of a flex call sits in its sequence, as mask_mod / score_mod arithmetic.

    distance(b, q_idx, kv_idx): i + M_b - N_b - j, the distance every bottom-right rule reads.
    sequence(b, q_idx): the sequence of the query (per-batch parameters such as ALiBi slopes (B, H)).
    same(b, q_idx, kv_idx): query and key in one sequence (None: always, one sequence per batch row).
    """

    distance: Callable
    sequence: Callable
    same: Callable | None = None


def dense_positions(N: int, M: int) -> Positions:
    """A dense batch: row b is sequence b, N queries against M keys."""
    return Positions(distance=lambda b, q_idx, kv_idx: q_idx + (M - N) - kv_idx, sequence=lambda b, q_idx: b)


def sequence_ids(cu: torch.Tensor) -> torch.Tensor:
    """(total,) int64: the sequence of each packed row, from offsets cu (B + 1,)."""
    lengths = (cu[1:] - cu[:-1]).long()
    return torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)


def ragged_positions(cu_q: torch.Tensor, cu_k: torch.Tensor) -> Positions:
    """A packed batch (one flex batch row): sequence s holds query rows cu_q[s]:cu_q[s + 1] and key rows
    cu_k[s]:cu_k[s + 1]; each sequence right-aligned to its own end (bottom-right)."""
    seq_q, seq_k = sequence_ids(cu_q), sequence_ids(cu_k)
    shift = (cu_k[1:] - cu_q[1:]).long()[seq_q]              # (total_q,) M_s - N_s + cu_k[s] - cu_q[s]
    return Positions(distance=lambda b, q_idx, kv_idx: q_idx + shift[q_idx] - kv_idx,
                     sequence=lambda b, q_idx: seq_q[q_idx],
                     same=lambda b, q_idx, kv_idx: seq_q[q_idx] == seq_k[kv_idx])


def cache_positions(N: int, seq_k: torch.Tensor) -> Positions:
    """Dense queries against key kv_idx of sequence b's cache (a dense cache's row, a paged cache's logical index),
    M_b = seq_k[b] keys: keys past M_b are no part of it, so the block mask holds no block (page) past them."""
    return Positions(distance=lambda b, q_idx, kv_idx: q_idx + (seq_k[b] - N) - kv_idx, sequence=lambda b, q_idx: b,
                     same=lambda b, q_idx, kv_idx: kv_idx < seq_k[b])


def append_ragged(k: torch.Tensor, new: torch.Tensor, cu_k: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """Packed keys (total_k, Hkv, D) with sequence b's new keys new[b] (B, K, Hkv, D) written after its cache
    (rows cu_k[b] + cache[b] ...): a copy."""
    K = new.shape[1]
    rows = (cu_k[:-1] + cache).long()[:, None] + torch.arange(K, device=k.device)      # (B, K)
    return k.index_copy(0, rows.reshape(-1), new.reshape(-1, *new.shape[2:]))


def append_dense(k: torch.Tensor, new: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """A dense cache (B, Hkv, M, D) with new[b] (B, K, Hkv, D) written at keys cache[b] + 0..K-1: a copy."""
    B, K = new.shape[:2]
    at = cache.long()[:, None] + torch.arange(K, device=k.device)                       # (B, K)
    return k.scatter(2, at[:, None, :, None].expand(B, k.shape[1], K, k.shape[3]), new.transpose(1, 2))


@dataclass
class PagedView:
    """What a flex call needs of a paged cache: FlexAttention's `PagedAttention` holding our block table, and the
    logical key lengths M_b (B,) (cache_seqlens + K)."""

    pages: object
    seq_k: torch.Tensor
    max_logical: int

    @classmethod
    def build(cls, block_table: torch.Tensor, seq_k: torch.Tensor, num_pages: int, page_size: int):
        from torch.nn.attention.experimental._paged_attention import PagedAttention

        B, device = len(seq_k), seq_k.device
        pages = PagedAttention(num_pages, page_size, B, device=device)
        used = (seq_k + page_size - 1) // page_size                              # (B,) pages each sequence holds
        for b in range(B):                 # the helper's tables from ours; entries past a sequence's pages stay -1
            n = int(used[b])
            pages.page_table[b, :n] = block_table[b, :n].long()
            pages.physical_to_logical[b, block_table[b, :n].long()] = torch.arange(n, device=device)
        pages.capacity[:] = used * page_size
        pages.empty_pages = []
        return cls(pages, seq_k.long(), int(used.max()) * page_size)

    def pool(self, cache: torch.Tensor) -> torch.Tensor:
        """Pages (num_pages, page_size, Hkv, D) as the one key sequence (1, Hkv, num_pages page_size, D) (a view)."""
        return cache.reshape(-1, *cache.shape[2:]).transpose(0, 1)[None]

    def append(self, k_pool: torch.Tensor, v_pool: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
               cache: torch.Tensor):
        """Copies of the pools (1, Hkv, S, .) with k_new, v_new (B, K, Hkv, .) written at cache[b] + 0..K-1."""
        k_pool, v_pool = k_pool.clone(), v_pool.clone()
        at = cache.long()[:, None] + torch.arange(k_new.shape[1], device=cache.device)         # (B, K)
        self.pages.assign(torch.arange(len(cache), device=cache.device), at, k_new.transpose(1, 2),
                          v_new.transpose(1, 2), k_pool, v_pool)
        return k_pool, v_pool
