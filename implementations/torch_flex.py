"""torch_flex, torch_flex_compiled: torch.nn.attention.flex_attention, masks as mask_mod / score_mod.

FlexAttention (PyTorch >= 2.5) computes softmax(score_mod(Q K^T * scale)) V over
the blocks a `BlockMask` keeps. Causal alignments and bool masks are a mask_mod
predicate `(b, h, q_idx, kv_idx) -> bool` (the bool mask is indexed, not
copied per head), an additive bias is a score_mod, GQA is `enable_gqa`, and the
lse comes back through `AuxRequest(lse=True)`. The BlockMask is built in
`prepare`, outside the timed call, as a user of FlexAttention would build it once.

Modifications the FlexAttention way (attention-gym's mods): softcap and ALiBi
are score_mods (in the problem's order, before an additive bias), a sliding
window is a mask_mod (so the BlockMask skips the blocks outside it), and sinks,
which FlexAttention has no hook for, are applied exactly from its lse:
O' = O sigmoid(lse - sink), lse' = logaddexp(lse, sink).

KV layouts natively (`flex_kv`): a ragged batch is one call over the packed sequences whose block mask keeps each
sequence's own pairs (attention-gym's document masking, built from cu_seqlens; causal, windows and ALiBi
bottom-right per sequence in the same mask_mod / score_mod), a paged cache goes through FlexAttention's
`PagedAttention` (our block table as its page table, a key block per page), appended keys are written into a copy
of the cache. The eager variant computes every packed pair and masks (it ignores the block sparsity); the compiled
one skips the tiles across sequences, and reads pages through pad-and-mask (its key tiles are 16 keys or more, a
page may be 1).

`torch_flex` runs it unfused (eager); `torch_flex_compiled` runs
`torch.compile(flex_attention)`, the fused kernel FlexAttention is meant for.
Backward runs on CUDA only ("FlexAttention does not support backward on CPU").
On CPU (torch 2.13, 2 cores) the compiled one is declared unavailable: it passes
a causal problem, but it returns no lse there, a mask_mod indexing a bool mask
tensor fails in Inductor's C++ code generation, and compiling costs 13-30 s for
the first call and up to 5 s per new shape, dtype or mask. It is offered on CUDA.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from attnbench.reference import layouts as kv_layouts

from . import flex_kv, torch_mods
from ._torch_common import TorchBackend, to_tensors
from .base import Capabilities
from .kv_torch import native_kv
from .masks import as_4d, causal_offset
from .registry import register

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    HAS_FLEX = True
except ImportError:   # torch < 2.5
    HAS_FLEX = False
try:
    from torch.nn.attention.flex_attention import AuxRequest   # torch >= 2.9; `return_lse=` is deprecated there
except ImportError:
    AuxRequest = None

# Measured on the 2-core CPU machine with torch 2.13: why the compiled variant is not offered on CPU.
CPU_COMPILE_REASON = ("torch.compile(flex_attention) on CPU (torch 2.13, measured): no lse (\"CPU only supports "
                      "inference and return_lse is not supported yet\"), a C++ compile error for a mask_mod that indexes "
                      "a bool mask tensor, and 13-30 s to compile the first call, up to 5 s per new shape; "
                      "use torch_flex on CPU")


def _score_mods(mods, B: int, H: int, pos) -> list:
    """score_mods (score, b, h, q_idx, kv_idx) -> score for the softcap and ALiBi of `mods`, in their order; B: the
    sequences (per-batch slopes (B, H) are read at the query's sequence, `pos.sequence`)."""
    chain = []
    for key in mods.order:
        if key == "softcap":
            cap = mods.softcap
            chain.append(lambda score, b, h, q_idx, kv_idx: cap * torch.tanh(score / cap))
        else:
            slopes = mods.alibi.expand(B, H) if mods.alibi.ndim == 2 else mods.alibi.expand(1, H)
            per_batch = mods.alibi.ndim == 2
            chain.append(lambda score, b, h, q_idx, kv_idx:
                         score - slopes[pos.sequence(b, q_idx) if per_batch else 0, h].to(score.dtype)
                         * pos.distance(b, q_idx, kv_idx).abs().to(score.dtype))
    return chain


def _window_mod(window, pos):
    left, right = window

    def keep(b, h, q_idx, kv_idx):
        d = pos.distance(b, q_idx, kv_idx)
        inside = (d <= left) if left >= 0 else (d == d)
        return inside & (d >= -right) if right >= 0 else inside

    return keep


def flex_mods(mask, causal: str | None, B: int, H: int, N: int, M: int, mods=torch_mods.TorchMods(), pos=None):
    """(mask_mod or None, score_mod or None) for a bool/bias mask broadcastable to (B, H, N, M), a causal
    alignment and the modifications (`torch_mods.TorchMods`; sinks are applied after the call, `with_sinks`).
    pos: where pairs sit in their sequences (`flex_kv.Positions`; default a dense batch of N queries, M keys): a
    KV layout's packed or paged indices, its sequences bottom-right aligned, the same rules composed."""
    pos = flex_kv.dense_positions(N, M) if pos is None else pos
    predicates = [] if pos.same is None else [lambda b, h, q_idx, kv_idx: pos.same(b, q_idx, kv_idx)]
    if causal is not None:                        # kv_idx <= q_idx + offset, as a distance i + M - N - j
        floor = (M - N) - causal_offset(causal, N, M)
        predicates.append(lambda b, h, q_idx, kv_idx: pos.distance(b, q_idx, kv_idx) >= floor)
    if mods.window is not None:
        predicates.append(_window_mod(mods.window, pos))
    if mods.document is not None:                 # attention-gym's document mask, queries at key position i + M - N
        ids = mods.document
        predicates.append(lambda b, h, q_idx, kv_idx: ids[b, (q_idx + (M - N)).clamp(0, M - 1)] == ids[b, kv_idx])
    if mods.prefix_lm is not None:                # attention-gym's prefix_lm: or_masks(prefix, causal), bottom-right
        prefix = mods.prefix_lm
        predicates.append(lambda b, h, q_idx, kv_idx: (kv_idx < prefix) | (kv_idx <= q_idx + (M - N)))
    scores = _score_mods(mods, B, H, pos)
    if mask is not None:
        full = as_4d(mask).expand(B, H, N, M)                                # (B, H, N, M), a view: per-head rows
        if mask.dtype == torch.bool:
            predicates.append(lambda b, h, q_idx, kv_idx: full[b, h, q_idx, kv_idx])
        else:
            scores.append(lambda score, b, h, q_idx, kv_idx: score + full[b, h, q_idx, kv_idx])
    return _all_of(predicates), _chained(scores)


def _all_of(predicates):
    if not predicates:
        return None
    return functools.reduce(lambda f, g: lambda b, h, q, kv: f(b, h, q, kv) & g(b, h, q, kv), predicates)


def _chained(score_mods):
    if not score_mods:
        return None
    return functools.reduce(lambda f, g: lambda s, b, h, q, kv: g(f(s, b, h, q, kv), b, h, q, kv), score_mods)


def with_sinks(out, lse, sinks):
    """(O, lse) of a softmax whose denominator also holds exp(sink_h), from FlexAttention's O (B, H, N, Dv) and
    lse (B, H, N) over the keys alone: O sigmoid(lse - sink), logaddexp(lse, sink). Exact; an empty row (lse =
    -inf) keeps O = 0 and gets lse = sink. The factor and the product in float32 (lse's dtype), O rounded once
    more: in float16 a factor rounded first was a third rounding, 1.35x the budget on a drawn problem (M 1,
    peaked, ALiBi)."""
    sink = sinks.to(lse.dtype)[None, :, None]
    scaled = out.to(lse.dtype) * torch.sigmoid(lse - sink)[..., None]
    return scaled.to(out.dtype), torch.logaddexp(lse, sink)


def flex_call(fn, q, k, v, *, block_mask, score_mod, scale, return_lse):
    """O (B, H, N, Dv) [and lse (B, H, N)] from q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv)."""
    gqa = q.shape[1] != k.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # eager flex warns on every call that it is unfused; that is the point here
        if not return_lse:
            return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        if AuxRequest is None:
            return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa,
                      return_lse=True)
        out, aux = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa,
                      return_aux=AuxRequest(lse=True))
        return out, aux.lse


