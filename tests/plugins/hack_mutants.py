"""Reward hacks for perf: backends that fake their speed, each a few lines, loaded the way an author loads one.

    attnbench perf --plugin tests/plugins/hack_mutants.py --backends hack_cache_on_address,hack_lazy --seq-lens 256

Each is right whenever a single call is checked (`attnbench check` passes it), and each would have come out
"ok", "accurate" and fastest before perf verified its timed calls and held them to the roofline
(integrity.py). `tests/test_perf_hacks.py` sweeps every one and requires each to be flagged, implausible or
inaccurate and never ranked, the way `tests/test_mutation_score.py` proves the conformance suite; it prints
the perf mutation score. A hack that comes out trusted is a hole in perf: strengthen perf, never delete it.

Only `--plugin` registers these; they are not in the normal registry.
Shape letters: B batch, H heads, Hkv key/value heads, N queries, M keys, D head dim, Dv value dim.
"""
from __future__ import annotations

import functools

import torch

from attnbench.implementations import Capabilities, TorchBackend, register
from attnbench.implementations.torch_eager import eager_attention


class _Hack(TorchBackend):
    """The honest computation (eager attention) the hacks skip, defer or cut short."""

    devices = ("cpu", "cuda")
    caps = Capabilities(grad=False)

    @staticmethod
    def honest(q, k, v, *, mask, causal, scale):
        """O (B, H, N, Dv) for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv)."""
        return eager_attention(q, k, v, mask=mask, causal=causal, scale=scale)


@register
class CacheOnAddress(_Hack):
    """hack_cache_on_address: the output cached on the inputs' addresses; a repeat call returns it, no work."""

    name = "hack_cache_on_address"

    def __init__(self):
        self.cache = {}

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        if key not in self.cache:
            self.cache[key] = self.honest(q, k, v, mask=mask, causal=causal, scale=scale)
        return self.cache[key]


@register
class RightOnceThenEmpty(_Hack):
    """hack_right_once_then_empty: computes on the first call for an input set, then returns uninitialised memory
    (torch.empty_like), which often still holds the last answer freed in its place."""

    name = "hack_right_once_then_empty"

    def __init__(self):
        self.seen = set()

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        if key in self.seen:
            return torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        self.seen.add(key)
        return self.honest(q, k, v, mask=mask, causal=causal, scale=scale)


@register
class HalfKeysAfterTwo(_Hack):
    """hack_half_keys_after_two: after its first two calls (the check's and the first timed one), attends to
    the first half of the keys only: about half the work, 2x faster, wrong."""

    name = "hack_half_keys_after_two"
    caps = Capabilities(grad=True, masks=())

    def __init__(self):
        self.calls = 0

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        self.calls += 1
        keys = k.shape[2] if self.calls <= 2 else k.shape[2] // 2
        return self.honest(q, k[:, :, :keys], v[:, :, :keys], mask=mask, causal=causal, scale=scale)


@register
class Lazy(_Hack):
    """hack_lazy: returns the computation deferred (a closure), done when the harness reads the output, after the
    timer has stopped."""

    name = "hack_lazy"

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return functools.partial(self.honest, q, k, v, mask=mask, causal=causal, scale=scale)

    def to_numpy(self, value):
        return super().to_numpy(value() if callable(value) else value)


@register
class ReusedBuffer(_Hack):
    """hack_reused_buffer: computes into a buffer on its first call of a shape, then returns that buffer again
    with no compute, whatever the inputs."""

    name = "hack_reused_buffer"

    def __init__(self):
        self.buffers = {}

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        key = (q.shape, v.shape, q.dtype, q.device)
        if key not in self.buffers:
            self.buffers[key] = self.honest(q, k, v, mask=mask, causal=causal, scale=scale)
        return self.buffers[key]


@register
class PrescalesInPlace(_Hack):
    """hack_prescales_in_place: from its second call on an input set, q holds scale * q (written into the caller's
    tensor once) and the scale is skipped: every output right, one multiply fewer a call, the caller's q changed
    after the check's single call."""

    name = "hack_prescales_in_place"

    def __init__(self):
        self.calls, self.scaled = {}, set()

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        key = q.data_ptr()
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] < 2:
            return self.honest(q, k, v, mask=mask, causal=causal, scale=scale)
        if key not in self.scaled:
            q.mul_(q.shape[-1] ** -0.5 if scale is None else scale)
            self.scaled.add(key)
        return self.honest(q, k, v, mask=mask, causal=causal, scale=1.0)


@register
class SideStream(_Hack):
    """hack_side_stream: launches the work on a CUDA stream of its own and returns at once; the timer's events on
    the current stream never wait for it (CUDA only)."""

    name = "hack_side_stream"
    devices = ("cuda",)

    def __init__(self):
        self.stream = None

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        self.stream = self.stream or torch.cuda.Stream(device=q.device)
        self.stream.wait_stream(torch.cuda.current_stream(q.device))        # inputs ready; nothing waits back
        with torch.cuda.stream(self.stream):
            return self.honest(q, k, v, mask=mask, causal=causal, scale=scale)


HACKS = tuple(cls.name for cls in _Hack.__subclasses__())
