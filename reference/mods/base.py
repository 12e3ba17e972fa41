"""What a modification is: one small object that changes the scores, the visible keys or the softmax of a block.

A problem's modifications are an ordered tuple (`Problem.mods`); every reference path (`sdpa`, `sdpa_rows`,
`blockwise_sdpa`, both backwards), the budget, the naive yardstick and the row sampling ask them the same
questions about a `Block` of (query rows, key columns):

    score(s, block, xp)       new scores from the scaled scores s (..., R, C): softcap, ALiBi (in list order)
    score_grad(s, block, xp)  d score(s) / d s, for the backward (None: 1, as for any additive bias)
    keep(block)               bool (R, C) of the visible pairs, or None (all): windows, document masks
    sink(block)               logits (B|1, H|1) that join every row's softmax denominator, or None
    magnitude(t, block)       the score magnitude the error budget is relative to, after this modification
    query_rows / key_rows     rows where this modification's edges fall (sampled at length)
    visible_range(lo, hi, N, M)  the key columns rows lo..hi can see at most (tile skipping, pair counts)

Masking modifications (`keep`) apply after every score modification, whatever the order: a softcap after a
-inf mask would turn -inf into -cap and unmask the key (FlexAttention's mask_mod runs after score_mod too).
Every modification's `score` runs in order (a masking one's is the identity, except the input mask's float bias,
`mask.InputMask`, which adds last and hides its -inf entries through `keep`).

A modification with inputs of its own (sink logits, ALiBi slopes) is declared without them in a `Problem`
(hashable: `Sinks()`) and `bind`s them when inputs are made (`Sinks(logits=array)`); the reference takes the
bound ones. Shape letters: B batch, H query heads, Hkv key/value heads, G = H / Hkv, N queries, M keys, R rows,
C columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Block:
    """Query rows (R,) against key columns (C,) of a problem with N queries, M keys, H query heads, Hkv KV heads.

    Scores of a block are grouped (B, Hkv, G, R, C) in every reference path; `heads` puts a per-head value there.
    """

    rows: np.ndarray
    cols: np.ndarray
    N: int
    M: int
    H: int
    Hkv: int

    @property
    def distance(self) -> np.ndarray:
        """(R, C) int64: i + M - N - j, the key's distance behind the query with the last query on the last key
        (FlashAttention's bottom-right alignment, which its window and ALiBi both use)."""
        return self.rows[:, None].astype(np.int64) + (self.M - self.N) - self.cols[None, :].astype(np.int64)

    def heads(self, values) -> np.ndarray:
        """Per-head values (H,) or per batch and head (B, H) as (B|1, Hkv, G, 1, 1), matching grouped scores:
        query head h sits at [h // G, h % G]."""
        values = np.asarray(values, dtype=np.float64)
        values = values.reshape((1,) * (2 - values.ndim) + values.shape)                 # (B|1, H)
        return values.reshape(values.shape[0], self.Hkv, self.H // self.Hkv, 1, 1)


class Modification:
    """Base of every modification: the identity on all questions. Subclasses are frozen dataclasses."""

    key: ClassVar[str] = ""          # its name in the problem spec: "window=256:0"
    masks: ClassVar[bool] = False    # True when `keep` hides keys (applied after every score modification)
    extra_roundings: ClassVar[int] = 0   # roundings a kernel adds per score (budget, `magnitude`)

    # --- the spec string ---------------------------------------------------------------------------------------
    def spec_value(self) -> str:
        raise NotImplementedError

    @classmethod
    def parse(cls, raw: str) -> "Modification":
        raise NotImplementedError

    # --- inputs of its own --------------------------------------------------------------------------------------
    def bind(self, problem, rng: np.random.Generator) -> "Modification":
        """This modification with its inputs drawn for `problem` (deterministic given rng); default: itself."""
        return self

    def check(self, problem) -> str | None:
        """Why this modification cannot apply to `problem` (one line), or None."""
        return None

    # --- the math ------------------------------------------------------------------------------------------------
    def score(self, s, block: Block, xp=np):
        return s

    def score_grad(self, s, block: Block, xp=np):
        return None

    def keep(self, block: Block):
        return None

    def sink(self, block: Block):
        return None

    def magnitude(self, t, block: Block):
        return t

    # --- where to look ----------------------------------------------------------------------------------------
    def query_rows(self, problem) -> set[int]:
        return set()

    def key_rows(self, problem) -> set[int]:
        return set()

    def visible_range(self, lo, hi, N: int, M: int):
        """Inclusive (first, last) key columns that queries lo..hi may see at most ((0, M - 1): no limit); lo and
        hi may be int arrays (one range each)."""
        return 0, M - 1

    def label(self) -> str:
        """How reports name it: the spec item."""
        return f"{self.key}={self.spec_value()}"


def edges(*points: int, spread: int = 1) -> set[int]:
    """Each point and its neighbours within `spread`: both sides of an edge."""
    return {p + d for p in points for d in range(-spread, spread + 1)}


# Tile sizes a kernel might use: both sides of every multiple of 16 through 256 are sampled (`attnbench.check`).
TILE_STEP, TILE_MAX = 16, 256


def tile_edges(length: int) -> set[int]:
    """Both sides of every tile boundary: multiples of 16 through 256 and the start of each size's last tile."""
    out = set()
    for t in range(TILE_STEP, TILE_MAX + 1, TILE_STEP):
        out |= {t - 1, t}
    for t in (16, 32, 64, 128, 256):
        last = (length - 1) // t * t                                          # first index of the last tile
        out |= {last - 1, last, last + 1}
    return out
