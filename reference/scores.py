"""Scores: how well each query matches each key (the notes' grid of dot products).

Shapes: q (..., N, D), k (..., M, D) -> scores (..., N, M).

    "dot"     q . k                   high dot product -> more similar
    "scaled"  q . k / sqrt(D)         keeps scores O(1) as D grows (the Transformer's choice)
    "cosine"  q . k / (|q| |k|)       equals "dot" when both vectors have unit length
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError, as_float64

SCORE_KINDS = ("dot", "scaled", "cosine")


def scores(q, k, kind: str = "scaled") -> np.ndarray:
    """Score matrix (..., N, M) for q (..., N, D) and k (..., M, D) by `kind`."""
    q = as_float64("q", q)
    k = as_float64("k", k)
    if q.ndim < 2 or k.ndim < 2 or q.shape[-1] != k.shape[-1]:
        raise AttentionInputError(f"q, k: expected (..., N, D) and (..., M, D) with equal D; got {q.shape}, {k.shape}")
    if kind == "dot":
        return q @ np.swapaxes(k, -1, -2)
    if kind == "scaled":
        return (q @ np.swapaxes(k, -1, -2)) / np.sqrt(q.shape[-1])
    if kind == "cosine":
        q_unit = q / np.linalg.norm(q, axis=-1, keepdims=True)
        k_unit = k / np.linalg.norm(k, axis=-1, keepdims=True)
        return q_unit @ np.swapaxes(k_unit, -1, -2)
    raise AttentionInputError(f"kind: expected one of {SCORE_KINDS}, got {kind!r}")
