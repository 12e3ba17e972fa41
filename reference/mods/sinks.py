"""Attention sinks: a per-head logit that joins every row's softmax denominator and adds nothing to the output.

gpt-oss's learned sinks (its reference concatenates the sink logit to the scores, softmaxes, and drops that
column) and FlashAttention 3's / FlashInfer's `sinks`: P_ij = exp(s_ij) / (exp(sink_h) + sum_j exp(s_ij)).
The sink logit is in the units of the final scores (no scale, no softcap). The lse the reference returns is the
log of that whole denominator, log(exp(sink_h) + sum_j exp(s_ij)), so P = exp(s - lse) still holds; a row that
sees no key has O = 0 and lse = sink_h. The sink's own gradient, where a backend returns one (`Capabilities.
sink_grad`), is -sum_i P_sink,i · rowsum(dO_i · O_i) (`reference.sdpa_backward(return_sink_grad=True)`, derived
there; its budget is `budget.sink_grad_bound`). Spec: `sinks=1`.

The logits are drawn per head, standard normal plus 1 (of the order of a row's largest score), so the sink takes a
visible share of the mass without swamping the keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Block, Modification


@dataclass(frozen=True)
class Sinks(Modification):
    logits: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)   # (H,)

    key = "sinks"

    def spec_value(self) -> str:
        return "1"

    @classmethod
    def parse(cls, raw: str) -> "Sinks":
        return cls()

    def bind(self, problem, rng: np.random.Generator) -> "Sinks":
        from attnbench.problem import round_to_dtype

        return Sinks(round_to_dtype(rng.standard_normal(problem.H) + 1.0, "float32"))

    def sink(self, block: Block):
        """(B|1, Hkv, G, 1) sink logits matching grouped rows."""
        if self.logits is None:
            from attnbench.reference._checks import AttentionInputError

            raise AttentionInputError("sinks: logits not bound (pass Sinks(logits=array) to the reference)")
        return block.heads(self.logits)[..., 0]
