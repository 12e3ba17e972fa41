"""The notes' weight-free self-attention ("Your journey starts with one step").

x (N, E): one embedding per token. With no learned matrices every token is its
own query, key and value:

    scores  = x x^T            (N, N)   dot products between inputs
    weights = softmax by row   (N, N)   row i: how much token i attends to each token
    context = weights x        (N, E)   row i: the weighted sum of all inputs for token i
"""
from __future__ import annotations

import numpy as np

from ._checks import as_float64
from .scores import scores
from .softmax import softmax


def simple_self_attention(x) -> tuple[np.ndarray, np.ndarray]:
    """(weights (N, N), context (N, E)) for embeddings x (N, E); unscaled dot-product scores."""
    x = as_float64("x", x, rank=2)
    weights = softmax(scores(x, x, kind="dot"), axis=-1)
    return weights, weights @ x
