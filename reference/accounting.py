"""Counting: the N^2 pattern, the arithmetic of one attention call, the parameters.

The notes: "the attention pattern's size is the square of the context size"
(8 tokens -> 64 entries), the bottleneck that blockwise attention works around;
and GPT-3's query, key and value matrices (12,288-wide embeddings, 128-dim
query/key space, 96 heads, 96 layers): 1,572,864 parameters per matrix, about
6.3 million per head for query, key, value-down and value-up, about 58 billion
in all. The value-up matrices of all heads together are what is usually called
the output projection W_o.
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError

PASSES = ("fwd", "bwd", "fwd+bwd")


def attention_pattern_size(n: int, m: int | None = None, *, batch: int = 1, heads: int = 1) -> int:
    """Entries of the (N, M) pattern over batch and heads; `attention_pattern_size(8) == 64`."""
    m = n if m is None else m
    if min(n, m, batch, heads) < 1:
        raise AttentionInputError(f"attention_pattern_size: sizes must be >= 1, got n={n}, m={m}, "
                                  f"batch={batch}, heads={heads}")
    return int(n) * int(m) * int(batch) * int(heads)


def attended_pairs(n: int, m: int, causal=None, mods=()) -> int:
    """Number of (query, key) pairs a query may attend: N*M, or the exact count under the masking modifications,
    causal among them (`mods.with_causal`; a window of W keys behind over N queries: about N (W + 1), not N^2),
    in O(N)."""
    from .mods import visible_range, with_causal

    mods = with_causal(causal, mods)
    if not mods:
        return int(n) * int(m)
    rows = np.arange(n, dtype=np.int64)
    first, last = visible_range(mods, rows, rows, n, m)                      # per row, inclusive
    return int(np.clip(np.asarray(last) - np.asarray(first) + 1, 0, m).sum())


def attention_flops(batch: int, heads: int, n: int, m: int, d: int, dv: int | None = None, *, causal=None,
                    pass_: str = "fwd", mods=()) -> int:
    """Floating-point operations (multiply and add counted as 2) of the matmuls.

    Forward: S = Q K^T (2 D per pair) and O = P V (2 Dv per pair).
    Backward, the minimum that needs no recomputation: dV = P^T dO and dP = dO V^T
    (2 Dv each), dQ = dS K and dK = dS^T Q (2 D each): twice the forward.
    (FlashAttention also recomputes S in the backward and counts 2.5x; that extra
    is the kernel's choice, not work the math needs.) Softmax and masking are
    O(pairs), not counted. Causal and masking modifications (windows) count only the pairs a query may attend.
    """
    if pass_ not in PASSES:
        raise AttentionInputError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    dv = d if dv is None else dv
    pairs = attended_pairs(n, m, causal, mods) * int(batch) * int(heads)
    forward = 2 * pairs * (d + dv)
    backward = 2 * forward
    return {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[pass_]


def attention_param_count(d_model: int, d_head: int, n_heads: int, n_layers: int = 1, *,
                          n_kv_heads: int | None = None, value_rank: int | None = None) -> int:
    """Parameters of the query, key, value-down and value-up matrices over all heads and layers.

    Per head: W_q (d_model, d_head), W_k (d_model, d_head), value-down
    (d_model, value_rank) and value-up (value_rank, d_model); value_rank
    defaults to d_head, which makes value params = query + key params, as the
    notes say. With n_kv_heads < n_heads (grouped-query) keys and value-downs
    are shared by groups of heads; each query head keeps its own value-up.
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    value_rank = d_head if value_rank is None else value_rank
    if min(d_model, d_head, n_heads, n_layers, n_kv_heads, value_rank) < 1 or n_heads % n_kv_heads:
        raise AttentionInputError("attention_param_count: sizes must be >= 1 and n_heads a multiple of n_kv_heads; "
                                  f"got d_model={d_model}, d_head={d_head}, n_heads={n_heads}, "
                                  f"n_kv_heads={n_kv_heads}, n_layers={n_layers}, value_rank={value_rank}")
    query = n_heads * d_model * d_head
    key = n_kv_heads * d_model * d_head
    value_down = n_kv_heads * d_model * value_rank
    value_up = n_heads * value_rank * d_model
    return int(n_layers) * (query + key + value_down + value_up)
