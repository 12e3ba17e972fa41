"""hf_sdpa, hf_eager: transformers' attention functions, called as a transformers model calls them.

Both take a module object (read for `num_key_value_groups`, `is_causal`, `training`), q (B, H, N, D),
k (B, Hkv, M, D), v (B, Hkv, M, Dv) and an `attention_mask`, and return (O (B, N, H, Dv), weights or None);
the adapter passes a small module that says H // Hkv and eval mode, and transposes O back to (B, H, N, Dv).

hf_sdpa: `transformers.integrations.sdpa_attention.sdpa_attention_forward`, torch SDPA underneath.
    Causal is `is_causal=` (top-left; with a mask transformers drops is_causal, so no mask with causal);
    bool (True = attend) and additive float masks pass through; grouped heads by enable_gqa or repeat_kv.
hf_eager: `transformers.models.llama.modeling_llama.eager_attention_forward`, the explicit formula
    softmax(float32)((Q Kᵀ) * scaling + mask) V. It takes only an additive float mask, so causal and bool
    masks become the mask transformers' `masking_utils.eager_mask` builds: 0 where attended, finfo(dtype).min
    elsewhere (bias masks keep their values, with finfo.min where causal hides a key). Its findings:
    - Q Kᵀ is formed in the input dtype and scaled afterwards, so with large logits float16 overflows 65504 to
      inf and the row to NaN, and bfloat16 errs by 2.2 (the plain formula: 1e-7): large-logit inputs in half
      precision are not declared (skipped with that reason);
    - on ordinary float16 inputs the same order costs up to 2.9x the plain formula's error (1.0-1.5x typical):
      the known deviation `hf_eager_f16_unscaled_logits`;
    - float64 inputs come back float32-accurate (softmax forced to float32): float64 is not declared;
    - a row with every key masked averages V instead of giving 0 (finfo.min is finite): not declared.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims.
"""
from __future__ import annotations

import functools

import torch

from attnbench.deviations import KnownDeviation
from attnbench.implementations import Capabilities, TorchBackend, register
from attnbench.implementations.masks import causal_keep

INSTALL = "pip install 'attnbench[peers]' (transformers >= 5)"


@functools.cache
def _functions():
    """(sdpa_attention_forward, eager_attention_forward), or the import error's text."""
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.models.llama.modeling_llama import eager_attention_forward
    except ImportError as exc:
        return f"transformers not importable ({exc}); {INSTALL}"
    return sdpa_attention_forward, eager_attention_forward


def transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


class AttentionModule(torch.nn.Module):
    """The module object transformers' attention functions read: H // Hkv, causal flag, eval mode (no dropout)."""

    def __init__(self, groups: int, is_causal: bool):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = is_causal
        self.train(False)


class _Transformers(TorchBackend):
    devices = ("cpu", "cuda")

    def unavailable_reason(self) -> str | None:
        found = _functions()
        return found if isinstance(found, str) else None

    @property
    def function(self):
        return _functions()[self.index]


@register
class HfSdpa(_Transformers):
    """hf_sdpa: transformers' sdpa_attention_forward (torch SDPA; top-left causal; bool/float masks; grad)."""

    name = "hf_sdpa"
    index = 0
    caps = Capabilities(causal=("top_left",), mask_with_causal=False, grad=True)

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        module = AttentionModule(q.shape[1] // k.shape[1], causal is not None)
        out, _ = self.function(module, q, k, v, mask, scaling=scale, is_causal=causal is not None)
        return out.transpose(1, 2)                                               # (B, H, N, Dv)


# float64 leaves the list on purpose: the softmax is forced to float32, so float64 inputs come back float32-accurate.
EAGER_DTYPES = ("float16", "bfloat16", "float32")
EAGER_NOT_FLOAT64 = ("float64 not supported: eager_attention_forward computes the softmax in float32 "
                     "(dtype=torch.float32), so float64 inputs come back float32-accurate (error ~1e-7)")
EAGER_NO_LARGE_LOGITS = {
    "float16": "float16 large-logit inputs not supported: eager_attention_forward forms Q Kᵀ in float16 before "
               "multiplying by `scaling`, so |Q Kᵀ| above 65504 overflows to inf and the row is NaN",
    "bfloat16": "bfloat16 large-logit inputs not supported: eager_attention_forward rounds Q Kᵀ to bfloat16 before "
                "multiplying by `scaling`, an error of up to 2.2 in O where the plain formula's is 1e-7",
}


def _eager_half(problem, backward: bool) -> bool:
    return problem.dtype == "float16" and not backward


@register
class HfEager(_Transformers):
    """hf_eager: transformers' Llama eager_attention_forward (explicit formula; masks as eager_mask builds them)."""

    name = "hf_eager"
    index = 1
    caps = Capabilities(dtypes=EAGER_DTYPES, empty_rows=False, grad=True)
    known_deviations = (
        KnownDeviation(
            name="hf_eager_f16_unscaled_logits",
            backend="hf_eager",
            device="cpu",
            problem_class="float16 forward (large-logit inputs are not declared at all), up to L = max(N, M) 256",
            applies=_eager_half,
            tensors=("output",),
            ratio_by_length=((256, 3.0),),
            evidence=("transformers 5.24.0, torch 2.13 CPU: eager_attention_forward computes "
                      "torch.matmul(query, key.T) * scaling in float16, rounding every score twice where the "
                      "plain formula (Q scaled first) rounds once. The whole conformance suite on hf_eager "
                      "(2026-12-01) fails the 2x rule on two float16 forwards only: 2.93x at N 97, M 113, D 80, "
                      "seed 1 (the witness) and 2.92x at N 127, M 193, D 80, bottom-right, seed 2; every other "
                      "float16 output and every gradient is within 2x (1.0-1.5x typical; "
                      "reports/peers/findings.md)"),
            witness="B=1,H=2,N=97,M=113,D=80,dtype=float16,seed=1",
        ),
    )
    def why_not(self, problem, device: str = "cpu", *, need_grad: bool = False) -> str | None:
        reason = super().why_not(problem, device, need_grad=need_grad)
        if reason and problem.dtype == "float64" and reason.startswith("dtype"):
            return EAGER_NOT_FLOAT64
        if reason is None and problem.inputs == "large_logits" and problem.dtype in EAGER_NO_LARGE_LOGITS:
            return EAGER_NO_LARGE_LOGITS[problem.dtype]
        return reason

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        module = AttentionModule(q.shape[1] // k.shape[1], causal is not None)
        scaling = q.shape[-1] ** -0.5 if scale is None else scale             # what a transformers module holds
        out, _ = self.function(module, q, k, v, eager_mask(mask, causal, q.shape[2], k.shape[2], q.dtype),
                               scaling=scaling)
        return out.transpose(1, 2)                                               # (B, H, N, Dv)


def eager_mask(mask, causal: str | None, N: int, M: int, dtype: torch.dtype):
    """The additive mask (B|1, H|1, N, M) transformers builds for eager attention (masking_utils.eager_mask):
    0 where a key is attended, finfo(dtype).min elsewhere; a bias mask keeps its values where attended."""
    if mask is None and causal is None:
        return None
    low = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    keep = None if causal is None else causal_keep(N, M, causal)[None, None]    # (1, 1, N, M)
    if mask is not None and mask.dtype == torch.bool:
        keep = mask if keep is None else keep & mask
        mask = None
    values = torch.zeros((), dtype=dtype) if mask is None else mask
    return values if keep is None else torch.where(keep.to(values.device), values, low.to(values.device))