@functools.lru_cache(maxsize=None)
def compiled_flex():
    return torch.compile(flex_attention)


class TorchFlex(TorchBackend):
    """torch_flex: FlexAttention unfused (eager); masks by mask_mod, bias by score_mod (lse; grad on CUDA only)."""

    name = "torch_flex"
    devices = ("cpu", "cuda")
    # KV layouts natively: ragged as one packed call under a per-sequence block mask, paged through FlexAttention's
    # PagedAttention (`flex_kv`); appended keys written into a copy of the cache.
    caps = Capabilities(grad=True, lse=True, mods=torch_mods.SUPPORTED, kv_layouts=("dense", "ragged", "paged"),
                        kv_append=True)

    def unavailable_reason(self) -> str | None:
        return None if HAS_FLEX else f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs 2.5+)"

    def capabilities(self, device: str) -> Capabilities:
        # torch 2.13 raises "FlexAttention does not support backward on CPU" (eager and compiled alike).
        return self.caps.replace(grad=False) if device == "cpu" else self.caps

    def flex(self):
        return flex_attention

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False, block_mask=None, score_mod=None,
                  mods=torch_mods.TorchMods()):
        if block_mask is None and score_mod is None:
            block_mask, score_mod = self._mods(q, k, mask, causal, mods)
        if mods.sinks is None:
            return flex_call(self.flex(), q, k, v, block_mask=block_mask, score_mod=score_mod, scale=scale,
                             return_lse=return_lse)
        out, lse = with_sinks(*flex_call(self.flex(), q, k, v, block_mask=block_mask, score_mod=score_mod,
                                         scale=scale, return_lse=True), mods.sinks)
        return (out, lse) if return_lse else out

    @staticmethod
    def _mods(q, k, mask, causal, mods=torch_mods.TorchMods()):
        B, H, N, M = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        mask_mod, score_mod = flex_mods(mask, causal, B, H, N, M, mods)
        per_head = mask is not None and as_4d(mask).shape[1] != 1
        per_batch = (mask is not None and as_4d(mask).shape[0] != 1) or mods.document is not None
        block_mask = None if mask_mod is None else create_block_mask(mask_mod, B if per_batch else None,
                                                                     H if per_head else None, N, M, device=q.device)
        return block_mask, score_mod

    # --- KV layouts (`flex_kv`): the block mask and score_mod built once, outside the timed call ----------------
    def prepare_kv(self, inputs, problem, device, return_lse):
        call = self.kv_call(inputs, problem, device)

        def run():
            with torch.no_grad():
                return call(return_lse)
        run.native_kv = call.native_kv          # the check compares them with the storage after the call
        return run

    def prepare_kv_backward(self, inputs, problem, grad_out, device):
        call = self.kv_call(inputs, problem, device, requires_grad=True)
        g = torch.as_tensor(np.asarray(grad_out)).to(device=device, dtype=call.leaves[0].dtype)

        def run():
            return torch.autograd.grad(call(False), call.leaves, g)
        run.native_kv, run.native_grad_out = call.native_kv, g
        return run

    def kv_call(self, inputs, problem, device, *, requires_grad=False):
        """call(return_lse) -> O in the layout's physical shape [and lse]: (total_q, H, Dv) and (H, total_q) for
        ragged queries, (B, H, N, Dv) and (B, H, N) for a cache; `call.leaves`: q, k, v as given."""
        tensors = self.kv_tensors(inputs, problem, device, requires_grad=requires_grad)
        mods = self.modifications(inputs, device).get("mods", torch_mods.TorchMods())

        def flex(q, k, v, block_mask, score_mod, return_lse):
            return self.attention(q, k, v, mask=None, causal=None, scale=problem.scale, return_lse=return_lse,
                                  block_mask=block_mask, score_mod=score_mod, mods=mods)

        build = {"ragged": self._ragged_call, "paged": self._paged_call}.get(kv_layouts.parse(problem.kv).key,
                                                                             self._cache_call)
        call = build(flex, inputs.kv, problem, mods, *tensors, device=device)
        call.leaves, call.native_kv = tensors[:3], native_kv(tensors)
        return call

    @staticmethod
    def _ragged_call(flex, storage, problem, mods, q, k, v, k_new, v_new, cache, cu_q, *, device):
        """Packed q (total_q, H, D) against packed k, v (total_k, Hkv, .): one flex call under a block mask of
        each sequence's own pairs."""
        cu_k = torch.as_tensor(storage.cu_seqlens_k, device=device)
        total_q, total_k = q.shape[0], k.shape[0]
        mask_mod, score_mod = flex_mods(None, problem.causal, problem.B, problem.H, total_q, total_k, mods,
                                        flex_kv.ragged_positions(cu_q, cu_k))
        block_mask = create_block_mask(mask_mod, None, None, total_q, total_k, device=device)

        def call(return_lse):
            if problem.append:
                k_all, v_all = (flex_kv.append_ragged(x, new, cu_k, cache) for x, new in ((k, k_new), (v, v_new)))
            else:
                k_all, v_all = k, v
            result = flex(*(x.transpose(0, 1)[None] for x in (q, k_all, v_all)), block_mask, score_mod, return_lse)
            out, lse = result if return_lse else (result, None)             # (1, H, total_q, Dv), (1, H, total_q)
            return (out[0].transpose(0, 1), lse[0]) if return_lse else out[0].transpose(0, 1)
        return call

    @staticmethod
    def _cache_mods(problem, mods, cache):
        """(M_b (B,), mask_mod, score_mod) of dense queries against each sequence's cache of M_b keys."""
        seq_k = cache.long() + problem.append
        mask_mod, score_mod = flex_mods(None, problem.causal, problem.B, problem.H, problem.N, problem.M, mods,
                                        flex_kv.cache_positions(problem.N, seq_k))
        return seq_k, mask_mod, score_mod

    def _paged_call(self, flex, storage, problem, mods, q, k, v, k_new, v_new, cache, cu_q, *, device):
        """q (B, H, N, D) against the page pool (num_pages, page_size, Hkv, .) through `PagedAttention`."""
        seq_k, mask_mod, score_mod = self._cache_mods(problem, mods, cache)
        paged = flex_kv.PagedView.build(torch.as_tensor(storage.block_table, device=device), seq_k,
                                        num_pages=k.shape[0], page_size=k.shape[1])
        logical = create_block_mask(mask_mod, problem.B, None, problem.N, paged.max_logical, device=device,
                                    BLOCK_SIZE=(128, k.shape[1]))         # a key block per page: the helper's rule
        block_mask = paged.pages.convert_logical_block_mask(logical, kv_len=seq_k)
        score_mod = None if score_mod is None else paged.pages.get_score_mod(score_mod, kv_len=seq_k)

        def call(return_lse):
            k_pool, v_pool = paged.pool(k), paged.pool(v)                              # (1, Hkv, S, D|Dv)
            if problem.append:
                k_pool, v_pool = paged.append(k_pool, v_pool, k_new, v_new, cache)
            return flex(q, k_pool, v_pool, block_mask, score_mod, return_lse)
        return call

    def _cache_call(self, flex, storage, problem, mods, q, k, v, k_new, v_new, cache, cu_q, *, device):
        """q (B, H, N, D) against a dense cache (B, Hkv, M, .) that the appended keys fill."""
        seq_k, mask_mod, score_mod = self._cache_mods(problem, mods, cache)
        block_mask = create_block_mask(mask_mod, problem.B, None, problem.N, problem.M, device=device)

        def call(return_lse):
            k_all, v_all = flex_kv.append_dense(k, k_new, cache), flex_kv.append_dense(v, v_new, cache)
            return flex(q, k_all, v_all, block_mask, score_mod, return_lse)
        return call

    def prepare(self, inputs, problem, *, device="cpu", return_lse=False):
        if inputs.kv is not None:
            return self.prepare_kv(inputs, problem, device, return_lse)
        q, k, v, mask = to_tensors(inputs, problem, device)
        mods = self.modifications(inputs, device).get("mods", torch_mods.TorchMods())
        block_mask, score_mod = self._mods(q, k, mask, problem.causal, mods)
        scale = problem.scale

        def run():
            with torch.no_grad():
                return self.attention(q, k, v, mask=None, causal=None, scale=scale, return_lse=return_lse,
                                      block_mask=block_mask, score_mod=score_mod, mods=mods)

        return run


class TorchFlexCompiled(TorchFlex):
    """torch_flex_compiled: torch.compile(flex_attention), the fused kernel (CUDA; CPU compiles too slowly)."""

    name = "torch_flex_compiled"

    def device_unavailable_reason(self, device: str) -> str | None:
        if device == "cpu":
            return CPU_COMPILE_REASON
        return super().device_unavailable_reason(device)

    def capabilities(self, device: str) -> Capabilities:
        # PagedAttention needs a key block of one page; the fused kernel's key tiles are 16 or more keys, so pages
        # of 1 (and untested sizes) cannot be its blocks: paged caches go through pad-and-mask here.
        return super().capabilities(device).replace(kv_layouts=("dense", "ragged"))

    def flex(self):
        return compiled_flex()


register(TorchFlex)
register(TorchFlexCompiled)
