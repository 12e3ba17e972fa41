"""The naive yardstick of budget condition 2: the plain formula computed in the problem's own dtype.

    S = mods((scale Q) K^T)    P = exp(S - rowmax) / rowsum    O = P V    (dQ, dK, dV by torch autograd)

(modifications as the reference applies them, `attnbench.reference.mods.apply`, on tensors in the dtype: causal
and the input mask among them, a float bias added in the dtype (dtype-representable by construction); a sink is
one more column of the softmax, in the dtype)

every tensor held in the dtype (torch on CPU), on chosen rows only. Every quantity of a query row depends on
that row alone, so the rows of O and dQ are the rows of the full computation. dK and dV of a key row sum over
every query: autograd runs over query chunks (O(chunk · M) memory) and the chunks' gradients are summed. The
core owns this (no backend is imported), so a backend under test is never its own yardstick.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims, R rows.
"""
from __future__ import annotations

import numpy as np
import torch

from attnbench.reference import mods as modifications
from attnbench.reference.block import block_of

# Query rows per chunk: keeps one (B, H, chunk, M) score tile near 2^22 elements under autograd (which holds
# every intermediate of the chunk until its gradient is taken).
CHUNK_ELEMENTS = 1 << 22
# The forward keeps no graph, so a chunk four times larger (S, exp, P: 2^24 elements of 2 bytes each, 32 MiB
# apiece in float16/bfloat16): a CPU GEMM of a few rows is several times slower per row than one of 11 or more
# (bfloat16 P V, M 131,073, D 128, one head: 0.019 s per row at 4 rows, 0.0044 at 11), and the issue-19 decode
# problem (H 8, M 131,073) fits 16 rows in one chunk instead of 4.
FORWARD_CHUNK_ELEMENTS = 1 << 24
# Bytes of K^T per GEMM of `_grouped_rows` (below torch's 2 GiB cliff for float16 CPU matmuls).
GEMM_COLUMN_BYTES = 1 << 30
# Keys per step of the blocked transpose of K (`_key_transpose`).
TRANSPOSE_KEYS = 1024


def _tensor(x: np.ndarray, dtype: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))


def _plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mods=(), block=None,
           sinks: torch.Tensor | None = None, *, kt: torch.Tensor | None = None):
    """O (B, Hkv, G, R, Dv) of grouped query rows q (B, Hkv, G, R, D) against k (B, Hkv, 1, M, D),
    v (B, Hkv, 1, M, Dv) with the bound modifications `mods` of `block` (those rows, every key; the input mask
    among them), all in one dtype. sinks: the sink logits (H,) as a tensor in the dtype (a leaf for their
    gradient) in place of the bound ones.

    kt: K^T (B, Hkv, 1, D, M) contiguous (`_key_transpose`: float16, bfloat16), made once for every chunk (the
    forward, without autograd); then Q K^T is one GEMM of the G R rows of a group against it and P V is taken
    one head of the group at a time, as the broadcast matmul runs them (a bmm per (batch, head)) but without the
    copies of K and V it makes for each of the G heads of every chunk (seconds at M 131,073). The same bits
    (`tests/test_naive.py`): a row of Q K^T (a length-D reduction) does not depend on the rows beside it, while
    P V's length-M reduction is blocked by the GEMM's row count, so it keeps the broadcast formula's shapes."""
    # Scale q first: in float16, Q K^T can overflow 65504 where scale * Q K^T does not.
    s = (q * scale) @ k.transpose(-1, -2) if kt is None else _grouped_rows(q * scale, kt)
    if mods:
        s = modifications.apply(s, mods, block, torch)
    sink = modifications.sink_logits(mods, block) if mods else None
    if sink is not None:                                   # one more column, of value 0: only the denominator
        sink = torch.as_tensor(sink, dtype=s.dtype) if sinks is None else sinks.reshape(1, *s.shape[1:3], 1)
        column = sink[..., None].expand(*s.shape[:-1], 1)
        s = torch.cat([s, column], dim=-1)
    row_max = s.amax(dim=-1, keepdim=True)
    shift = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max).detach()
    e = torch.exp(s - shift)
    total = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(total > 0, total, torch.ones_like(total))            # an empty row: P = 0, not 0/0
    p = p[..., :-1] if sink is not None else p
    return p @ v if kt is None else _per_head(p, v)


