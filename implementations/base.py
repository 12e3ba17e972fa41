"""The backend protocol: what a backend declares and the one call the harness makes.

A backend is an object with a `name`, `Capabilities` per device and a `prepare`
method that converts float64 inputs into its native form *once* and returns a
zero-argument callable running the attention; the harness owns timing, memory
and accuracy, and conversion is never timed. The suites ask capabilities,
never names: an unsupported problem is a skip with the reason `why_not` gives.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys,
D query/key dim, Dv value dim. Canonical layout (B, H, N, D).
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from attnbench.precision import Precision
from attnbench.problem import DTYPES, Inputs, Problem
from attnbench.reference import CAUSAL_ALIGNMENTS
from attnbench.reference import layouts as kv_layouts

ALL_CAUSAL = CAUSAL_ALIGNMENTS         # the reference's alignments, under the name Capabilities reads
ALL_MASKS = ("bool", "bias")


def has_empty_rows(p: Problem) -> bool:
    """Whether some query row of `p` sees no key: a fully masked row, bottom_right causal with N > M, or a
    window (with causal) that holds no key for the first or last query; in a KV layout, of any one sequence (the
    padding of its logical view is no part of the problem)."""
    if p.mask == "fully_masked":
        return True
    if kv_layouts.needs_storage(p):
        return kv_layouts.has_empty_rows(p, lambda n, m: _empty_rows(p, n, m))
    return _empty_rows(p, p.N, p.M)


def _empty_rows(p: Problem, N: int, M: int) -> bool:
    """has_empty_rows for N queries against M keys under p's masking modifications, causal among them (bottom_right
    with N > M: the first N - M rows see no key)."""
    from attnbench.reference.mods import visible_range

    for i in (0, N - 1):
        first, last = visible_range(p.reference_mods, i, i, N, M)
        if first > last:
            return True
    return False


@dataclass(frozen=True)
class Capabilities:
    """What a backend computes correctly on one device. Anything not declared is skipped, not failed.

    dtypes: input/output dtypes.         causal: supported causal alignments.
    non_causal: problems without causal (False: a causal-only kernel, as many prefill kernels are; every
        problem with causal unset is then a skip, prefix-LM included, whose causal part is its own).
    masks: "bool" (True = attend) and/or "bias" (additive float).
    mask_with_causal: a mask and causal in the same call.
    cross: N != M.   gqa: Hkv < H.   dv_differs: Dv != D.   head_dims: inclusive (min, max) D and Dv.
    grad: dQ, dK, dV through autograd.   lse: returns the log-sum-exp.
    empty_rows: a query row whose every key is masked gives O = 0 and lse = -inf (as the reference does).
    deterministic: bitwise-identical output for identical inputs.
    strided: accepts non-contiguous inputs.   max_seq: largest N or M (None: no limit).
    max_batch_heads: largest B * H in one call (None: no limit): a launch grid of one program per (batch, head)
    that an emulator runs one program at a time (the Triton interpreter) is minutes long at 65,536.
    Shape constraints (data every suite reads: drawn problems, fixed cases, bad-input tests, perf sweeps):
    seq_multiple: N and M must be multiples of it (a kernel without masking of partial tiles: 128).
    head_dim_choices: the only D (and Dv) it takes, e.g. (64, 128), on top of `head_dims`; None: any.
    same_length: N = M only (self-attention kernels).
    max_seq_by_dtype: ((dtype, largest N or M), ...) where the limit depends on the dtype.
    precision: ((dtype, Precision), ...): how it computes per input dtype (`attnbench.precision`); a dtype
        declared here is held to the bound its model implies, on top of the two budget conditions.
    mods: the modifications it computes natively, by key (`attnbench.reference.mods.MODS`: "window",
        "softcap", "alibi", "sinks"); a problem with any other is a skip with its reason.
    kv_layouts: the KV layouts it reads natively (`attnbench.reference.layouts`: "dense", "ragged", "paged");
        kv_append: it writes appended keys into the cache itself. Any other layout problem runs through the
        pad-and-mask adapter (`implementations/pad_and_mask.py`) if it takes bool masks, else is a skip.
    sink_grad: with "sinks" in mods, `prepare_backward` also returns d(sink logits) (H,) (the logits require
        grad), checked against the reference's (`reference.sdpa_backward(return_sink_grad=True)`).
    """

    dtypes: tuple[str, ...] = DTYPES
    causal: tuple[str, ...] = ALL_CAUSAL
    non_causal: bool = True
    masks: tuple[str, ...] = ALL_MASKS
    mask_with_causal: bool = True
    cross: bool = True
    gqa: bool = True
    dv_differs: bool = True
    head_dims: tuple[int, int] = (1, 1 << 16)
    grad: bool = False
    lse: bool = False
    empty_rows: bool = True
    deterministic: bool = True
    strided: bool = True
    max_seq: int | None = None
    max_batch_heads: int | None = None
    precision: tuple[tuple[str, Precision], ...] = ()
    seq_multiple: int = 1
    head_dim_choices: tuple[int, ...] | None = None
    same_length: bool = False
    max_seq_by_dtype: tuple[tuple[str, int], ...] = ()
    mods: tuple[str, ...] = ()
    kv_layouts: tuple[str, ...] = ("dense",)
    kv_append: bool = False
    sink_grad: bool = False

    def reads_kv(self, p: Problem) -> bool:
        """Whether it reads `p`'s KV layout (and appended keys) natively."""
        return kv_layouts.parse(p.kv).key in self.kv_layouts and (not p.append or self.kv_append)

    def longest(self, dtype: str) -> int | None:
        """The largest N or M allowed in `dtype` (None: no limit)."""
        limits = [x for x in (self.max_seq, dict(self.max_seq_by_dtype).get(dtype)) if x is not None]
        return min(limits) if limits else None

    def precision_for(self, dtype: str) -> Precision | None:
        """The declared `Precision` for input `dtype`, or None (held to the budget's two conditions alone)."""
        return dict(self.precision).get(dtype)

    def why_not(self, p: Problem, *, need_grad: bool = False) -> str | None:
        """The first reason these capabilities do not cover problem `p`, or None if they do."""
        if kv_layouts.needs_storage(p):
            return self._why_not_layout(p, need_grad)
        return self._why_not_dense(p, need_grad)

    def _why_not_layout(self, p: Problem, need_grad: bool) -> str | None:
        """A layout problem: natively, or through the pad-and-mask adapter (the dense problem it runs)."""
        layout = p.kv + (f", append={p.append}" if p.append else "")
        if need_grad and (not kv_layouts.parse(p.kv).grad or p.append):
            return f"kv={layout}: forward only (no backward through a paged or appended KV cache)"
        if self.reads_kv(p):
            return self._why_not_dense(p, need_grad)
        if "bool" not in self.masks:
            return (f"kv={layout} not read natively (has {', '.join(self.kv_layouts)}) nor via pad-and-mask "
                    "(no bool masks)")
        from attnbench.implementations.pad_and_mask import dense_problem

        reason = self._why_not_dense(dense_problem(p), need_grad) or (
            "rows with every key masked (O = 0 expected) not supported" if has_empty_rows(p) and not self.empty_rows
            else None)
        return None if reason is None else f"kv={layout} via pad-and-mask: {reason}"

    def _why_not_dense(self, p: Problem, need_grad: bool) -> str | None:
        checks = [
            (p.dtype not in self.dtypes, f"dtype {p.dtype} not supported (has {', '.join(self.dtypes)})"),
            (p.causal is not None and p.causal not in self.causal, f"causal alignment {p.causal} not supported"),
            (p.causal is None and not self.non_causal,
             f"non-causal problems not supported (causal only: {', '.join(self.causal) or 'none'})"),
            (p.mask_form is not None and p.mask_form not in self.masks, f"{p.mask_form} masks not supported"),
            (p.mask is not None and p.causal is not None and not self.mask_with_causal,
             "mask together with causal not supported"),
            (p.N != p.M and not self.cross, "N != M (cross-attention) not supported"),
            (p.Hkv != p.H and not self.gqa, "Hkv < H (grouped-query) not supported"),
            (p.Dv != p.D and not self.dv_differs, "Dv != D not supported"),
            (not (self.head_dims[0] <= min(p.D, p.Dv) and max(p.D, p.Dv) <= self.head_dims[1]),
             f"head dim D={p.D}, Dv={p.Dv} outside supported {self.head_dims[0]}..{self.head_dims[1]}"),
            (p.layout != "contiguous" and not self.strided, f"{p.layout} (non-contiguous) inputs not supported"),
            (self.longest(p.dtype) is not None and max(p.N, p.M) > self.longest(p.dtype),
             f"N/M above max {self.longest(p.dtype)} in {p.dtype}"),
            (self.max_batch_heads is not None and p.B * p.H > self.max_batch_heads,
             f"B * H = {p.B * p.H} above max {self.max_batch_heads}"),
            (p.N % self.seq_multiple or p.M % self.seq_multiple,
             f"N={p.N}, M={p.M}: both must be multiples of {self.seq_multiple}"),
            (self.head_dim_choices is not None and not {p.D, p.Dv} <= set(self.head_dim_choices),
             f"head dim D={p.D}, Dv={p.Dv} not one of {', '.join(map(str, self.head_dim_choices or ()))}"),
            (self.same_length and p.N != p.M, f"N={p.N} != M={p.M}: N = M only"),
            (need_grad and not self.grad, "no backward (grad) support"),
            (any(m.key not in self.mods for m in p.mods),
             f"modification {next((m.label() for m in p.mods if m.key not in self.mods), '')} not supported"
             f" (has {', '.join(self.mods) or 'none'})"),
            (has_empty_rows(p) and not self.empty_rows, "rows with every key masked (O = 0 expected) not supported"),
        ]
        return next((reason for failed, reason in checks if failed), None)

    def replace(self, **changes) -> "Capabilities":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class KernelLaunch:
    """One launch of a Triton kernel, as `attnbench audit` compiles it for a GPU target (`Backend.audit_launches`).

    kernel: the @triton.jit function, a module-level name (each compile runs in a fresh process that imports it).
    args: its positional arguments as a launch passes them: tensors (torch "meta" tensors do: only dtype and
        alignment matter), ints and floats. The audit specialises them as triton's JIT does at a launch: an int
        equal to 1 becomes a constexpr; ints that are multiples of 16 and pointers get divisibility 16.
    constexprs: its tl.constexpr arguments by name (tile sizes, flags).
    num_warps, num_stages: the rest of the launch config.
    labels: what the audit's table shows and its filters select, in column order, as (name, value) strings:
        ("kernel", "fwd"), ("D", "64"), ("dtype", "float16"), ("causal", "none" / "causal"), ("mods", "none" /
        "all") and ("config", ...) are the names `attnbench audit --kernels/--head-dims/--dtypes/--causal/--mods`
        select on; a backend may add others.
    tensor_cores: its dots must reach the tensor cores (half-precision inputs); False where they belong on the
        CUDA cores (IEEE float32 dots).
    launchable: the backend launches it on this target; False: compiled and shown as excluded, never failed.
    exclude_hint: where to list it so that it is not launched on this target (printed when it fails the audit).
    """

    kernel: Any
    args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int
    labels: tuple[tuple[str, str], ...]
    tensor_cores: bool = True
    launchable: bool = True
    exclude_hint: str = ""


