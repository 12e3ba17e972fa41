"""Paged: keys in a pool of fixed-size pages addressed through a block table, as `flash_attn_with_kvcache(...,
block_table=)`, FlashInfer's paged KV cache and vLLM's paged attention take them.

k, v (num_pages, page_size, Hkv, D|Dv); block_table (B, max_pages) int32: key t of sequence b sits in page
block_table[b, t // page_size] at offset t % page_size; cache_seqlens (B,) keys per sequence (appended ones
written after them). Queries stay dense (B, H, N, D), as flash_attn_with_kvcache takes them. Pages are placed in
a random permutation of the pool (vLLM's tests permute block tables at random), the pool holds spare pages of
garbage, and unused block-table entries point at page 0. Key lengths M_b are drawn in max(1, K)..M, one sequence
at the full M. Page sizes: any >= 1; conformance runs 1, 16 and 256 (FlashInfer's 1/8/16, FlashAttention's 256).
Forward only: no kernel of these has a backward. Spec: kv=paged:16.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnbench.reference._checks import AttentionInputError

from .base import Geometry, KvLayout


@dataclass(frozen=True)
class Paged(KvLayout):
    page_size: int = 16

    key = "paged"
    grad = False

    def __post_init__(self):
        if not isinstance(self.page_size, (int, np.integer)) or self.page_size < 1:
            raise AttentionInputError(f"kv=paged: page size must be an integer >= 1, got {self.page_size!r}")

    def spec_value(self) -> str:
        return f"paged:{self.page_size}"

    @classmethod
    def parse(cls, arg: str | None) -> "Paged":
        try:
            size = int(arg) if arg else cls.page_size
        except ValueError:
            raise AttentionInputError(f"kv=paged: expected paged:PAGE_SIZE, got paged:{arg}") from None
        return cls(size)

    def lengths(self, problem, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        seq_k = rng.integers(max(1, problem.append), problem.M + 1, size=problem.B)
        seq_k[problem.B // 2] = problem.M
        return np.full(problem.B, problem.N), seq_k

    def place(self, problem, seq_k: np.ndarray, rng: np.random.Generator) -> dict:
        pages = -(-seq_k // self.page_size)                                   # pages each sequence needs
        spare = max(1, int(pages.sum()) // 4)                                 # garbage pages nobody owns
        order = rng.permutation(int(pages.sum()) + spare)                     # physical page of each logical one
        table = np.zeros((problem.B, int(pages.max())), dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(pages)])
        for b in range(problem.B):
            table[b, :pages[b]] = order[start[b]:start[b + 1]]
        return dict(block_table=table, num_pages=len(order), slots=len(order) * self.page_size)

    def slots(self, geometry: Geometry, b: int, t: np.ndarray) -> np.ndarray:
        return geometry.block_table[b, t // self.page_size] * self.page_size + t % self.page_size

    def flat(self, cache):
        return cache.reshape(cache.shape[0] * cache.shape[1], *cache.shape[2:])

    def unflat(self, flat, problem):
        return flat.reshape(-1, self.page_size, *flat.shape[1:])