def _key_transpose(k: np.ndarray, dtype: str) -> torch.Tensor | None:
    """K^T (B, Hkv, 1, D, M) contiguous in `dtype` from float64 k (B, Hkv, M, D), for float16 and bfloat16,
    whose CPU bmm copies a transposed (or broadcast) operand to a contiguous one on every call: once here
    instead, the same bits. None for float32 and float64: their GEMMs read the broadcast view without a copy
    (fast already), and a contiguous copy or a per-head call (a GEMV for one row) would sum in another order,
    hence other bits.

    Converted and transposed TRANSPOSE_KEYS keys at a time: a whole-tensor transpose of 2-byte elements strides
    through M D elements per column (0.13 s at M 131,073, D 128; blocked 0.05 s). The values are exact either
    way (the inputs are representable in the dtype)."""
    if dtype not in ("float16", "bfloat16"):
        return None
    k64 = torch.from_numpy(np.ascontiguousarray(k))
    B, Hkv, M, D = k64.shape
    kt = torch.empty((B, Hkv, D, M), dtype=getattr(torch, dtype))
    for start in range(0, M, TRANSPOSE_KEYS):
        kt[..., start:start + TRANSPOSE_KEYS] = k64[:, :, start:start + TRANSPOSE_KEYS].to(kt.dtype).transpose(-1, -2)
    return kt.unsqueeze(2)


def _grouped_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, Hkv, G, R, X) @ b (B, Hkv, 1, X, Y) -> (B, Hkv, G, R, Y) as one GEMM of G R rows per (batch, KV
    head): for a short reduction (X = D), whose row results do not depend on the rows beside them.

    Columns GEMM_COLUMN_BYTES of b at a time: torch's CPU float16 matmul falls off a cliff once an operand
    reaches 2 GiB (one row against K^T of 2^23 keys, D 128: 79 s, against 2^22 keys 0.24 s; oneDNN's reference
    kernel), which the offsets past 2^31 case (`conformance/long_cases.py`) hits. Each element is the same
    length-X reduction whichever columns sit beside it, so the bits are those of one call."""
    B, Hkv, G, R, X = a.shape
    rows = a.reshape(B, Hkv, 1, G * R, X)
    step = max(1, GEMM_COLUMN_BYTES // (b.element_size() * X * B * Hkv))
    if b.shape[-1] <= step:
        return (rows @ b).reshape(B, Hkv, G, R, b.shape[-1])
    return torch.cat([rows @ b[..., i:i + step] for i in range(0, b.shape[-1], step)],
                     dim=-1).reshape(B, Hkv, G, R, b.shape[-1])


def _per_head(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, Hkv, G, R, X) @ b (B, Hkv, 1, X, Y) -> (B, Hkv, G, R, Y), one head g at a time (no copy of b)."""
    if a.shape[2] == 1:
        return a @ b
    return torch.cat([a[:, :, g:g + 1] @ b for g in range(a.shape[2])], dim=2)


def _operands(inputs, problem, rows: np.ndarray, *, requires_grad: bool = False):
    """(q rows grouped (B, Hkv, G, R, D), scale, the modifications' keyword arguments of `_plain`) in the
    problem's dtype."""
    p = problem
    G = p.H // p.Hkv
    q = _tensor(inputs.q[:, :, rows], p.dtype).reshape(p.B, p.Hkv, G, len(rows), p.D)
    scale = p.D ** -0.5 if p.scale is None else p.scale
    mods = dict(mods=inputs.reference_mods(p), block=block_of(rows, np.arange(p.M), p.N, p.M, p.H, p.Hkv))
    return q.requires_grad_(requires_grad), scale, mods