def _validated(prepare: Callable, *, need_grad: bool) -> Callable:
    """Wrap a backend's `prepare`/`prepare_backward` so the shared check runs first, before any conversion."""
    from ._validate import check_prepare

    @functools.wraps(prepare)
    def wrapper(self, inputs, problem, *args, device: str = "cpu", **kwargs):
        check_prepare(self, inputs, problem, device, need_grad=need_grad)
        if kv_layouts.needs_storage(problem) and not self.capabilities(device).reads_kv(problem):
            from .pad_and_mask import prepare_padded

            dense = functools.partial(wrapper, self)
            return prepare_padded(dense, inputs, problem, *args, device=device, need_grad=need_grad, **kwargs)
        return prepare(self, inputs, problem, *args, device=device, **kwargs)

    wrapper.validates = True
    return wrapper


class Backend(ABC):
    """Base class for a backend. Subclass, set `name`, `devices`, `caps`, implement `prepare` and `to_numpy`.

    Every subclass's `prepare` and `prepare_backward` are wrapped (in `__init_subclass__`) with the one
    shared argument check, so no backend, in this repo or a plugin, can forget it: bad input or an
    undeclared problem raises `AttentionInputError` naming the argument, before any work.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for method, need_grad in (("prepare", False), ("prepare_backward", True)):
            fn = cls.__dict__.get(method)
            if fn is not None and not getattr(fn, "validates", False):
                setattr(cls, method, _validated(fn, need_grad=need_grad))

    name: str = ""
    devices: tuple[str, ...] = ("cpu",)
    caps: Capabilities = Capabilities()
    # Measured inaccuracies this backend declares instead of hiding (`attnbench.deviations.KnownDeviation`: the
    # problem class, the worst ratio per length, the evidence and a witness); judged like ours, and
    # `conformance/test_known_deviations.py` checks each still shows on its witness and has not grown.
    known_deviations: tuple = ()

    @property
    def description(self) -> str:
        """First line of the backend module's or class's docstring."""
        doc = (type(self).__doc__ or "").strip() or (sys.modules[type(self).__module__].__doc__ or "")
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here at all (missing package, ...), or None."""
        return None

    def simulated_reason(self, device: str) -> str | None:
        """Why this backend's times on `device` say nothing about the kernel (it runs under a simulator), or None."""
        return None

    def device_unavailable_reason(self, device: str) -> str | None:
        """Why `device` cannot be used by this backend here, or None."""
        if device not in self.devices:
            return f"device {device} not supported (has {', '.join(self.devices)})"
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device"
        return None

    def capabilities(self, device: str) -> Capabilities:
        """What this backend supports on `device` (probed where it varies by device)."""
        return self.caps

    def adopt_capabilities(self, device: str, caps: Capabilities) -> None:
        """Take `caps`, what `capabilities(device)` returned in another process on this machine, as this
        backend's capabilities on `device`: perf's parent hands them to each point's fresh worker, and only for a
        device it found usable. A backend that probes (runs tiny calls to learn what it supports) overrides this
        to keep them instead of probing again; one that declares its capabilities has nothing to adopt."""

    def why_not(self, problem: Problem, device: str = "cpu", *, need_grad: bool = False) -> str | None:
        """Reason to skip `problem` on `device`, or None if this backend declares support."""
        reason = self.unavailable_reason() or self.device_unavailable_reason(device)
        return reason or self.capabilities(device).why_not(problem, need_grad=need_grad)

    @abstractmethod
    def prepare(self, inputs: Inputs, problem: Problem, *, device: str = "cpu",
                return_lse: bool = False) -> Callable[[], Any]:
        """Convert inputs once; return a zero-argument callable computing O (B, H, N, Dv), or (O, lse (B, H, N))."""

    def prepare_backward(self, inputs: Inputs, problem: Problem, grad_out: np.ndarray, *,
                         device: str = "cpu") -> Callable[[], Any]:
        """A zero-argument callable running forward and backward, returning (dQ, dK, dV)."""
        raise NotImplementedError(f"{self.name}: no backward")

    @abstractmethod
    def to_numpy(self, value) -> np.ndarray:
        """A native output (tensor/array) as float64 NumPy."""

    def audit_launches(self, target: str, *, ci: bool = False) -> tuple[KernelLaunch, ...] | None:
        """The Triton kernel launches `attnbench audit` compiles for GPU `target` ("sm_80", "sm_90", "sm_100": the
        names in `attnbench.perf.gpu_targets.TARGETS`), every candidate launch config included, each marked
        launchable or not on that target; ci: a small representative subset (what CI compiles). The audit reads
        registers, shared memory, spills and tensor-core instructions from the compiled code and fails a
        launchable one that spills, exceeds a limit or (tensor_cores) misses the tensor cores. None (the
        default): this backend has no Triton kernels to audit. `implementations/triton_blockwise.py` and
        `examples/triton_plugin/triton_example.py` declare theirs."""
        return None

    def synchronize(self, device: str) -> None:
        """Wait for queued device work (timing calls this)."""
