"""triton_tutorial06: Triton's tutorial 06 "fused attention" (FlashAttention-2 forward and backward), from your copy.

The tutorial is not part of the triton wheel and its code is not copied here: set ATTNBENCH_TUTORIAL06 to a
copy of `python/tutorials/06-fused-attention.py` from triton's repository at the tag of your installed triton.
The adapter imports that file and calls its `attention(q, k, v, causal, sm_scale)` (the autograd Function, so
forward and backward are the tutorial's kernels) on q, k, v (B, H, N, D); the output is (B, H, N, D).

Devices: "cuda" compiled; "cpu" only under the Triton interpreter (TRITON_INTERPRET=1 before triton is first
imported; the conformance conftest sets it without CUDA). Triton 3.9's interpreter rejects block pointers, so
on the CPU only the tutorial's tensor-descriptor form runs. The tutorial asks the GPU driver for its device at
import; on a machine without one the adapter answers for the driver during that import (device "cpu",
target backend "interpreter", neither cuda nor hip), which is the only change the interpreter form needs.
Under the interpreter the forward's autotuner keeps one config (BLOCK_M 128, BLOCK_N 64: the one the tutorial
itself pins under pytest), since benchmarking configs needs a GPU.

Declared constraints, from the tutorial's code and what was measured (issue 17):
    float16 only     the kernels cast P and dS with `.to(tl.float16)`;
    N = M            one N_CTX for queries and keys;       Hkv = H, Dv = D   one head count and head dim;
    N a multiple of 128   the forward loads whole BLOCK_M x BLOCK_N tiles without masking: at N = 97 it is
                     silently wrong (error 0.673 against the plain formula's 0.00117) and at N = 192 the
                     interpreter aborts the process ("double free or corruption"); only the backward asserts it;
    D in {64, 128}   the tutorial asserts D in {16, 32, 64, 128, 256} and `static_assert(BLOCK_N <= HEAD_DIM)`
                     with BLOCK_N 64; 256 is left out under the interpreter for time, as N, M > 256 are;
    causal top-left only (N = M, so both alignments agree); no bool/bias masks; contiguous inputs only (the
    backward asserts q, k, v, O and dO share strides); no log-sum-exp (the tutorial keeps it in base 2, private).

Shape letters: B batch, H heads, N queries, M keys, D head dim.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys

import torch

from attnbench.implementations import Capabilities, TorchBackend, register

ENV = "ATTNBENCH_TUTORIAL06"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRETER_MAX_SEQ = 256
PINNED_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 64}
CAPS = Capabilities(dtypes=("float16",), causal=("top_left",), masks=(), mask_with_causal=False, gqa=False,
                    dv_differs=False, same_length=True, seq_multiple=128, head_dim_choices=(64, 128),
                    strided=False, grad=True)


class _InterpreterDriver:
    """What the tutorial asks `triton.runtime.driver.active` at import, answered for a machine without a GPU."""

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("interpreter", 0, 32)


@contextlib.contextmanager
def _driver_for_import():
    """Answer for the GPU driver while the tutorial is imported, if there is none (the interpreter on a CPU)."""
    from triton.runtime import driver

    try:
        driver.active
        yield
        return
    except RuntimeError:
        pass
    driver.set_active(_InterpreterDriver())
    try:
        yield
    finally:
        driver._active = None


@functools.cache
def load_tutorial():
    """The imported tutorial module, or the reason it cannot be used here."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton not importable ({exc}); pip install 'attnbench[triton]'"
    path = os.environ.get(ENV)
    if not path:
        return (f"set {ENV} to a copy of python/tutorials/06-fused-attention.py from triton's repository at the "
                f"tag of your triton (the tensor-descriptor version runs under the interpreter)")
    if not os.path.isfile(path):
        return f"{ENV}={path!r}: no such file"
    spec = importlib.util.spec_from_file_location("attnbench_peers_tutorial06_kernel", path)
    module = importlib.util.module_from_spec(spec)
    try:
        with _driver_for_import():
            spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of someone else's file is a reason, not a crash
        return f"{ENV}={path!r} does not import: {type(exc).__name__}: {exc}"
    if not callable(getattr(module, "attention", None)):
        return f"{ENV}={path!r} has no attention(q, k, v, causal, sm_scale)"
    if INTERPRETED:
        _pin_one_config(module)
    sys.modules[spec.name] = module
    return module


def _pin_one_config(module) -> None:
    """Keep the forward autotuner's pinned config only: choosing among several benchmarks them on a GPU."""
    for tuner in (getattr(module, name, None) for name in ("_attn_fwd", "_attn_fwd_tma")):
        configs = getattr(tuner, "configs", None)
        if configs:
            tuner.configs = [c for c in configs if c.kwargs == PINNED_CONFIG][:1] or configs[:1]


@register
class TritonTutorial06(TorchBackend):
    """triton_tutorial06: Triton tutorial 06 fused attention from ATTNBENCH_TUTORIAL06 (float16, N = M, N % 128 = 0)."""

    name = "triton_tutorial06"
    devices = ("cpu", "cuda")
    caps = CAPS

    def unavailable_reason(self) -> str | None:
        found = load_tutorial()
        return found if isinstance(found, str) else None

    def device_unavailable_reason(self, device: str) -> str | None:
        reason = super().device_unavailable_reason(device)
        if reason is None and device == "cpu" and not INTERPRETED:
            reason = "CPU runs need TRITON_INTERPRET=1 (the Triton interpreter)"
        if reason is None and device == "cuda" and INTERPRETED:
            reason = "the tutorial was loaded for the Triton interpreter (TRITON_INTERPRET=1); unset it for CUDA"
        return reason

    def simulated_reason(self, device: str) -> str | None:
        return "runs under the Triton interpreter on the CPU" if device == "cpu" and INTERPRETED else None

    def capabilities(self, device: str) -> Capabilities:
        return CAPS.replace(max_seq=INTERPRETER_MAX_SEQ) if device == "cpu" else CAPS

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        sm_scale = q.shape[-1] ** -0.5 if scale is None else scale
        return load_tutorial().attention(q, k, v, causal is not None, sm_scale)
