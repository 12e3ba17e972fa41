"""Dense: today's layout, every sequence N queries and M keys; with appended keys, a (B, Hkv, M, D) cache holding
M - K keys per sequence that the K new ones fill (flash_attn_with_kvcache without a block table). Spec: kv=dense
(the default, left out of the spec)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import KvLayout


@dataclass(frozen=True)
class Dense(KvLayout):
    key = "dense"
