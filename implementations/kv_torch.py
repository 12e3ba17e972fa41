"""KV layouts read natively by a torch backend: one sequence at a time, its keys gathered through the layout.

For each sequence b the queries are its rows of q (packed ragged: cu_seqlens_q[b]:cu_seqlens_q[b + 1]), its keys
are gathered from the cache's slots (packed: cu_seqlens_k[b] + t; paged: page block_table[b, t // page_size],
offset t % page_size) and, with appended keys, k_new[b] is written into a copy of the cache at cache_seqlens[b]
first (flash_attn_with_kvcache writes in place; the caller's cache stays as it was), then the backend's own dense
`attention` runs on that one sequence: N_b queries against M_b keys, so causal, windows and ALiBi are bottom-right
in the sequence by construction. vLLM's reference paged attention (`ref_single_query_cached_kv_attention` in its
tests) reads pages the same way. Gathers are differentiable: the backward is autograd through them (ragged).

Each addressing step is a method (`query_span`, `key_slots`, `append_at`), so the mutation twin's mutants can
plant one bug in exactly one of them. Layout conventions: `attnbench.reference.layouts`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from attnbench.problem import Inputs, Problem
from attnbench.reference import layouts as kv_layouts


class KvReader:
    """Mixin of `TorchBackend`: `prepare_kv` / `prepare_kv_backward` for a backend whose capabilities declare the
    layout (`Capabilities.kv_layouts`, `kv_append`)."""

    # --- addressing: the steps a mutant may override -----------------------------------------------------------
    def query_span(self, cu_q: torch.Tensor, b: int) -> slice:
        """Sequence b's rows of packed queries."""
        return slice(int(cu_q[b]), int(cu_q[b + 1]))

    def key_slots(self, layout, geometry, b: int, t: torch.Tensor) -> torch.Tensor:
        """Flat slots (`layout.flat`) of keys t of sequence b: packed at cu_seqlens_k[b] + t, paged through the
        block table, dense at b M + t."""
        return torch.as_tensor(layout.slots(geometry, b, t.cpu().numpy()), device=t.device)

    def append_at(self, cache_seqlens: torch.Tensor, b: int) -> int:
        """Where sequence b's new keys go in its cache: after the cache_seqlens[b] keys it holds."""
        return int(cache_seqlens[b])

    # --- one sequence ----------------------------------------------------------------------------------------------
    def sequence_kv(self, problem: Problem, flat_k, flat_v, new_k, new_v, cache_seqlens, b: int):
        """(K_b (1, Hkv, M_b, D), V_b (1, Hkv, M_b, Dv)) of sequence b: append into a copy, then read its slots."""
        layout, g = kv_layouts.parse(problem.kv), kv_layouts.geometry(problem)
        device = flat_k.device
        if problem.append:
            at = self.append_at(cache_seqlens, b)
            slots = self.key_slots(layout, g, b, torch.arange(at, at + problem.append, device=device))
            flat_k, flat_v = flat_k.index_copy(0, slots, new_k[b]), flat_v.index_copy(0, slots, new_v[b])
        slots = self.key_slots(layout, g, b, torch.arange(int(g.seq_k[b]), device=device))
        return flat_k[slots].transpose(0, 1)[None], flat_v[slots].transpose(0, 1)[None]

    def attention_kv(self, problem: Problem, q, k, v, new_k, new_v, cache_seqlens, cu_q, *, causal, scale,
                     return_lse: bool = False, mods=None):
        """O in the layout's physical shape (and lse) from the physical tensors: each sequence alone."""
        layout = kv_layouts.parse(problem.kv)
        flat_k, flat_v = layout.flat(k), layout.flat(v)
        outs, lses = [], []
        for b in range(problem.B):
            qb = q[self.query_span(cu_q, b)].transpose(0, 1)[None] if layout.ragged_queries else q[b:b + 1]
            kb, vb = self.sequence_kv(problem, flat_k, flat_v, new_k, new_v, cache_seqlens, b)
            extra = {} if mods is None else {"mods": _batch_mods(mods, b)}
            result = self.attention(qb, kb, vb, mask=None, causal=causal, scale=scale, return_lse=return_lse,
                                    **extra)
            out, lse = result if return_lse else (result, None)
            outs.append(out[0].transpose(0, 1) if layout.ragged_queries else out)   # (N_b, H, Dv) or (1, H, N, Dv)
            lses.append(None if lse is None else lse[0] if layout.ragged_queries else lse)   # (H, N_b), (1, H, N)
        out = torch.cat(outs, dim=0)
        return (out, torch.cat(lses, dim=-1 if layout.ragged_queries else 0)) if return_lse else out

    # --- prepare ---------------------------------------------------------------------------------------------------
    def kv_tensors(self, inputs: Inputs, problem: Problem, device: str, *, requires_grad: bool = False):
        """(q, k, v, k_new, v_new, cache_seqlens, cu_seqlens_q) of `inputs.kv` as tensors in the problem's dtype."""
        from ._torch_common import torch_dtype

        dtype, s = torch_dtype(problem.dtype), inputs.kv

        def tensor(x, grad=False):
            if x is None:
                return None
            t = torch.from_numpy(np.asarray(x)).to(device=device, dtype=dtype)
            return t.requires_grad_(grad)

        ints = [None if x is None else torch.from_numpy(np.asarray(x)).to(device) for x in
                (s.cache_seqlens, s.cu_seqlens_q)]
        return (*(tensor(x, requires_grad) for x in (s.q, s.k, s.v)), tensor(s.k_new), tensor(s.v_new), *ints)

    def prepare_kv(self, inputs: Inputs, problem: Problem, device: str, return_lse: bool):
        tensors = self.kv_tensors(inputs, problem, device)
        mods = self.modifications(inputs, device).get("mods")

        def run():
            with torch.no_grad():
                return self.attention_kv(problem, *tensors, causal=problem.causal, scale=problem.scale,
                                         return_lse=return_lse, mods=mods)
        run.native_kv = native_kv(tensors)      # the check compares them with the storage after the call
        return run

    def prepare_kv_backward(self, inputs: Inputs, problem: Problem, grad_out: np.ndarray, device: str):
        from ._torch_common import torch_dtype

        tensors = self.kv_tensors(inputs, problem, device, requires_grad=True)
        g = torch.from_numpy(np.asarray(grad_out)).to(device=device, dtype=torch_dtype(problem.dtype))
        mods = self.modifications(inputs, device).get("mods")
        leaves = tensors[:3]
        if self.capabilities(device).sink_grad and mods is not None and mods.sinks is not None:
            sinks = mods.sinks.detach().clone().requires_grad_()          # (H,) float32: d sink too, summed over
            mods, leaves = replace(mods, sinks=sinks), (*leaves, sinks)   # every sequence's rows

        def run():
            out = self.attention_kv(problem, *tensors, causal=problem.causal, scale=problem.scale, mods=mods)
            return torch.autograd.grad(out, leaves, g)
        run.native_kv, run.native_grad_out = native_kv(tensors), g
        return run


def native_kv(tensors) -> dict:
    """{name: tensor} of `KvReader.kv_tensors`' converted storage (q, k, v, k_new, v_new), for the call's contract:
    in float32 and half types they are copies the caller's storage never sees, so a kernel writing them (a
    scratch buffer that was the input, appended keys written into the cache itself) shows only there."""
    return {n: t for n, t in zip(("q", "k", "v", "k_new", "v_new"), tensors) if t is not None}


def _batch_mods(mods, b: int):
    """The torch modifications of sequence b alone: per-batch ALiBi slopes (B, H) -> its row (1, H), document ids
    (B, M) -> its row (1, M) (documents reach here only with a dense cache: other layouts refuse them)."""
    if mods.alibi is not None and mods.alibi.ndim == 2:
        mods = replace(mods, alibi=mods.alibi[b:b + 1])
    if mods.document is not None:
        mods = replace(mods, document=mods.document[b:b + 1])
    return mods
