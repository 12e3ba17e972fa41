"""Scaled dot-product attention, the spec every backend is checked against.

Shape letters: B batch, H query heads, Hkv key/value heads (H a multiple of
Hkv; Hkv == 1 is multi-query), N queries, M keys, D query/key dim, Dv value dim.

    S = mods(scale * Q K^T)         (B, H, N, M)   causal and the mask (a bool keep or a float bias) are mods
    P = softmax(S) over keys        (B, H, N, M)   the attention pattern (a sink joins the denominator)
    O = P V                         (B, H, N, Dv)
    lse = log sum_m exp(S)          (B, H, N)

`mods`: the modifications (`attnbench.reference.mods`: window, softcap, ALiBi, sinks, ...), bound to their
inputs; `causal` joins them as `Causal(alignment)` first and `mask` as `InputMask(mask)` last (`prepare_qkv`);
scores come from the one block function
(`block.scores`) every reference path shares.

Query head h reads key/value head h // (H / Hkv) (grouped-query attention).
A query whose every key is masked gets O = 0, P = 0 and lse = -inf.
"""
from __future__ import annotations

import numpy as np

from ._checks import AttentionInputError, as_float64, check_mask, check_qkv
from . import block
from . import mods as modifications
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


def prepare_qkv(q, k, v, mask, causal, scale, mods=()):
    """Validate and return (q, k, v, mods, scale, dims) in float64, nothing of size (N, M) formed; `causal` and
    `mask` come back inside mods, as `Causal(alignment)` first and `InputMask(mask)` last (`mods.with_causal`,
    `mods.with_mask`): the reference reads them there only."""
    q, k, v = as_float64("q", q, rank=4), as_float64("k", k, rank=4), as_float64("v", v, rank=4)
    B, H, Hkv, N, M, D, Dv = check_qkv(q, k, v)
    mask = check_mask(mask, (B, H, N, M))
    mods = modifications.check(modifications.with_mask(modifications.with_causal(causal, mods), mask))
    scale = 1.0 / np.sqrt(D) if scale is None else float(scale)
    if not np.isfinite(scale):
        raise AttentionInputError(f"scale: expected a finite number or None, got {scale!r}")
    return q, k, v, mods, scale, (B, H, Hkv, N, M, D, Dv)


def full_scores(q, k, scale, mods, *, with_grad: bool = False):
    """Scores (B, Hkv, G, N, M) of every query against every key (`block.scores`), and with_grad the factor
    d S / d (scale Q K^T) (None: 1)."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    return block.scores(group_queries(q, Hkv), k, np.arange(N), np.arange(M), mods=mods, N=N, M=M, scale=scale,
                        with_grad=with_grad)


def softmax_with_sink(s, sink):
    """(P (..., R, C), lse (..., R)) of scores s, a sink logit (broadcastable to (..., R)) joining the
    denominator as one more column whose value is 0 (None: the plain softmax)."""
    if sink is None:
        return softmax(s, axis=-1), logsumexp(s, axis=-1)
    column = np.broadcast_to(np.asarray(sink)[..., None], (*s.shape[:-1], 1))
    extended = np.concatenate([s, column], axis=-1)
    return softmax(extended, axis=-1)[..., :-1], logsumexp(extended, axis=-1)


def _sink(mods, dims):
    B, H, Hkv, N, M, D, Dv = dims
    return modifications.sink_logits(mods, block.block_of(np.arange(N), np.arange(0), N, M, H, Hkv))


def sdpa(q, k, v, *, mask=None, causal=None, scale=None, mods=(), return_weights=False, return_lse=False):
    """O (B, H, N, Dv) for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv).

    mask: bool broadcastable to (B, H, N, M), True = attend, or a float additive bias.
    causal: None, True (= "top_left"), "top_left" or "bottom_right" (`mods.causal`: one more modification).
    scale: multiplies Q K^T; default 1 / sqrt(D).
    mods: modifications bound to their inputs (`attnbench.reference.mods`), applied in order.
    Returns O, or a tuple (O, P (B, H, N, M)?, lse (B, H, N)?) for what was asked.
    """
    q, k, v, mods, scale, dims = prepare_qkv(q, k, v, mask, causal, scale, mods)
    p, lse = softmax_with_sink(full_scores(q, k, scale, mods), _sink(mods, dims))
    out = ungroup(np.einsum("bkgnm,bkme->bkgne", p, v))                    # (B, H, N, Dv)
    extras = []
    if return_weights:
        extras.append(ungroup(p))
    if return_lse:
        extras.append(ungroup(lse))
    return (out, *extras) if extras else out


def sdpa_backward(q, k, v, grad_out, *, mask=None, causal=None, scale=None, mods=(), return_sink_grad=False):
    """(dQ, dK, dV) of sum(O * grad_out), grad_out (B, H, N, Dv); GQA grads summed into Hkv heads.

        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)),
        dQ = scale (dS f') K,   dK = scale (dS f')^T Q
    with f' the derivative of the score modifications (softcap; 1 without). A sink adds a column of value 0 to
    the softmax: it changes P and O, and dS of the real keys keeps this form. Fully masked rows have P = 0.

    return_sink_grad: also d/d(sink logit) (H,), the sinks' gradient (a problem without sinks: zeros). With
    Z_n = exp(sink_h) + sum_m exp(S_nm), P_nm = exp(S_nm) / Z_n and P_sink,n = exp(sink_h) / Z_n = exp(sink_h -
    lse_n): dP_nm / d sink_h = -P_nm P_sink,n, so dO_n / d sink_h = -P_sink,n O_n and

        d sink_h = -sum_{b, n} P_sink,bhn rowsum(dO * O)_bhn        (a row that sees no key: O = 0, adds 0)
    """
    q, k, v, mods, scale, (B, H, Hkv, N, M, D, Dv) = prepare_qkv(q, k, v, mask, causal, scale, mods)
    g = as_float64("grad_out", grad_out, rank=4)
    if g.shape != (B, H, N, Dv):
        raise AttentionInputError(f"grad_out: expected shape {(B, H, N, Dv)}, got {g.shape}")
    qg, gg = group_queries(q, Hkv), group_queries(g, Hkv)                   # (B, Hkv, G, N, .)
    s, factor = full_scores(q, k, scale, mods, with_grad=True)
    sink = _sink(mods, (B, H, Hkv, N, M, D, Dv))
    p, lse = softmax_with_sink(s, sink)
    out = np.einsum("bkgnm,bkme->bkgne", p, v)
    dv = np.einsum("bkgnm,bkgne->bkme", p, gg)                             # (B, Hkv, M, Dv)
    dp = np.einsum("bkgne,bkme->bkgnm", gg, v)
    delta = np.sum(gg * out, axis=-1)                                      # (B, Hkv, G, N)
    ds = p * (dp - delta[..., None])
    if factor is not None:
        ds = ds * np.where(p > 0, factor, 0.0)                             # hidden keys: P = 0, factor unused
    dq = ungroup(scale * np.einsum("bkgnm,bkmd->bkgnd", ds, k))            # (B, H, N, D)
    dk = scale * np.einsum("bkgnm,bkgnd->bkmd", ds, qg)                     # (B, Hkv, M, D)
    if not return_sink_grad:
        return dq, dk, dv
    if sink is None:
        return dq, dk, dv, np.zeros(H)
    p_sink = np.exp(np.broadcast_to(sink, lse.shape) - lse)                # (B, Hkv, G, N)
    dsink = -np.sum(p_sink * delta, axis=(0, 3))                           # (Hkv, G): head h at [h // G, h % G]
    return dq, dk, dv, dsink.reshape(H)
