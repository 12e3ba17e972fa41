"""What a KV layout is: how a batch of B sequences of their own lengths is stored, and its logical dense view.

Conventions are FlashAttention's (flash_attn_interface.py): `flash_attn_varlen_func(q, k, v, cu_seqlens_q,
cu_seqlens_k, ...)` takes q (total_q, H, D) and k (total_k, Hkv, D) packed, sequence b holding rows
cu_seqlens[b]:cu_seqlens[b + 1]; `flash_attn_with_kvcache(q, k_cache, v_cache, k=, v=, cache_seqlens=,
block_table=)` takes a cache (B, M, Hkv, D), or pages (num_pages, page_size, Hkv, D) addressed through
block_table (B, max_pages) int32, holding cache_seqlens[b] keys of sequence b, and writes the new keys k
(B, K, Hkv, D) into it at cache_seqlens[b] ("k_cache and v_cache will be updated inplace ... starting at the
indices specified by cache_seqlens") before attending to all cache_seqlens[b] + K of them. Causal masks, windows
and ALiBi are aligned bottom-right in each sequence with its own lengths (N_b queries, M_b keys), as both
functions do (FlashInfer's and vLLM's paged kernels alike).

Every layout stores its keys as slots of a token-major array `flat` (S, Hkv, D): key t of sequence b sits in slot
`slot(geometry, b, t)`; queries are the canonical (B, H, N, D) or packed. The **logical dense view** is what the
reference reads: q (B, H, N, D), k (B, Hkv, M, D) with sequence b right-aligned (its queries in rows N - N_b ..
N - 1, its keys in columns M - M_b .. M - 1, zeros elsewhere) and a bool mask (B, 1, N, M) keeping exactly those
pairs. Right alignment keeps i + M - N - j, the distance every bottom-right rule reads, equal to the sequence's own
i_b + M_b - N_b - j_b, so the dense reference on the view is, row for row, the reference of each sequence alone
(tests/test_layouts.py); padding rows see no key (O = 0) and are no part of the problem.

Shape letters: B sequences, H query heads, Hkv key/value heads, N and M the longest query and key lengths, N_b and
M_b sequence b's, K appended keys per sequence, D, Dv head dims.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where each sequence lives, drawn from the problem alone (deterministic): int64 arrays.

    seq_q (B,) N_b; seq_k (B,) M_b, appended keys included; cache (B,) M_b - K, the keys held before the append
    (cache_seqlens); cu_q, cu_k (B + 1,) ragged offsets (None otherwise); block_table (B, max_pages) and num_pages
    for pages (None, 0 otherwise); slots: S, the length of the flat key store.
    """

    seq_q: np.ndarray
    seq_k: np.ndarray
    cache: np.ndarray
    cu_q: np.ndarray | None = None
    cu_k: np.ndarray | None = None
    block_table: np.ndarray | None = None
    num_pages: int = 0
    slots: int = 0


@dataclass
class Storage:
    """The physical inputs of a layout problem, float64 (values representable in the dtype), named as
    FlashAttention names them. q (B, H, N, D) or packed (total_q, H, D); k, v the cache: (B, Hkv, M, D) dense,
    (total_k, Hkv, D) ragged, (num_pages, page_size, Hkv, D) paged, slots past a sequence's keys holding
    garbage; k_new, v_new (B, K, Hkv, D|Dv) or None; cu_seqlens_q/_k (B + 1,) int32 or None; block_table
    (B, max_pages) int32 or None; cache_seqlens (B,) int32."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    cache_seqlens: np.ndarray
    k_new: np.ndarray | None = None
    v_new: np.ndarray | None = None
    cu_seqlens_q: np.ndarray | None = None
    cu_seqlens_k: np.ndarray | None = None
    block_table: np.ndarray | None = None

    ARRAYS: ClassVar[tuple[str, ...]] = ("q", "k", "v", "cache_seqlens", "k_new", "v_new", "cu_seqlens_q",
                                         "cu_seqlens_k", "block_table")

    def arrays(self) -> dict:
        """{name: array} of every array present."""
        return {n: getattr(self, n) for n in self.ARRAYS if getattr(self, n) is not None}

    def copy(self) -> "Storage":
        return Storage(**{n: None if getattr(self, n) is None else np.array(getattr(self, n), copy=True)
                          for n in self.ARRAYS})


class KvLayout:
    """Base of every layout (frozen dataclasses): dense queries, keys in slots b * M + t (the dense cache)."""

    key: ClassVar[str] = ""
    ragged_queries: ClassVar[bool] = False    # queries packed (total_q, H, D) with cu_seqlens_q
    grad: ClassVar[bool] = True               # has a backward (paged caches are inference-only: forward)

    def spec_value(self) -> str:
        return self.key

    @classmethod
    def parse(cls, arg: str | None) -> "KvLayout":
        from attnbench.reference._checks import AttentionInputError

        if arg:
            raise AttentionInputError(f"kv={cls.key} takes no argument, got {cls.key}:{arg}")
        return cls()

    def check(self, problem) -> str | None:
        """Why this layout cannot hold `problem` (one line), or None."""
        return None

    # --- geometry ---------------------------------------------------------------------------------------------
    def lengths(self, problem, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(N_b (B,), M_b (B,)): every sequence N queries and M keys."""
        return np.full(problem.B, problem.N), np.full(problem.B, problem.M)

    def place(self, problem, seq_k: np.ndarray, rng: np.random.Generator) -> dict:
        """Geometry fields beyond the lengths (offsets, block table, slots)."""
        return dict(slots=problem.B * problem.M)

    def slots(self, geometry: Geometry, b: int, t: np.ndarray) -> np.ndarray:
        """Flat slots of keys t (int array) of sequence b."""
        return b * int(geometry.slots // len(geometry.seq_k)) + t

    # --- the flat token-major key store, for NumPy arrays and torch tensors alike -------------------------------
    def flat(self, cache):
        """The cache as its slots (S, Hkv, D): (B, Hkv, M, D) -> (B M, Hkv, D)."""
        B, Hkv, M, D = cache.shape
        return cache.swapaxes(1, 2).reshape(B * M, Hkv, D)

    def unflat(self, flat, problem):
        """Inverse of `flat`."""
        return flat.reshape(problem.B, problem.M, *flat.shape[1:]).swapaxes(1, 2)
