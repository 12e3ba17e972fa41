"""The naive yardstick of budget condition 2: the plain formula computed in the problem's own dtype.

    S = (scale Q) K^T + bias    P = softmax(S) (row max subtracted)    O = P V
    dP = dO V^T    dS = P (dP - rowsum(P dP))    dQ = scale dS K    dK = dS^T (scale Q)    dV = P^T dO

every tensor held in the dtype (torch on CPU, which accumulates half-precision matmuls in float32, as the
FlashAttention test's reference does), on chosen rows only. Every quantity of a query row depends on that row
alone, so the rows of O and dQ are the rows of the full computation; dK and dV of a key row sum over every
query, so P and dS of that key's column are gathered for all N queries (query chunks, O(chunk · M) memory) and
reduced in one matmul over N, as the full formula does. The core owns this (no backend is imported), so a
backend under test is never its own yardstick.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims, R rows.
"""
from __future__ import annotations

import numpy as np
import torch

from attnbench.reference import bias_rows

# Query rows per chunk: keeps one (B, H, chunk, M) score tile near 2^22 elements.
CHUNK_ELEMENTS = 1 << 22


def _tensor(x: np.ndarray, dtype: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))


def _grouped_bias(bias: np.ndarray | float, Hkv: int, G: int, dtype: str) -> torch.Tensor | None:
    """A float64 bias (b, h, R, M), h in {1, H}, as a (b, Hkv|1, G|1, R, M) tensor in `dtype` (exact: the
    bias is dtype-representable by construction, 0 or -inf for bool masks and causal)."""
    if np.ndim(bias) == 0:
        return None
    b = np.asarray(bias)
    b = b.reshape((1,) * (4 - b.ndim) + b.shape)
    b = b.reshape(b.shape[0], Hkv, G, *b.shape[2:]) if b.shape[1] != 1 else b[:, :, None]
    return _tensor(b, dtype)


def _plain_rows(inputs, problem, rows: np.ndarray):
    """P (B, Hkv, G, R, M) and O (B, Hkv, G, R, Dv) of query rows `rows`, in the problem's dtype."""
    p = problem
    G = p.H // p.Hkv
    scale = p.D ** -0.5 if p.scale is None else p.scale
    q = _tensor(inputs.q[:, :, rows], p.dtype).reshape(p.B, p.Hkv, G, len(rows), p.D)
    k, v = _tensor(inputs.k, p.dtype).unsqueeze(2), _tensor(inputs.v, p.dtype).unsqueeze(2)
    # Scale q first: in float16, Q K^T can overflow 65504 where scale * Q K^T does not.
    s = (q * scale) @ k.transpose(-1, -2)
    bias = _grouped_bias(bias_rows(inputs.mask, p.causal, rows, np.arange(p.M), p.N, p.M), p.Hkv, G, p.dtype)
    if bias is not None:
        s = s + bias
    row_max = s.amax(dim=-1, keepdim=True)
    e = torch.exp(s - torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max))
    total = e.sum(dim=-1, keepdim=True)
    prob = e / torch.where(total > 0, total, torch.ones_like(total))     # an empty row gives P = 0, not 0/0
    return prob, prob @ v


def _chunks(problem, rows: np.ndarray):
    size = max(1, CHUNK_ELEMENTS // (problem.B * problem.H * problem.M))
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def naive_forward(inputs, problem, rows: np.ndarray | None = None) -> np.ndarray:
    """O (B, H, R, Dv) float64 of the plain formula in the problem's dtype at query `rows` (None: all N)."""
    rows = np.arange(problem.N) if rows is None else np.asarray(rows)
    outs = [_plain_rows(inputs, problem, chunk)[1] for chunk in _chunks(problem, rows)]
    return torch.cat(outs, dim=3).reshape(problem.B, problem.H, len(rows), problem.Dv).double().numpy()


def _ds(inputs, problem, grad_out, rows):
    """P and dS (B, Hkv, G, R, M) of query rows `rows`, in the dtype."""
    p = problem
    prob, _ = _plain_rows(inputs, p, rows)
    do = _tensor(grad_out[:, :, rows], p.dtype).reshape(p.B, p.Hkv, p.H // p.Hkv, len(rows), p.Dv)
    dp = do @ _tensor(inputs.v, p.dtype).unsqueeze(2).transpose(-1, -2)
    return prob, prob * (dp - (prob * dp).sum(dim=-1, keepdim=True)), do


def naive_backward(inputs, problem, grad_out: np.ndarray, query_rows: np.ndarray | None = None,
                   key_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dQ (B, H, Rq, D), dK (B, Hkv, Rk, D), dV (B, Hkv, Rk, Dv)) float64 of the plain formula in the dtype."""
    p = problem
    G = p.H // p.Hkv
    scale = p.D ** -0.5 if p.scale is None else p.scale
    qr = np.arange(p.N) if query_rows is None else np.asarray(query_rows)
    kr = np.arange(p.M) if key_rows is None else np.asarray(key_rows)
    k = _tensor(inputs.k, p.dtype).unsqueeze(2)
    dq = [(_ds(inputs, p, grad_out, chunk)[1] @ k) * scale for chunk in _chunks(p, qr)]
    cols_p, cols_ds, dos = [], [], []
    for chunk in _chunks(p, np.arange(p.N)):
        prob, ds, do = _ds(inputs, p, grad_out, chunk)
        cols_p.append(prob[..., kr])
        cols_ds.append(ds[..., kr])
        dos.append(do)
    prob, ds, do = (torch.cat(x, dim=3) for x in (cols_p, cols_ds, dos))     # (B, Hkv, G, N, Rk | Dv)
    q = _tensor(inputs.q, p.dtype).reshape(p.B, p.Hkv, G, p.N, p.D)
    dk = (ds.transpose(-1, -2) @ (q * scale)).sum(dim=2)                    # GQA: summed over the group
    dv = (prob.transpose(-1, -2) @ do).sum(dim=2)
    dq = torch.cat(dq, dim=3).reshape(p.B, p.H, len(qr), p.D)
    return tuple(x.double().numpy() for x in (dq, dk, dv))
