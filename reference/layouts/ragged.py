"""Ragged: B sequences of their own lengths packed back to back, as `flash_attn_varlen_func` takes them.

q (total_q, H, D) and k, v (total_k, Hkv, D|Dv) with cumulative lengths cu_seqlens_q, cu_seqlens_k (B + 1,)
int32: sequence b holds query rows cu_seqlens_q[b]:cu_seqlens_q[b + 1] and key rows cu_seqlens_k[b]:...
(FlashAttention's test_flash_attn_varlen_* packs them the same way). With appended keys, sequence b's key rows are
its cache region: cache_seqlens[b] = M_b - K keys, then K slots the new keys are written to.

Lengths are drawn per sequence: N_b in 1..N and M_b in max(1, K)..M, equal when N = M (self-attention, each
sequence its own square), one sequence (b = B // 2) at the full N and M so the dense view is tight, and the first
sequence short, so a kernel that reads past a sequence's end reads the next sequence. Spec: kv=ragged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Geometry, KvLayout


@dataclass(frozen=True)
class Ragged(KvLayout):
    key = "ragged"
    ragged_queries = True

    def lengths(self, problem, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        B, N, M, K = problem.B, problem.N, problem.M, problem.append
        seq_k = rng.integers(max(1, K), M + 1, size=B)
        seq_q = seq_k.copy() if N == M else rng.integers(1, N + 1, size=B)
        seq_q[0], seq_k[0] = max(1, N // 3), max(1, K, M // 3)
        seq_q[B // 2], seq_k[B // 2] = N, M
        return seq_q, seq_k

    def place(self, problem, seq_k: np.ndarray, rng: np.random.Generator) -> dict:
        cu_k = np.concatenate([[0], np.cumsum(seq_k)])
        return dict(cu_k=cu_k, slots=int(cu_k[-1]))

    def slots(self, geometry: Geometry, b: int, t: np.ndarray) -> np.ndarray:
        return geometry.cu_k[b] + t

    def flat(self, cache):
        return cache

    def unflat(self, flat, problem):
        return flat
