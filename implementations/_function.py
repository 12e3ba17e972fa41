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
    result      a tensor, or a tuple whose first element is the output (FlashAttention's (O, lse, ...)); its second,
                lse (B, H, N) float32 ((H, total_q) for varlen), is checked where the function declares `lse`

and FlashAttention's keywords for the modifications its kernels compute (`flash_attn_interface.py`, 2, 3 and 4):

    window      `window_size=(left, right)`, bottom-right aligned; an unbounded side as the signature's default
                says: -1 (FlashAttention 2 and 3) or None (4's `(None, None)`)
    softcap     `softcap=` cap, on the scaled scores; FlashAttention applies it before ALiBi, so a problem listing
                ALiBi first is a skip
    alibi       `alibi_slopes=` float32 (H,) or (B, H): bias -slope |i + M - N - j|
    sinks       `learnable_sink=` (FlashAttention 4) or `sinks=`: float32 (H,) logits in each denominator

FlashAttention's two inference entry points are recognised by their parameters, and read the KV layouts natively
(`attnbench.reference.layouts`, whose conventions are theirs):

    varlen      `cu_seqlens_q=` (flash_attn_varlen_func): q (total_q, H, D), k, v (total_k, Hkv, .) packed, with
                cu_seqlens_q/_k int32 (B + 1,) and max_seqlen_q/_k: kv=ragged natively, and a dense problem as B
                sequences of equal length; its backward through autograd
    kvcache     `k_cache=` (flash_attn_with_kvcache): q (B, N, H, D) against a cache (B, M, Hkv, D), or pages
                through `block_table=` (or `page_table=`), holding `cache_seqlens=` keys each, new keys `k=`, `v=`
                written into the cache first: kv=dense and paged natively, appended keys where it takes k= and v=;
                forward only (FlashAttention has no backward for it). It writes the cache in place, so with
                appended keys the adapter hands it its own copy, made once when the call is prepared (outside
                the timed calls: writing the same keys again each call changes nothing), never the caller's; the
                call's contract holds it to writing the appended slots of that copy and nothing else

Both take FlashAttention's layouts whatever `@layout` says, GQA included (Hkv < H heads packed as they are).

A function whose first parameter is `module` and which takes `attention_mask` follows transformers' attention
interface (`ALL_ATTENTION_FUNCTIONS`: `sdpa_attention_forward`, Llama's `eager_attention_forward`, ...):

    fn(module, q (B, H, N, D), k, v (B, Hkv, M, .), attention_mask, scaling=, dropout=0.0) -> (O (B, N, H, Dv), _)

The adapter passes a small module (`num_key_value_groups` = H / Hkv, `is_causal` False, eval mode), and causal
and bool masks as the additive mask transformers builds (`masking_utils`: 0 where attended, finfo(dtype).min
elsewhere), float masks as they are; so both alignments and every mask are declared, but not rows with every
key masked (finfo.min is finite: such a row averages V). The layout is transformers' (the `@layout` is ignored).

Inputs are torch tensors in the problem's dtype; gradients flow through torch autograd (declared). Anything
the signature does not show is a skip with its reason, never a call the function was not written for.

What the signature cannot say (D in {64, 128} only, half types only, no GQA, N a multiple of 64, no backward)
the function declares itself, with no attnbench import, as `Capabilities` fields over the signature's:

    attn.attnbench_capabilities = dict(dtypes=("float16", "bfloat16"), head_dim_choices=(64, 128), gqa=False)
    prefill.attnbench_capabilities = dict(non_causal=False)     # causal only: a problem without causal is a skip

(a `Capabilities` is taken whole; on a torch.nn.Module, a class attribute). Every suite then skips, with the
reason, each problem outside it.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Mapping

import numpy as np
import torch

from attnbench.reference import AttentionInputError
from attnbench.reference import layouts as kv_layouts

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


def _import(module: str):
    """`module`, found as `python -m` and pytest find it: from the working directory too (the `attnbench` script
    alone would not look there, so a kernel beside the user failed to load in check and perf only)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module.partition(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), here)))  # workers
        return importlib.import_module(module)


def _load(module: str, function: str, name: str):
    try:
        fn = getattr(_import(module), function)
    except (ImportError, AttributeError) as exc:
        raise AttentionInputError(f"backend {name!r}: cannot load {module}:{function} ({exc})") from None
    if inspect.isclass(fn):
        fn = _instance(fn, f"{module}:{function}", name)
    if not callable(fn):
        raise AttentionInputError(f"backend {name!r}: {module}:{function} is not callable")
    return fn


def _instance(cls, target: str, name: str):
    """A class named as the backend (a torch.nn.Module, say), made with no arguments and put in eval mode."""
    try:
        obj = cls()
    except TypeError as exc:
        raise AttentionInputError(f"backend {name!r}: {target} is a class whose constructor needs arguments "
                                  f"({exc}); name an instance or a function instead") from None
    return obj.eval() if isinstance(obj, torch.nn.Module) else obj


def _keyword(params, *names: str) -> str | None:
    return next((n for n in names if n in params), None)


# A modification's spec key -> the keywords that take it, in FlashAttention's conventions (module docstring).
MOD_KEYWORDS = {"window": ("window_size",), "softcap": ("softcap",), "alibi": ("alibi_slopes",),
                "sinks": ("learnable_sink", "sinks")}
PAGE_KEYWORDS = ("block_table", "page_table")            # flash_attn_with_kvcache's, FlashAttention 4's


def declared_capabilities(fn, caps: Capabilities, name: str) -> Capabilities:
    """`caps` with the fields `fn.attnbench_capabilities` declares (a dict of `Capabilities` fields, or a whole
    `Capabilities`); a one-line error naming a field that does not exist."""
    declared = getattr(fn, "attnbench_capabilities", None)
    if declared is None or isinstance(declared, Capabilities):
        return declared or caps
    fields = {f.name for f in dataclasses.fields(Capabilities)}
    unknown = sorted(set(declared) - fields)
    if unknown:
        raise AttentionInputError(f"backend {name!r}: attnbench_capabilities has no field {', '.join(unknown)} "
                                  f"(fields: {', '.join(sorted(fields))})")
    widened = [key for key in SIGNATURE_FIELDS if key in declared and not set(declared[key]) <= set(getattr(caps, key))]
    if widened:
        raise AttentionInputError(f"backend {name!r}: attnbench_capabilities declares {', '.join(widened)} beyond what "
                                  f"its signature takes ({'; '.join(f'{k}: {getattr(caps, k)}' for k in widened)})")
    result = caps.replace(**declared)
    if not result.non_causal and not result.causal:
        raise AttentionInputError(f"backend {name!r}: attnbench_capabilities declares non_causal=False (causal only) "
                                  "but no causal alignment (its signature takes neither is_causal= nor causal=)")
    return result


# The documented limits of packages users name by module (a function's own `attnbench_capabilities` still
# overrides them): FlashAttention 2 (`flash_attn`, README "fp16 and bf16", "all head dimensions up to 256", one
# head dim for K and V) and 3/4 (`flash_attn_interface`, `flash_attn.cute`: fp16/bf16 here, head dims up to 256).
# Without them `pytest conformance --backend flash_attn:flash_attn_func` asked for float32 problems, on which
# FlashAttention raises: a failure of a kernel used within its limits is a false alarm.
KNOWN_LIMITS = {
    "flash_attn": dict(dtypes=("float16", "bfloat16"), head_dims=(1, 256), dv_differs=False, devices=("cuda",)),
    "flash_attn.cute": dict(dtypes=("float16", "bfloat16"), head_dims=(1, 256), devices=("cuda",)),
    "flash_attn_interface": dict(dtypes=("float16", "bfloat16"), head_dims=(1, 256), devices=("cuda",)),
}


def known_limits(module: str) -> dict:
    """KNOWN_LIMITS of the longest package prefix of `module` that has them ({} for none)."""
    parts = module.split(".")
    return next((KNOWN_LIMITS[".".join(parts[:n])] for n in range(len(parts), 0, -1)
                 if ".".join(parts[:n]) in KNOWN_LIMITS), {})


# What the adapter passes only through a keyword of the signature: a declaration may narrow these, never widen them.
SIGNATURE_FIELDS = ("causal", "masks", "mods", "kv_layouts")


def capabilities_of(params, layout: str) -> Capabilities:
    """What a function with these keyword parameters can be asked (see the module docstring)."""
    causal = (("top_left",) if "is_causal" in params else ("bottom_right",) if "causal" in params else ())
    masks = ("bool", "bias") if "attn_mask" in params else ()
    mods = tuple(key for key, names in MOD_KEYWORDS.items() if _keyword(params, *names))
    fields = dict(causal=causal, masks=masks, mask_with_causal=False, grad=True,
                  gqa="enable_gqa" in params or layout == "bnhd", mods=mods)
    return Capabilities(**{**fields, **layout_capabilities(params)})


def convention_of(params) -> str | None:
    """'varlen' (flash_attn_varlen_func), 'kvcache' (flash_attn_with_kvcache) or None (one dense call)."""
    return "varlen" if "cu_seqlens_q" in params else "kvcache" if "k_cache" in params else None


def layout_capabilities(params) -> dict:
    """The KV layouts (and append, gradients, GQA) an inference entry point's signature declares."""
    convention = convention_of(params)
    if convention == "varlen":
        return dict(kv_layouts=("dense", "ragged"), gqa=True)
    if convention == "kvcache":
        return dict(kv_layouts=("dense", "paged") if _keyword(params, *PAGE_KEYWORDS) else ("dense",),
                    kv_append="k" in params and "v" in params, grad=False, gqa=True)
    return {}


@functools.lru_cache(maxsize=64)
def _int32_geometry(problem, device: str) -> dict:
    """`problem`'s key offsets and block table as int32 tensors on `device` and its longest lengths, made once per
    problem (the first call, which is never timed), so no timed call copies them to the device."""
    g = kv_layouts.geometry(problem)
    as_int32 = lambda x: None if x is None else torch.as_tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    return dict(cu_seqlens_k=as_int32(g.cu_k), block_table=as_int32(g.block_table),
                max_seqlen_q=int(g.seq_q.max()), max_seqlen_k=int(g.seq_k.max()))


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
        limits = dict(known_limits(module))
        self.devices = limits.pop("devices", self.devices)
        self.caps = declared_capabilities(self.fn, self.caps.replace(**limits), name)
        if self.caps.lse and (self.module_convention or convention_of(self.params) == "kvcache"):
            raise AttentionInputError(f"backend {name!r}: lse is read from a dense or varlen call's (out, lse) only")
        self.scale_keyword = "scaling" if self.module_convention else _keyword(self.params, "scale", "softmax_scale")
        self.unbounded = unbounded_side(inspect.signature(self.fn))
        self.convention = None if self.module_convention else convention_of(self.params)

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
        if self.module_convention:
            module = _AttentionModule(q.shape[1] // k.shape[1])
            out, _ = self.fn(module, q, k, v, additive_mask(q, mask, causal, q.shape[2], k.shape[2]),
                             scaling=q.shape[-1] ** -0.5 if scale is None else scale, dropout=0.0)
            return out.transpose(1, 2)                                                # (B, N, H, Dv) -> (B, H, N, Dv)
        kwargs = {**mod_kwargs(mods, self.params, self.unbounded), **self._causal_kwarg(causal)}
        if mask is not None:
            kwargs["attn_mask"] = mask
        if scale is not None:
            kwargs[self.scale_keyword] = scale
        if "enable_gqa" in self.params and k.shape[1] != q.shape[1]:
            kwargs["enable_gqa"] = True
        if self.convention == "varlen":
            return self._dense_as_varlen(q, k, v, kwargs, return_lse)
        if self.convention == "kvcache":
            full = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32, device=q.device)
            return _first(self.fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), cache_seqlens=full,
                                  **kwargs)).transpose(1, 2)
        if self.layout == "bnhd":
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))                       # (B, L, H, D)
        out, lse = _split(self.fn(q, k, v, **kwargs), return_lse, self.name)      # lse (B, H, N) in either layout
        out = out.transpose(1, 2) if self.layout == "bnhd" else out               # (B, H, N, Dv)
        return (out, lse) if return_lse else out

    def _causal_kwarg(self, causal) -> dict:
        """The causal flag, always passed where the signature takes one: a function whose `causal` defaults to True
        (a causal-only kernel) must not run causally on a problem that is not."""
        keyword = _keyword(self.params, "is_causal", "causal")
        return {} if keyword is None else {keyword: causal is not None}

    def _dense_as_varlen(self, q, k, v, kwargs, return_lse: bool = False):
        """q (B, H, N, D), k, v (B, Hkv, M, .) as B packed sequences of equal length -> O (B, H, N, Dv) [, lse
        (B, H, N) from FlashAttention's (H, B * N)]."""
        B, N, M = q.shape[0], q.shape[2], k.shape[2]
        packed = [x.transpose(1, 2).reshape(B * x.shape[2], x.shape[1], x.shape[3]) for x in (q, k, v)]
        cu = [torch.arange(B + 1, dtype=torch.int32, device=q.device) * n for n in (N, M)]
        out, lse = _split(self.fn(*packed, cu_seqlens_q=cu[0], cu_seqlens_k=cu[1], max_seqlen_q=N, max_seqlen_k=M,
                                  **kwargs), return_lse, self.name)
        out = out.reshape(B, N, *out.shape[1:]).transpose(1, 2)
        return (out, lse.reshape(lse.shape[0], B, N).transpose(0, 1)) if return_lse else out

    def kv_tensors(self, inputs, problem, device: str, *, requires_grad: bool = False):
        """`KvReader.kv_tensors`, the cache copied once where a kvcache function will write appended keys into it
        (a float64 cache tensor shares the caller's NumPy memory)."""
        tensors = super().kv_tensors(inputs, problem, device, requires_grad=requires_grad)
        if self.convention == "kvcache" and problem.append:
            q, k, v, *rest = tensors
            tensors = (q, k.clone(), v.clone(), *rest)
        return tensors

    def prepare_kv(self, inputs, problem, device: str, return_lse: bool):
        """`KvReader.prepare_kv`; for a kvcache function writing appended keys, the call's contract reads its cache
        copy with the appended slots as they were: writing there is its documented job, anywhere else is not."""
        run = super().prepare_kv(inputs, problem, device, return_lse)
        if self.convention == "kvcache" and problem.append:
            run.native_kv = _AppendSlotsRestored(run.native_kv, problem)
        return run

    def attention_kv(self, problem, q, k, v, new_k, new_v, cache_seqlens, cu_q, *, causal, scale,
                     return_lse: bool = False, mods=None):
        """One call over the whole batch in the layout's physical tensors (`kv_torch.KvReader.attention_kv`'s
        contract): packed ragged for varlen, the (paged) cache for kvcache."""
        kwargs = {**mod_kwargs(mods, self.params, self.unbounded), **self._causal_kwarg(causal)}
        if scale is not None:
            kwargs[self.scale_keyword] = scale
        g = _int32_geometry(problem, str(q.device))
        if self.convention == "varlen":
            out, lse = _split(self.fn(q, k, v, cu_seqlens_q=cu_q.to(torch.int32), cu_seqlens_k=g["cu_seqlens_k"],
                                  max_seqlen_q=g["max_seqlen_q"], max_seqlen_k=g["max_seqlen_k"], **kwargs),
                              return_lse, self.name)
            return (out, lse) if return_lse else out                           # lse (H, total_q)
        if g["block_table"] is not None:
            kwargs[_keyword(self.params, *PAGE_KEYWORDS)] = g["block_table"]
        else:
            k, v = k.transpose(1, 2), v.transpose(1, 2)                          # dense cache (B, M, Hkv, .)
        if new_k is not None:                       # into the copy `kv_tensors` made: the function writes in place
            kwargs.update(k=new_k, v=new_v)
        out = self.fn(q.transpose(1, 2), k, v, cache_seqlens=cache_seqlens.to(torch.int32), **kwargs)
        return _first(out).transpose(1, 2)                                        # (B, H, N, Dv)


