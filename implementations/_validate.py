"""The one argument check every backend entry point runs before doing any work.

    check_attention_args(q, k, v, mask, causal=..., scale=..., dtypes=..., who=...) -> (B, H, Hkv, N, M, D, Dv)
    check_prepare(backend, inputs, problem, device, need_grad=...)

Works on NumPy arrays and torch tensors alike (it reads only .shape, .ndim, .dtype, .device), so it never
converts or copies. Errors are `attnbench.reference.AttentionInputError` (a ValueError) naming the argument
and showing the shapes, as the reference's own checks do (whose q/k/v shape rules it reuses).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from attnbench.problem import DTYPES
from attnbench.reference import AttentionInputError, normalize_causal
from attnbench.reference import layouts as kv_layouts
from attnbench.reference._checks import check_qkv


def _dtype_name(x) -> str:
    return str(x.dtype).removeprefix("torch.")


def _is_bool(x) -> bool:
    return _dtype_name(x) in ("bool", "bool_")


def _is_float(x) -> bool:
    return _dtype_name(x) in DTYPES


def check_attention_args(q, k, v, mask=None, *, causal=None, scale=None, dtypes=None, who: str = "attention"):
    """Validate q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv), mask and options; return the sizes.

    dtypes: the dtype names the caller supports (None: any float). mask: None, bool (True = attend) or a float
    bias, broadcastable to (B, H, N, M).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise AttentionInputError(f"{who}: {name} must be an array or tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise AttentionInputError(f"{who}: {name} must have rank 4 (B, H, L, D), got shape {tuple(x.shape)}")
        if math.prod(x.shape) == 0:
            raise AttentionInputError(f"{who}: {name} is empty, shape {tuple(x.shape)}")
        if not _is_float(x):
            raise AttentionInputError(f"{who}: {name} must be floating point, got dtype {_dtype_name(x)}")
    names = {n: _dtype_name(x) for n, x in (("q", q), ("k", k), ("v", v))}
    if len(set(names.values())) > 1:
        raise AttentionInputError(f"{who}: q, k, v must share one dtype, got {names}")
    if dtypes is not None and names["q"] not in dtypes:
        raise AttentionInputError(f"{who}: dtype {names['q']} not supported (supports {', '.join(dtypes)})")
    devices = {n: str(x.device) for n, x in (("q", q), ("k", k), ("v", v)) if hasattr(x, "device")}
    if len(set(devices.values())) > 1:
        raise AttentionInputError(f"{who}: q, k, v must be on one device, got {devices}")
    try:
        # check_qkv reads only .shape; plain tuples print as (1, 2, 5, 8), not torch.Size([1, 2, 5, 8]).
        B, H, Hkv, N, M, D, Dv = check_qkv(*(SimpleNamespace(shape=tuple(x.shape)) for x in (q, k, v)))
    except AttentionInputError as exc:
        raise AttentionInputError(f"{who}: {exc}") from None
    if mask is not None:
        if not (_is_bool(mask) or _is_float(mask)):
            raise AttentionInputError(f"{who}: mask must be bool (True = attend) or a float bias, "
                                      f"got dtype {_dtype_name(mask)}")
        shape = (B, H, N, M)
        try:
            ok = mask.ndim <= 4 and np.broadcast_shapes(tuple(mask.shape), shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise AttentionInputError(f"{who}: mask shape {tuple(mask.shape)} does not broadcast to "
                                      f"(B, H, N, M) = {shape} (q {tuple(q.shape)}, k {tuple(k.shape)})")
    try:
        normalize_causal(causal)
    except AttentionInputError as exc:
        raise AttentionInputError(f"{who}: {exc}") from None
    if scale is not None and not (isinstance(scale, (int, float, np.floating, np.integer))
                                  and math.isfinite(float(scale))):
        raise AttentionInputError(f"{who}: scale must be a finite number or None, got {scale!r}")
    return B, H, Hkv, N, M, D, Dv


def check_prepare(backend, inputs, problem, device: str, *, need_grad: bool = False) -> None:
    """Before `prepare` converts anything: inputs match `problem`, and `backend` supports it on `device`."""
    who = f"{backend.name}.prepare"
    check_attention_args(inputs.q, inputs.k, inputs.v, inputs.mask, causal=problem.causal, scale=problem.scale,
                         who=who)
    p = problem
    want = {"q": (p.B, p.H, p.N, p.D), "k": (p.B, p.Hkv, p.M, p.D), "v": (p.B, p.Hkv, p.M, p.Dv)}
    got = {name: tuple(getattr(inputs, name).shape) for name in want}
    if got != want:
        raise AttentionInputError(f"{who}: inputs do not match problem {p.id}: expected shapes {want}, got {got}")
    if kv_layouts.needs_storage(p):
        kv_layouts.validate(inputs.kv, p, who)
    reason = backend.why_not(problem, device, need_grad=need_grad)
    if reason:
        raise AttentionInputError(f"{who}: cannot run {p.id} on {device}: {reason}")