def _chunks(problem, rows: np.ndarray, elements: int = CHUNK_ELEMENTS):
    size = max(1, elements // (problem.B * problem.H * problem.M))
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def naive_forward(inputs, problem, rows: np.ndarray | None = None) -> np.ndarray:
    """O (B, H, R, Dv) float64 of the plain formula in the problem's dtype at query `rows` (None: all N)."""
    p = problem
    rows = np.arange(p.N) if rows is None else np.asarray(rows)
    kt = _key_transpose(inputs.k, p.dtype)
    k = None if kt is not None else _tensor(inputs.k, p.dtype).unsqueeze(2)       # K^T serves in its place
    v = _tensor(inputs.v, p.dtype).unsqueeze(2)
    outs = []
    with torch.no_grad():
        for chunk in _chunks(p, rows, FORWARD_CHUNK_ELEMENTS):
            q, scale, mods = _operands(inputs, p, chunk)
            outs.append(_plain(q, k, v, scale, **mods, kt=kt))
    return torch.cat(outs, dim=3).reshape(p.B, p.H, len(rows), p.Dv).double().numpy()


def naive_backward(inputs, problem, grad_out: np.ndarray, query_rows: np.ndarray | None = None,
                   key_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dQ (B, H, Rq, D), dK (B, Hkv, Rk, D), dV (B, Hkv, Rk, Dv)) float64: torch autograd through the plain
    formula in the dtype. With more queries than one chunk, dK and dV are the float64 sum of the chunks'
    gradients (each rounded to the dtype once): a few more roundings than one pass, so the yardstick is, if
    anything, looser at length, never stricter."""
    p = problem
    qr = np.arange(p.N) if query_rows is None else np.asarray(query_rows)
    kr = np.arange(p.M) if key_rows is None else np.asarray(key_rows)
    k = _tensor(inputs.k, p.dtype).unsqueeze(2).requires_grad_()
    v = _tensor(inputs.v, p.dtype).unsqueeze(2).requires_grad_()
    dq = np.zeros((p.B, p.H, p.N, p.D))
    dk = np.zeros((p.B, p.Hkv, len(kr), p.D))
    dv = np.zeros((p.B, p.Hkv, len(kr), p.Dv))
    for chunk in _chunks(p, np.arange(p.N)):
        q, scale, mods = _operands(inputs, p, chunk, requires_grad=True)
        out = _plain(q, k, v, scale, **mods)
        do = _tensor(grad_out[:, :, chunk], p.dtype).reshape(out.shape)
        gq, gk, gv = torch.autograd.grad(out, (q, k, v), do)
        dq[:, :, chunk] = gq.reshape(p.B, p.H, len(chunk), p.D).double().numpy()
        dk += gk[:, :, 0, kr].double().numpy()
        dv += gv[:, :, 0, kr].double().numpy()
    return dq[:, :, qr], dk, dv


def naive_sink_grad(inputs, problem, grad_out: np.ndarray) -> np.ndarray:
    """d sink (H,) float64 of the plain formula in the dtype (the sink logits rounded to it): torch autograd, the
    chunks' gradients summed in float64 like dK, dV in `naive_backward`."""
    p = problem
    k, v = _tensor(inputs.k, p.dtype).unsqueeze(2), _tensor(inputs.v, p.dtype).unsqueeze(2)
    logits = next(m for m in inputs.mods if m.key == "sinks").logits
    sinks = _tensor(np.asarray(logits, dtype=np.float64), p.dtype).requires_grad_()
    dsink = np.zeros(p.H)
    for chunk in _chunks(p, np.arange(p.N)):
        q, scale, mods = _operands(inputs, p, chunk)
        out = _plain(q, k, v, scale, **mods, sinks=sinks)
        do = _tensor(grad_out[:, :, chunk], p.dtype).reshape(out.shape)
        dsink += torch.autograd.grad(out, sinks, do)[0].double().numpy()
    return dsink
