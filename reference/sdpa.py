"""Scaled dot-product attention, the spec every backend is checked against.

Shape letters: B batch, H query heads, Hkv key/value heads (H a multiple of
Hkv; Hkv == 1 is multi-query), N queries, M keys, D query/key dim, Dv value dim.

    S = scale * Q K^T + bias        (B, H, N, M)   bias: mask (0 / -inf) or float bias, plus causal
    P = softmax(S) over keys        (B, H, N, M)   the attention pattern
    O = P V                         (B, H, N, Dv)
    lse = log sum_m exp(S)          (B, H, N)

Query head h reads key/value head h // (H / Hkv) (grouped-query attention).
A query whose every key is masked gets O = 0, P = 0 and lse = -inf.
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError, as_float64, check_mask, check_qkv, normalize_causal
from .masks import mask_to_bias
from .softmax import logsumexp, softmax


def group_queries(q: np.ndarray, hkv: int) -> np.ndarray:
    """(B, H, N, D) -> (B, Hkv, G, N, D) with G = H // Hkv, so head h sits in group h // G."""
    B, H, N, D = q.shape
    return q.reshape(B, hkv, H // hkv, N, D)


def ungroup(x: np.ndarray) -> np.ndarray:
    """(B, Hkv, G, ...) -> (B, H, ...), the inverse of `group_queries`."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def bias_grouped(bias, B: int, H: int, hkv: int, N: int, M: int):
    """Broadcast a bias (..., N, M) to (B, Hkv, G, N, M) matching grouped queries."""
    if np.ndim(bias) == 0:
        return bias
    return np.broadcast_to(bias, (B, H, N, M)).reshape(B, hkv, H // hkv, N, M)


def prepare_qkv(q, k, v, mask, causal, scale):
    """Validate and return (q, k, v, mask, causal, scale, dims) in float64, nothing of size (N, M) formed."""
    q, k, v = as_float64("q", q, rank=4), as_float64("k", k, rank=4), as_float64("v", v, rank=4)
    B, H, Hkv, N, M, D, Dv = check_qkv(q, k, v)
    mask = check_mask(mask, (B, H, N, M))
    causal = normalize_causal(causal)
    scale = 1.0 / np.sqrt(D) if scale is None else float(scale)
    if not np.isfinite(scale):
        raise AttentionInputError(f"scale: expected a finite number or None, got {scale!r}")
    return q, k, v, mask, causal, scale, (B, H, Hkv, N, M, D, Dv)


def prepare(q, k, v, mask, causal, scale):
    """Validate and return (q, k, v, bias, scale, dims) in float64, bias broadcastable to (B, Hkv, G, N, M)."""
    q, k, v, mask, causal, scale, (B, H, Hkv, N, M, D, Dv) = prepare_qkv(q, k, v, mask, causal, scale)
    bias = bias_grouped(mask_to_bias(mask, causal, N, M), B, H, Hkv, N, M)
    return q, k, v, bias, scale, (B, H, Hkv, N, M, D, Dv)


def sdpa(q, k, v, *, mask=None, causal=None, scale=None, return_weights=False, return_lse=False):
    """O (B, H, N, Dv) for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv).

    mask: bool broadcastable to (B, H, N, M), True = attend, or a float additive bias.
    causal: None, True (= "top_left"), "top_left" or "bottom_right" (see `masks`).
    scale: multiplies Q K^T; default 1 / sqrt(D).
    Returns O, or a tuple (O, P (B, H, N, M)?, lse (B, H, N)?) for what was asked.
    """
    q, k, v, bias, scale, _ = prepare(q, k, v, mask, causal, scale)
    qg = group_queries(q, k.shape[1])                                      # (B, Hkv, G, N, D)
    s = scale * np.einsum("bkgnd,bkmd->bkgnm", qg, k) + bias               # (B, Hkv, G, N, M)
    p = softmax(s, axis=-1)
    out = ungroup(np.einsum("bkgnm,bkme->bkgne", p, v))                    # (B, H, N, Dv)
    extras = []
    if return_weights:
        extras.append(ungroup(p))
    if return_lse:
        extras.append(ungroup(logsumexp(s, axis=-1)))
    return (out, *extras) if extras else out


def sdpa_backward(q, k, v, grad_out, *, mask=None, causal=None, scale=None):
    """(dQ, dK, dV) of sum(O * grad_out), grad_out (B, H, N, Dv); GQA grads summed into Hkv heads.

        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)),
        dQ = scale dS K,   dK = scale dS^T Q
    Fully masked rows have P = 0 and so contribute nothing.
    """
    q, k, v, bias, scale, (B, H, Hkv, N, M, D, Dv) = prepare(q, k, v, mask, causal, scale)
    g = as_float64("grad_out", grad_out, rank=4)
    if g.shape != (B, H, N, Dv):
        raise AttentionInputError(f"grad_out: expected shape {(B, H, N, Dv)}, got {g.shape}")
    qg, gg = group_queries(q, Hkv), group_queries(g, Hkv)                   # (B, Hkv, G, N, .)
    p = softmax(scale * np.einsum("bkgnd,bkmd->bkgnm", qg, k) + bias, axis=-1)
    out = np.einsum("bkgnm,bkme->bkgne", p, v)
    dv = np.einsum("bkgnm,bkgne->bkme", p, gg)                             # (B, Hkv, M, Dv)
    dp = np.einsum("bkgne,bkme->bkgnm", gg, v)
    ds = p * (dp - np.sum(gg * out, axis=-1, keepdims=True))
    dq = ungroup(scale * np.einsum("bkgnm,bkmd->bkgnd", ds, k))            # (B, H, N, D)
    dk = scale * np.einsum("bkgnm,bkgnd->bkmd", ds, qg)                     # (B, Hkv, M, D)
    return dq, dk, dv
