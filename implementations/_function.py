"""A plain attention function as a backend: `--backend "package.module:function"`, no class to write.

    attnbench check "my_pkg.attn:flash_fn@bnhd" --problem "B=1,H=4,N=128,D=64,dtype=float16"
    pytest conformance --backend "my_pkg.attn:flash_fn@bnhd"
    attnbench perf --backends "my_pkg.attn:flash_fn@bnhd"

The name is `module:function`, optionally `@layout`: `bhnd` (the default: q (B, H, N, D), as torch SDPA)
or `bnhd` (q (B, N, H, D), as FlashAttention, Keras and transformers' outputs). The adapter reads the
function's signature for the call convention users meet, and declares only what that convention can say:

    causal      `is_causal=` (torch SDPA: top-left)  or  `causal=` (FlashAttention: bottom-right)
    scale       `scale=` or `softmax_scale=`; neither: the problem's default scale only
    mask        `attn_mask=` (torch: bool True = attend, or an additive float bias); none: no masks
    GQA         `enable_gqa=` (torch) or a bnhd function (FlashAttention takes Hkv < H); else Hkv = H only
    result      a tensor, or a tuple whose first element is the output (FlashAttention's (O, lse, ...))

and FlashAttention's keywords for the modifications its kernels compute (`flash_attn_interface.py`, 2, 3 and 4):

    window      `window_size=(left, right)`, bottom-right aligned; an unbounded side as the signature's default
                says: -1 (FlashAttention 2 and 3) or None (4's `(None, None)`)
    softcap     `softcap=` cap, on the scaled scores; FlashAttention applies it before ALiBi, so a problem listing
                ALiBi first is a skip
    alibi       `alibi_slopes=` float32 (H,) or (B, H): bias -slope |i + M - N - j|
    sinks       `learnable_sink=` (FlashAttention 4) or `sinks=`: float32 (H,) logits in each denominator

A function whose first parameter is `module` and which takes `attention_mask` follows transformers' attention
interface (`ALL_ATTENTION_FUNCTIONS`: `sdpa_attention_forward`, Llama's `eager_attention_forward`, ...):

    fn(module, q (B, H, N, D), k, v (B, Hkv, M, .), attention_mask, scaling=, dropout=0.0) -> (O (B, N, H, Dv), _)

The adapter passes a small module (`num_key_value_groups` = H / Hkv, `is_causal` False, eval mode), and causal
and bool masks as the additive mask transformers builds (`masking_utils`: 0 where attended, finfo(dtype).min
elsewhere), float masks as they are; so both alignments and every mask are declared, but not rows with every
key masked (finfo.min is finite: such a row averages V). The layout is transformers' (the `@layout` is ignored).

Inputs are torch tensors in the problem's dtype; gradients flow through torch autograd (declared). Anything
the signature does not show is a skip with its reason, never a call the function was not written for.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims.
"""
from __future__ import annotations

import importlib
import inspect

from attnbench.reference import AttentionInputError

from ._torch_common import TorchBackend
from .base import Capabilities

LAYOUTS = ("bhnd", "bnhd")


def parse_name(name: str) -> tuple[str, str, str]:
    """'pkg.mod:fn@bnhd' -> ('pkg.mod', 'fn', 'bnhd'); a one-line error for anything else."""
    target, _, layout = name.partition("@")
    module, _, function = target.partition(":")
    layout = layout or "bhnd"
    if not module or not function or layout not in LAYOUTS:
        raise AttentionInputError(f"backend {name!r}: expected 'package.module:function' with an optional "
                                  f"'@{'|@'.join(LAYOUTS)}' layout")
    return module, function, layout


def _load(module: str, function: str, name: str):
    try:
        fn = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise AttentionInputError(f"backend {name!r}: cannot load {module}:{function} ({exc})") from None
    if not callable(fn):
        raise AttentionInputError(f"backend {name!r}: {module}:{function} is not callable")
    return fn


def _keyword(params, *names: str) -> str | None:
    return next((n for n in names if n in params), None)


# A modification's spec key -> the keywords that take it, in FlashAttention's conventions (module docstring).
MOD_KEYWORDS = {"window": ("window_size",), "softcap": ("softcap",), "alibi": ("alibi_slopes",),
                "sinks": ("learnable_sink", "sinks")}


def capabilities_of(params, layout: str) -> Capabilities:
    """What a function with these keyword parameters can be asked (see the module docstring)."""
    causal = (("top_left",) if "is_causal" in params else ("bottom_right",) if "causal" in params else ())
    masks = ("bool", "bias") if "attn_mask" in params else ()
    mods = tuple(key for key, names in MOD_KEYWORDS.items() if _keyword(params, *names))
    return Capabilities(causal=causal, masks=masks, mask_with_causal=False, grad=True,
                        gqa="enable_gqa" in params or layout == "bnhd", mods=mods)


