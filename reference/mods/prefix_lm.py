"""Prefix-LM: the first P key positions are a bidirectional prefix every query sees, the rest causal.

FlexAttention's prefix-LM (attention-gym `attn_gym/masks/prefix_lm.py`, `generate_prefix_lm_mask(prefix_length)`:
`or_masks(kv_idx < prefix_length, causal_mask)` with `causal_mask = q_idx >= kv_idx`): key j is visible from
query i iff j < P or j <= i. So a query inside the prefix sees the whole prefix (and nothing after it: j <= i
< P adds nothing), a query after it sees the prefix and every key up to itself.

When N != M the causal half is aligned bottom-right, like the window, ALiBi and document masks here and
FlashAttention's causal: query i sits at key position i + M - N (the queries are the last N of M positions, as
in decoding after a prompt), so key j is visible iff j < P or j <= i + M - N. With N = M this is attention-gym's
mask exactly. The prefix is counted in key positions: a decode step (N = 1) sees the whole prefix and every
key up to itself, and the first N - M queries of N > M (positions before the first key) see the prefix alone.
P = 0 is bottom-right causal, P >= M full bidirectional attention.

It is causal past its prefix already, so a problem asking for `causal` too is refused (the intersection would
be plain causal: the prefix would silently vanish). Composes with windows and documents (the intersection).
Spec: `prefix_lm=P`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnbench.reference._checks import AttentionInputError

from .base import Block, Modification, edges


@dataclass(frozen=True)
class PrefixLM(Modification):
    length: int = 0

    key = "prefix_lm"
    masks = True

    def __post_init__(self):
        if not isinstance(self.length, (int, np.integer)) or isinstance(self.length, bool) or self.length < 0:
            raise AttentionInputError(f"prefix_lm: expected a prefix length >= 0, got {self.length!r}")

    def spec_value(self) -> str:
        return str(self.length)

    @classmethod
    def parse(cls, raw: str) -> "PrefixLM":
        try:
            length = int(raw)
        except ValueError:
            raise AttentionInputError(f"prefix_lm: expected a prefix length, got {raw!r}") from None
        return cls(length)

    def check(self, problem) -> str | None:
        if problem.causal is not None:
            return "is causal past its prefix already; drop causal (with it the prefix would vanish)"
        return None

    def keep(self, block: Block):
        """(R, C): the key is in the prefix, or at or before the query's key position i + M - N."""
        return (block.cols[None, :] < self.length) | (block.distance >= 0)

    def visible_range(self, lo, hi, N: int, M: int):
        last = np.minimum(M - 1, np.maximum(self.length - 1, np.asarray(hi) + M - N))
        return 0, last

    def query_rows(self, problem) -> set[int]:
        """The last query inside the prefix and the first after it (key positions P - 1 and P), with neighbours."""
        return edges(self.length - (problem.M - problem.N))

    def key_rows(self, problem) -> set[int]:
        """The last prefix key and the first causal one (P - 1, P), with neighbours."""
        return edges(self.length)
