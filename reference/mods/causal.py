"""Causal masking: a query sees no key after its own position, the diagonal aligned top-left or bottom-right.

    top_left      j <= i            torch's convention: `F.scaled_dot_product_attention(is_causal=True)` ("the
                                    attention masking has the form of the upper left causal bias", its reference
                                    implementation `torch.ones(L, S, dtype=torch.bool).tril(diagonal=0)`;
                                    `torch.nn.attention.bias.CausalVariant.UPPER_LEFT`). With N > M the last
                                    queries see every key; with N < M the last M - N keys are never seen.
    bottom_right  j <= i + M - N    FlashAttention's `causal=True` (flash_attn_interface.py: "If seqlen_q !=
                                    seqlen_k ... the causal mask is aligned to the bottom right corner of the
                                    attention matrix"; seqlen_q 2, seqlen_k 5 keeps [1 1 1 1 0] [1 1 1 1 1];
                                    `CausalVariant.LOWER_RIGHT`): the N queries are the last N of M positions
                                    (decoding with a KV cache). With N > M the first N - M queries see no key
                                    ("If the row of the mask is all zero, the output will be zero").

For N == M both are the lower triangle. A problem names causal as a field of its own (`Problem.causal`, spec item
`causal=top_left|bottom_right`), because every backend's API has it as its own flag; the reference side reads it
only as this modification (`Problem.reference_mods`: `Causal(align)` first, then the problem's mods), so scores,
pair counts, tile skipping and the row sampling ask it the same questions as a window. It is not in `MODS` (the
spec keeps `causal=` a field).

A hidden pair's score is replaced by -inf (`mods.apply`, as for a window and as FlashAttention masks), not -inf
added to it: a NaN score there no longer reaches its row. Only a row that sees no key and holds a NaN query
differs from the hand-threaded bias this replaced (O = 0 now, NaN then, NaN + -inf); every other row, NaN and
-inf included, is the same to the bit.

KV layouts (`reference/layouts/`) accept bottom_right only: FlashAttention's varlen and kvcache align causal
bottom-right in each sequence with its own N_b, M_b, and the logical dense view right-aligns every sequence, so
i + M - N - j there equals i_b + M_b - N_b - j_b: this one rule on the view is each sequence's own rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnbench.reference._checks import CAUSAL_ALIGNMENTS, AttentionInputError, normalize_causal

from .base import Block, Modification, edges, tile_edges


def offset(align: str, N: int, M: int) -> int:
    """Key j is visible from query i iff j <= i + offset: 0 for top_left, M - N for bottom_right."""
    return M - N if align == "bottom_right" else 0


@dataclass(frozen=True)
class Causal(Modification):
    align: str = "top_left"

    key = "causal"
    masks = True

    def __post_init__(self):
        if self.align not in CAUSAL_ALIGNMENTS:
            raise AttentionInputError(f"causal: expected one of {CAUSAL_ALIGNMENTS}, got {self.align!r}")

    def spec_value(self) -> str:
        return self.align

    @classmethod
    def parse(cls, raw: str) -> "Causal":
        align = normalize_causal(raw)
        if align is None:
            raise AttentionInputError(f"causal: expected one of {CAUSAL_ALIGNMENTS}, got {raw!r}")
        return cls(align)

    def keep(self, block: Block):
        """(R, C): the key is at or before the query's diagonal."""
        return block.cols[None, :] <= block.rows[:, None] + offset(self.align, block.N, block.M)

    def visible_range(self, lo, hi, N: int, M: int):
        return 0, np.minimum(M - 1, np.asarray(hi) + offset(self.align, N, M))

    def query_rows(self, problem) -> set[int]:
        """Rows whose last visible key sits on either side of a key-tile edge (where a kernel's last tile is
        partial), the first query that sees a key (bottom_right with N > M: N - M) and the first that sees all."""
        N, M = problem.N, problem.M
        off = offset(self.align, N, M)
        return ({j - off + d for j in tile_edges(M) for d in (-1, 0)} | edges(max(0, -off)) | edges(M - 1 - off))

    def key_rows(self, problem) -> set[int]:
        """Keys on the diagonal of the first and last query."""
        off = offset(self.align, problem.N, problem.M)
        return edges(off, problem.N - 1 + off)
