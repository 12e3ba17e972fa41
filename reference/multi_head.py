"""Multi-head attention with learned projections, as the notes build it up.

Shapes: x_q (B, N, E) the tokens being updated, x_kv (B, M, E) the tokens they
read (x_kv is x_q for self-attention; another sequence for cross-attention).

    Q = x_q  W_q    (E, H*D)    queries: "what am I looking for?"
    K = x_kv W_k    (E, Hkv*D)  keys: "what do I offer?"
    V = x_kv W_v    (E, Hkv*Dv) values: "what should be added if I am relevant"
    head h: C_h = sdpa(Q_h, K_h', V_h')       h' = h // (H / Hkv)
    delta_E = concat_h(C_h) W_o  (H*Dv, E)    the update, same width as the embedding
    E' = E + delta_E                          the residual update

Low-rank value: W_v may be a pair (W_down (E, R), W_up (R, Hkv*Dv)), so that
V = (x_kv W_down) W_up with rank at most R.

The notes' two views of the output agree: concatenating the heads and applying
W_o equals summing each head's own delta_E_h = C_h W_o[h*Dv:(h+1)*Dv] (the
rows of W_o that belong to head h; the notes' "value up" matrix of that head).
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError, as_float64
from .sdpa import sdpa


def _value_projection(w_v) -> np.ndarray:
    """W_v (E, Hkv*Dv) from a full matrix or a low-rank pair (W_down (E, R), W_up (R, Hkv*Dv))."""
    if isinstance(w_v, (tuple, list)):
        if len(w_v) != 2:
            raise AttentionInputError(f"w_v: a low-rank value is a pair (w_v_down, w_v_up), got {len(w_v)} items")
        down, up = as_float64("w_v_down", w_v[0], rank=2), as_float64("w_v_up", w_v[1], rank=2)
        if down.shape[1] != up.shape[0]:
            raise AttentionInputError(f"w_v: down {down.shape} and up {up.shape} must share the rank R")
        return down @ up
    return as_float64("w_v", w_v, rank=2)


def _split_heads(x: np.ndarray, n_heads: int, name: str) -> np.ndarray:
    """(B, L, heads*d) -> (B, heads, L, d)."""
    B, L, width = x.shape
    if width % n_heads:
        raise AttentionInputError(f"{name}: projected width {width} is not a multiple of {n_heads} heads")
    return x.reshape(B, L, n_heads, width // n_heads).transpose(0, 2, 1, 3)


def head_contexts(x_q, x_kv, w_q, w_k, w_v, *, n_heads, n_kv_heads=None, causal=None, mask=None, scale=None):
    """Per-head context vectors C (B, H, N, Dv) before the output projection."""
    x_q, x_kv = as_float64("x_q", x_q, rank=3), as_float64("x_kv", x_kv, rank=3)
    w_q, w_k, w_v = as_float64("w_q", w_q, rank=2), as_float64("w_k", w_k, rank=2), _value_projection(w_v)
    E = x_q.shape[-1]
    if x_kv.shape[-1] != E or x_kv.shape[0] != x_q.shape[0]:
        raise AttentionInputError(f"x_kv: expected (B, M, E) = ({x_q.shape[0]}, M, {E}), got {x_kv.shape}")
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        if w.shape[0] != E:
            raise AttentionInputError(f"{name}: expected {E} rows (the embedding width E), got shape {w.shape}")
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    q = _split_heads(x_q @ w_q, n_heads, "w_q")                             # (B, H, N, D)
    k = _split_heads(x_kv @ w_k, n_kv_heads, "w_k")                         # (B, Hkv, M, D)
    v = _split_heads(x_kv @ w_v, n_kv_heads, "w_v")                         # (B, Hkv, M, Dv)
    return sdpa(q, k, v, causal=causal, mask=mask, scale=scale)


def _check_w_o(w_o, contexts: np.ndarray, E: int) -> np.ndarray:
    w_o = as_float64("w_o", w_o, rank=2)
    B, H, N, Dv = contexts.shape
    if w_o.shape != (H * Dv, E):
        raise AttentionInputError(f"w_o: expected (H*Dv, E) = ({H * Dv}, {E}), got {w_o.shape}")
    return w_o


def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, *, n_heads, n_kv_heads=None, causal=None, mask=None,
                         scale=None) -> np.ndarray:
    """delta_E (B, N, E): heads concatenated then mapped by w_o (H*Dv, E)."""
    c = head_contexts(x_q, x_kv, w_q, w_k, w_v, n_heads=n_heads, n_kv_heads=n_kv_heads, causal=causal, mask=mask,
                      scale=scale)
    w_o = _check_w_o(w_o, c, np.shape(x_q)[-1])
    B, H, N, Dv = c.shape
    return c.transpose(0, 2, 1, 3).reshape(B, N, H * Dv) @ w_o             # (B, N, E)


def head_deltas(x_q, x_kv, w_q, w_k, w_v, w_o, *, n_heads, n_kv_heads=None, causal=None, mask=None,
                scale=None) -> np.ndarray:
    """Each head's own update delta_E_h (B, H, N, E); their sum over H is `multi_head_attention`."""
    c = head_contexts(x_q, x_kv, w_q, w_k, w_v, n_heads=n_heads, n_kv_heads=n_kv_heads, causal=causal, mask=mask,
                      scale=scale)
    w_o = _check_w_o(w_o, c, np.shape(x_q)[-1])
    B, H, N, Dv = c.shape
    return np.einsum("bhne,hef->bhnf", c, w_o.reshape(H, Dv, -1))


def residual_update(e, delta) -> np.ndarray:
    """E' = E + delta_E, both (B, N, E): the refined embeddings."""
    e, delta = as_float64("e", e), as_float64("delta", delta)
    if e.shape != delta.shape:
        raise AttentionInputError(f"residual_update: e {e.shape} and delta {delta.shape} must have the same shape")
    return e + delta
