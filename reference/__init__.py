"""attnbench.reference: the float64 spec of the attention math in the notes.

Pure NumPy functions, one concept per module, written to be read. Every backend
in `attnbench.implementations` is checked against these.
"""
from ._checks import CAUSAL_ALIGNMENTS, AttentionInputError, normalize_causal
from .accounting import PASSES, attended_pairs, attention_flops, attention_param_count, attention_pattern_size
from .blockwise import blockwise_sdpa
from .masks import causal_mask, causal_offset, mask_to_bias
from .multi_head import head_contexts, head_deltas, multi_head_attention, residual_update
from .scores import SCORE_KINDS, scores
from .rows import sdpa_backward_rows, sdpa_rows
from .sdpa import sdpa, sdpa_backward
from .simple import simple_self_attention
from .softmax import logsumexp, softmax

__all__ = [
    "AttentionInputError", "CAUSAL_ALIGNMENTS", "PASSES", "SCORE_KINDS",
    "attended_pairs", "attention_flops", "attention_param_count", "attention_pattern_size",
    "blockwise_sdpa", "causal_mask", "causal_offset", "head_contexts", "head_deltas", "logsumexp",
    "mask_to_bias", "multi_head_attention", "normalize_causal", "residual_update", "scores", "sdpa", "sdpa_backward",
    "sdpa_backward_rows", "sdpa_rows",
    "simple_self_attention", "softmax",
]
