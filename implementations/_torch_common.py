"""Shared plumbing for backends written in PyTorch: conversion, layouts, autograd.

A torch backend subclasses `TorchBackend` and implements one method,
`attention(q, k, v, *, mask, causal, scale, return_lse)`, on tensors already in
the problem's dtype, device and memory layout. Conversion happens in `prepare`,
outside the timed callable.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch

from attnbench.problem import Inputs, Problem, apply_layout
from attnbench.reference import AttentionInputError, normalize_causal

from ._validate import check_attention_args
from .base import Backend
from .kv_torch import KvReader
from .masks import as_4d


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """`x` (B, H, L, D) stored as `layout` (see `attnbench.problem.apply_layout`)."""
    return apply_layout(x, layout, contiguous=torch.Tensor.contiguous,
                        zeros=lambda *shape: torch.zeros(shape, dtype=x.dtype, device=x.device))


def to_tensors(inputs: Inputs, problem: Problem, device: str, *, requires_grad: bool = False):
    """(q, k, v, mask) as tensors in the problem's dtype/layout on `device`; a float mask in that dtype too."""
    dtype = torch_dtype(problem.dtype)

    def convert(x: np.ndarray) -> torch.Tensor:
        t = with_layout(torch.from_numpy(x).to(device=device, dtype=dtype), problem.layout)
        return t.requires_grad_(requires_grad)

    q, k, v = (convert(x) for x in (inputs.q, inputs.k, inputs.v))
    mask = None
    if inputs.mask is not None:
        m = as_4d(torch.from_numpy(np.asarray(inputs.mask)).to(device))      # (B|1, H|1, N|1, M|1)
        mask = m if m.dtype == torch.bool else m.to(dtype)
    return q, k, v, mask


def call_problem(q, k, v, mask, causal, scale, sizes) -> Problem:
    """The `Problem` a direct call describes, so it meets the same capability check as `prepare`."""
    B, H, Hkv, N, M, D, Dv = sizes
    contiguous = all(x.is_contiguous() for x in (q, k, v))
    mask_kind = None if mask is None else ("bool" if mask.dtype == torch.bool else "bias")
    return Problem(B=B, H=H, Hkv=Hkv, N=N, M=M, D=D, Dv=Dv, dtype=str(q.dtype).removeprefix("torch."),
                   causal=causal, mask=mask_kind, scale=scale, layout="contiguous" if contiguous else "strided")


class TorchBackend(KvReader, Backend):
    """A backend whose `attention` takes and returns torch tensors (and, where its capabilities declare a KV
    layout, reads it one sequence at a time: `kv_torch.KvReader`)."""

    @abstractmethod
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None,
                  causal: str | None, scale: float | None, return_lse: bool = False):
        """q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) -> O (B, H, N, Dv), or (O, lse (B, H, N))."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
                 causal: str | bool | None = None, scale: float | None = None, return_lse: bool = False):
        """The public entry for tensors: validate (shapes, dtypes, device, mask) first, then `attention`.

        q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) -> O (B, H, N, Dv), or (O, lse) with return_lse.
        """
        device = q.device.type if isinstance(q, torch.Tensor) else "cpu"
        caps = self.capabilities(device)
        sizes = check_attention_args(q, k, v, mask, causal=causal, scale=scale, dtypes=caps.dtypes, who=self.name)
        # The same capability check as `prepare`: an undeclared call is refused here, never half-run.
        reason = self.why_not(call_problem(q, k, v, mask, causal, scale, sizes), device)
        if reason:
            raise AttentionInputError(f"{self.name}: {reason}")
        if return_lse and not caps.lse:
            raise AttentionInputError(f"{self.name}: return_lse=True not supported (no log-sum-exp)")
        if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
            raise AttentionInputError(f"{self.name}: a float mask must have q's dtype {q.dtype}, got {mask.dtype}")
        return self.attention(q, k, v, mask=as_4d(mask), causal=normalize_causal(causal), scale=scale,
                              return_lse=return_lse)

    def prepare(self, inputs: Inputs, problem: Problem, *, device: str = "cpu",
                return_lse: bool = False) -> Callable[[], Any]:
        if inputs.kv is not None:
            return self.prepare_kv(inputs, problem, device, return_lse)
        q, k, v, mask = to_tensors(inputs, problem, device)
        causal, scale, mods = problem.causal, problem.scale, self.modifications(inputs, device)

        def run():
            with torch.no_grad():
                return self.attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse,
                                      **mods)

        run.native_inputs = (q, k, v)       # the check compares them with pristine copies after the call
        return run

    def prepare_backward(self, inputs: Inputs, problem: Problem, grad_out: np.ndarray, *,
                         device: str = "cpu") -> Callable[[], Any]:
        if inputs.kv is not None:
            return self.prepare_kv_backward(inputs, problem, grad_out, device)
        q, k, v, mask = to_tensors(inputs, problem, device, requires_grad=True)
        g = torch.from_numpy(grad_out).to(device=device, dtype=torch_dtype(problem.dtype))
        causal, scale, mods = problem.causal, problem.scale, self.modifications(inputs, device)
        leaves = (q, k, v)
        if self.capabilities(device).sink_grad and mods and mods["mods"].sinks is not None:
            sinks = mods["mods"].sinks.detach().clone().requires_grad_()        # (H,) float32: d sink too
            mods, leaves = {**mods, "mods": replace(mods["mods"], sinks=sinks)}, (q, k, v, sinks)

        def run():
            out = self.attention(q, k, v, mask=mask, causal=causal, scale=scale, **mods)
            return torch.autograd.grad(out, leaves, g)

        run.native_inputs, run.native_grad_out = (q, k, v), g
        return run

    def modifications(self, inputs: Inputs, device: str) -> dict:
        """Keyword arguments carrying the problem's modifications to `attention` ({} without any, so a backend
        that declares none keeps its signature): `mods`, converted once here, outside the timed call. A backend
        whose `attention` wants another form overrides this."""
        if not inputs.mods:
            return {}
        from .torch_mods import convert

        return {"mods": convert(inputs.mods, device)}

    def to_numpy(self, value) -> np.ndarray:
        return value.detach().to(device="cpu", dtype=torch.float64).numpy()

    def synchronize(self, device: str) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
