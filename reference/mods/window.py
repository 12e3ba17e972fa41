"""Sliding window (local attention): query i sees keys j with i + M - N - left <= j <= i + M - N + right.

FlashAttention's `window_size=(left, right)` (flash_attn_interface.py: "Query at position i will only attend to
keys between [i + seqlen_k - seqlen_q - window_size[0], i + seqlen_k - seqlen_q + window_size[1]] inclusive",
-1 meaning unbounded on that side): aligned bottom-right, so with N < M the queries are the last N positions.
Composes with causal (the intersection; `window=W:0` alone is causal within W). Spec: `window=LEFT:RIGHT`,
`-1` for an unbounded side; a query whose window holds no key (left and right both < 0 past an edge) is empty.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnbench.reference._checks import AttentionInputError

from .base import Block, Modification, edges


@dataclass(frozen=True)
class Window(Modification):
    left: int = -1
    right: int = -1

    key = "window"
    masks = True

    def __post_init__(self):
        for name in ("left", "right"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < -1:
                raise AttentionInputError(f"window: {name} must be an integer >= -1 (-1: unbounded), got {value!r}")

    def spec_value(self) -> str:
        return f"{self.left}:{self.right}"

    @classmethod
    def parse(cls, raw: str) -> "Window":
        left, sep, right = raw.partition(":")
        try:
            sides = int(left), int(right) if sep else -1
        except ValueError:
            raise AttentionInputError(f"window: expected LEFT:RIGHT integers (-1 unbounded), got {raw!r}") from None
        return cls(*sides)

    def keep(self, block: Block):
        d = block.distance                                                    # i + M - N - j
        keep = np.ones(d.shape, dtype=bool)
        if self.left >= 0:
            keep &= d <= self.left
        if self.right >= 0:
            keep &= -d <= self.right
        return keep

    def visible_range(self, lo, hi, N: int, M: int):
        first = 0 if self.left < 0 else np.maximum(0, np.asarray(lo) + M - N - self.left)
        last = M - 1 if self.right < 0 else np.minimum(M - 1, np.asarray(hi) + M - N + self.right)
        return first, last

    def query_rows(self, problem) -> set[int]:
        """Rows whose window's left edge is the first key or whose right edge is the last key: where a kernel
        clamps the window (i + M - N - left = 0 and i + M - N + right = M - 1)."""
        off = problem.M - problem.N
        points = ([self.left - off] if self.left >= 0 else []) + ([problem.N - 1 - self.right] if self.right >= 0
                                                                   else [])
        return edges(*points)

    def key_rows(self, problem) -> set[int]:
        """Keys on both window edges of the first and last query."""
        off = problem.M - problem.N
        points = [i + off + e for i in (0, problem.N - 1)
                  for e, on in ((-self.left, self.left >= 0), (self.right, self.right >= 0)) if on]
        return edges(*points)
