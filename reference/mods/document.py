"""Document masking: packed sequences, each query sees only the keys of its own document.

FlexAttention's document mask (attention-gym `generate_doc_mask_mod`: `document_id[q_idx] == document_id[kv_idx]`)
and FlashAttention's varlen packing: the M key positions hold `count` documents back to back, query i sits at key
position i + M - N (the queries are the last N positions, bottom-right like the window; the first N - M queries of
N > M belong to the first document). Composes with causal and windows (the intersection). Spec: `document=4`.

Boundaries are placed where kernels break and where a batch-blind kernel is caught: evenly spaced in M, each moved
to a multiple of 16 (a tile edge) plus the batch index (so every batch splits differently), kept strictly
increasing. They depend on the problem alone, so the row sampling knows where they fall.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attnbench.reference._checks import AttentionInputError

from .base import Block, Modification, edges


@dataclass(frozen=True)
class Document(Modification):
    count: int = 2
    ids: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)   # (B, M) document of key j

    key = "document"
    masks = True

    def __post_init__(self):
        if not isinstance(self.count, (int, np.integer)) or self.count < 1:
            raise AttentionInputError(f"document: expected a count of documents >= 1, got {self.count!r}")

    def spec_value(self) -> str:
        return str(self.count)

    @classmethod
    def parse(cls, raw: str) -> "Document":
        try:
            count = int(raw)
        except ValueError:
            raise AttentionInputError(f"document: expected a count of documents, got {raw!r}") from None
        return cls(count)

    def check(self, problem) -> str | None:
        return None if self.count <= problem.M else f"{self.count} documents need M >= {self.count}"

    def boundaries(self, B: int, M: int) -> np.ndarray:
        """(B, count - 1) int: the first key position of documents 1.. in each batch."""
        out = np.zeros((B, self.count - 1), dtype=np.int64)
        for b in range(B):
            starts = [(k * M // self.count) // 16 * 16 + b for k in range(1, self.count)]
            for k, s in enumerate(starts):                      # strictly increasing, inside 1..M-1
                low = out[b, k - 1] + 1 if k else 1
                out[b, k] = min(max(s, low), M - (self.count - 1 - k))
        return out

    def bind(self, problem, rng: np.random.Generator) -> "Document":
        starts = self.boundaries(problem.B, problem.M)
        ids = (np.arange(problem.M)[None, :, None] >= starts[:, None, :]).sum(axis=-1)       # (B, M)
        return Document(self.count, ids)

    def keep(self, block: Block):
        """(B, 1, 1, R, C): the query's document (at its key position, clipped to 0) equals the key's."""
        if self.ids is None:
            raise AttentionInputError("document: ids not bound (pass Document(count, ids=array) to the reference)")
        position = np.clip(block.rows + block.M - block.N, 0, block.M - 1)
        same = self.ids[:, position][:, :, None] == self.ids[:, block.cols][:, None, :]       # (B, R, C)
        return same[:, None, None]

    def query_rows(self, problem) -> set[int]:
        """Both sides of every boundary, in query rows."""
        starts = self.boundaries(problem.B, problem.M)
        return edges(*(int(s) - (problem.M - problem.N) for s in starts.ravel()))

    def key_rows(self, problem) -> set[int]:
        return edges(*(int(s) for s in self.boundaries(problem.B, problem.M).ravel()))