class _AppendSlotsRestored(Mapping):
    """{name: tensor} of a kvcache call's converted storage, read lazily (after the call): k and v, the cache copy
    the function writes, with the append slots of every sequence reset to their values before the first call."""

    def __init__(self, native: dict, problem):
        layout, g = kv_layouts.parse(problem.kv), kv_layouts.geometry(problem)
        self.native, self.layout = native, layout
        self.slots = torch.as_tensor(np.concatenate([layout.slots(g, b, np.arange(g.cache[b], g.seq_k[b]))
                                                     for b in range(problem.B)]), device=native["k"].device)
        self.before = {n: layout.flat(native[n])[self.slots].clone() for n in ("k", "v")}
        self.problem = problem

    def _restored(self, name: str):
        flat = self.layout.flat(self.native[name].clone())
        flat[self.slots] = self.before[name]
        return self.layout.unflat(flat, self.problem)

    def __getitem__(self, name: str):
        return self._restored(name) if name in self.before else self.native[name]

    def __iter__(self):
        return iter(self.native)

    def __len__(self) -> int:
        return len(self.native)


def _first(out):
    """The output of a function that may return a tuple (FlashAttention's (O, lse, ...))."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _split(out, return_lse: bool, name: str):
    """(O, lse or None) of a function's result: with return_lse (it declared `lse`), FlashAttention's (O, lse, ...)."""
    if not return_lse:
        return _first(out), None
    if not isinstance(out, (tuple, list)) or len(out) < 2:
        raise AttentionInputError(f"backend {name!r}: declares lse but returned {type(out).__name__}, not (out, lse, ...)")
    return out[0], out[1]


def function_backend(name: str) -> FunctionBackend:
    """The backend for `name` ('module:function[@layout]')."""
    return FunctionBackend(name)
