"""Softcap: scores squashed to (-cap, cap) by cap · tanh(s / cap), applied to the scaled scores.

Gemma 2's attention logit soft-capping, as FlashAttention (`softcap`: "scores = softcap * tanh(scores * scale /
softcap)", flash_attn_interface.py) and FlashInfer (`logits_soft_cap`) compute it: after the softmax scale,
before any bias or mask. Spec: `softcap=30`.

Budget: tanh contracts (|d/ds| <= 1), so an error in s stays at most that large after it; the kernel adds a
division, a tanh and a multiplication, each within about one rounding of |s| (a tanh of float32 within 2 ulp):
four more roundings per score (`extra_roundings`), on the magnitude T of the raw score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnbench.reference._checks import AttentionInputError

from .base import Block, Modification


@dataclass(frozen=True)
class Softcap(Modification):
    cap: float = 30.0

    key = "softcap"
    extra_roundings = 4

    def __post_init__(self):
        if not (isinstance(self.cap, (int, float)) and np.isfinite(self.cap) and self.cap > 0):
            raise AttentionInputError(f"softcap: expected a finite number > 0, got {self.cap!r}")

    def spec_value(self) -> str:
        return f"{self.cap:g}"

    @classmethod
    def parse(cls, raw: str) -> "Softcap":
        try:
            cap = float(raw)
        except ValueError:
            raise AttentionInputError(f"softcap: expected a number > 0, got {raw!r}") from None
        return cls(cap)

    def score(self, s, block: Block, xp=np):
        return self.cap * xp.tanh(s / self.cap)

    def score_grad(self, s, block: Block, xp=np):
        return 1.0 - xp.tanh(s / self.cap) ** 2
