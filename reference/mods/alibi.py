"""ALiBi: a per-head linear bias -slope_h · |i + M - N - j| added to the scaled scores.

FlashAttention's `alibi_slopes` ((H,) or (B, H), float32: "a bias of (-alibi_slope * |i + seqlen_k - seqlen_q -
j|) is added to the attention score of query i and key j", flash_attn_interface.py), aligned bottom-right; the
slopes are the ALiBi paper's geometric sequence 2^(-8 (h + 1) / H) (Press et al. 2022, for H a power of two;
the same formula otherwise), per head, or drawn per batch and head (`alibi=batch`, as FlashAttention's tests
draw them: uniform [0, 0.3)) so a kernel indexing slopes by the wrong batch or head order fails. Spec:
`alibi=head` or `alibi=batch`.

Budget: the bias is computed (in float32 by the kernels that ship it) from an exact integer distance, one
multiplication: it joins the score magnitude T like any bias (`magnitude`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attnbench.reference._checks import AttentionInputError

from .base import Block, Modification

PER = ("head", "batch")


def geometric_slopes(heads: int) -> np.ndarray:
    """(H,) the ALiBi paper's slopes 2^(-8 (h + 1) / H), h = 0..H-1."""
    return 2.0 ** (-8.0 * (np.arange(heads) + 1) / heads)


@dataclass(frozen=True)
class Alibi(Modification):
    per: str = "head"
    slopes: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)   # (H,) or (B, H)

    key = "alibi"

    def __post_init__(self):
        if self.per not in PER:
            raise AttentionInputError(f"alibi: expected one of {PER}, got {self.per!r}")

    def spec_value(self) -> str:
        return self.per

    @classmethod
    def parse(cls, raw: str) -> "Alibi":
        return cls(raw or "head")

    def bind(self, problem, rng: np.random.Generator) -> "Alibi":
        if self.per == "head":
            slopes = geometric_slopes(problem.H)
        else:
            slopes = rng.random((problem.B, problem.H)) * 0.3
        return Alibi(self.per, np.asarray(slopes, dtype=np.float32).astype(np.float64))   # float32, as passed

    def bias(self, block: Block) -> np.ndarray:
        """(B|1, Hkv, G, R, C) float64: -slope_h |i + M - N - j|."""
        return -block.heads(self._slopes()) * np.abs(block.distance)

    def _slopes(self) -> np.ndarray:
        if self.slopes is None:
            raise AttentionInputError("alibi: slopes not bound (pass Alibi(per, slopes=array) to the reference)")
        return self.slopes

    def score(self, s, block: Block, xp=np):
        bias = self.bias(block)
        return s + (bias if xp is np else xp.as_tensor(bias, dtype=s.dtype, device=s.device))

    def magnitude(self, t, block: Block):
        return t + np.abs(self.bias(block))