def unbounded_side(signature: inspect.Signature):
    """How the function spells an unbounded window side: None where `window_size` defaults to (None, None)
    (FlashAttention 4), else -1 (FlashAttention 2 and 3)."""
    param = signature.parameters.get("window_size")
    default = None if param is None else param.default
    return None if isinstance(default, (tuple, list)) and None in default else -1


def mod_kwargs(mods, params, unbounded) -> dict:
    """The keyword arguments that hand `mods` (a `TorchMods`) to a FlashAttention-style function."""
    if mods is None:
        return {}
    kwargs = {}
    if mods.window is not None:
        kwargs["window_size"] = tuple(unbounded if side < 0 else side for side in mods.window)
    if mods.softcap is not None:
        kwargs["softcap"] = mods.softcap
    if mods.alibi is not None:
        kwargs["alibi_slopes"] = mods.alibi
    if mods.sinks is not None:
        kwargs[_keyword(params, *MOD_KEYWORDS["sinks"])] = mods.sinks
    return kwargs


def is_module_convention(params) -> bool:
    """transformers' attention interface: fn(module, query, key, value, attention_mask, ...)."""
    return bool(params) and params[0] == "module" and "attention_mask" in params


class _AttentionModule:
    """What transformers' attention functions read from their module argument."""

    def __init__(self, groups: int):
        self.num_key_value_groups = groups
        self.is_causal = False
        self.training = False


def additive_mask(q, mask, causal, n: int, m: int):
    """The additive float mask (b, h, N, M) in q's dtype that transformers builds: 0 where a key is attended,
    finfo(dtype).min where a bool mask or causal hides it; a float bias keeps its values. None without either."""
    import torch

    from .masks import causal_keep

    minimum = torch.finfo(q.dtype).min
    bias = None if mask is None or mask.dtype == torch.bool else mask.to(q.dtype)
    keep = None if mask is None or mask.dtype != torch.bool else mask
    if causal is not None:
        rule = causal_keep(n, m, causal, q.device)
        keep = rule if keep is None else keep & rule
    if keep is None:
        return bias
    hidden = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, minimum)
    return hidden if bias is None else (bias + hidden).clamp(min=minimum)


class FunctionBackend(TorchBackend):
    """A function `module:function[@layout]` called with torch tensors (see the module docstring)."""

    devices = ("cpu", "cuda")

    def __init__(self, name: str):
        module, function, self.layout = parse_name(name)
        self.name = name
        self.fn = _load(module, function, name)
        ordered = list(inspect.signature(self.fn).parameters)
        self.params = set(ordered)
        self.module_convention = is_module_convention(ordered)
        self.caps = capabilities_of(self.params, self.layout)
        if self.module_convention:
            self.caps = Capabilities(grad=True, empty_rows=False)
        self.scale_keyword = "scaling" if self.module_convention else _keyword(self.params, "scale", "softmax_scale")
        self.unbounded = unbounded_side(inspect.signature(self.fn))

    @property
    def description(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return f"function {self.name}" + (f": {doc.splitlines()[0]}" if doc else "")

    def why_not(self, problem, device: str = "cpu", *, need_grad: bool = False) -> str | None:
        reason = super().why_not(problem, device, need_grad=need_grad)
        if reason is None and problem.scale is not None and self.scale_keyword is None:
            reason = "custom scale not supported (the function takes no scale= or softmax_scale=)"
        keys = [m.key for m in problem.mods]
        if reason is None and "softcap" in keys and "alibi" in keys and keys.index("alibi") < keys.index("softcap"):
            reason = "ALiBi before softcap not supported (FlashAttention's kernels apply softcap first)"
        return reason

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False, mods=None):
        if return_lse:
            raise NotImplementedError(f"{self.name}: a function backend returns no log-sum-exp")
        if self.module_convention:
            module = _AttentionModule(q.shape[1] // k.shape[1])
            out, _ = self.fn(module, q, k, v, additive_mask(q, mask, causal, q.shape[2], k.shape[2]),
                             scaling=q.shape[-1] ** -0.5 if scale is None else scale, dropout=0.0)
            return out.transpose(1, 2)                                                # (B, N, H, Dv) -> (B, H, N, Dv)
        kwargs = mod_kwargs(mods, self.params, self.unbounded)
        if causal is not None:
            kwargs["is_causal" if "is_causal" in self.params else "causal"] = True
        if mask is not None:
            kwargs["attn_mask"] = mask
        if scale is not None:
            kwargs[self.scale_keyword] = scale
        if "enable_gqa" in self.params and k.shape[1] != q.shape[1]:
            kwargs["enable_gqa"] = True
        if self.layout == "bnhd":
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))                       # (B, L, H, D)
        out = self.fn(q, k, v, **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.transpose(1, 2) if self.layout == "bnhd" else out              # (B, H, N, Dv)


def function_backend(name: str) -> FunctionBackend:
    """The backend for `name` ('module:function[@layout]')."""
    return FunctionBackend(name)
