"""Integrity of a timing: the calls we time are the calls we check, and nothing faster than the machine is ranked.

A kernel can fake its speed: cache its output on the inputs' addresses, compute once and hand back
uninitialised memory afterwards, do less work once the accuracy check is past, or leave the work to
happen after the timer stops. Each measuring process therefore:

- **rotates inputs**: the timed calls cycle through INPUT_SETS input sets of the same shapes (seeds
  seed, seed + 1, ...), each prepared once before any timing (`Rotation`: one index, one modulo per call);
- **verifies timed calls**: the outputs of the first, a middle and the last timed call are copied after
  their timing and compared with the float64 reference of the set each was given, on the rows `check` judges
  (`attnbench.check.verify_forward` / `verify_backward`); a wrong one makes the point inaccurate;
- **checks its inputs after the timing**: each set's converted inputs against the set made again
  (`measure.inputs_written`, the call's contract of `attnbench.check`): a write makes the point inaccurate;
- **watches output storage**: the caller holds the outputs of the last INPUT_SETS calls (as a model holds
  its activations), so a fresh allocation can never land in their memory; an output there is memory the
  backend handed out before (a cache or a reused buffer). An output in an input's memory is reported too.

And the sweep, from the records: a point faster than ROOFLINE_MARGIN x the machine's measured roofline
is `implausible` (never ranked); one more than SUSPICIOUS_SPEEDUP x faster than the fastest trusted peer
of its size is marked "suspicious: look".

Shape letters: B batch, H heads, Hkv key/value heads, N queries, M keys, D head dim, Dv value dim.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import Callable

import numpy as np

from attnbench.problem import Problem

INPUT_SETS = 3
# The peaks are the best of 5 big torch matmuls (machine.py); a kernel may beat that a little (a better BLAS
# path, a quieter moment), never by half again: beyond it the timed call cannot have done the FLOPs.
ROOFLINE_MARGIN = 1.5
# Faster than every trusted peer by more than this is possible (a new algorithm) but worth a look.
SUSPICIOUS_SPEEDUP = 20.0


def input_problems(problem: Problem, count: int = INPUT_SETS) -> list[Problem]:
    """`count` problems of `problem`'s shapes with different input values (seeds seed .. seed + count - 1)."""
    return [dataclasses.replace(problem, seed=problem.seed + i) for i in range(count)]


class Rotation:
    """One zero-argument callable cycling through the prepared calls of several input sets, one per call.

    What it adds inside the timed region: a method call, a modulo and an index, 0.27 us a call on the shared
    2-core development machine (timeit, against calling the prepared callable directly): 0.1% of the fastest
    `--quick` point there (0.29 ms).
    """

    def __init__(self, calls: list[Callable[[], object]]):
        self.calls, self.count = calls, 0

    def __call__(self):
        call = self.calls[self.count % len(self.calls)]
        self.count += 1
        return call()

    @property
    def last_set(self) -> int:
        """The input set of the latest call."""
        return (self.count - 1) % len(self.calls)


def snapshot(value):
    """A copy of a call's result that later calls cannot change: tensors cloned, arrays copied, tuples
    element-wise; anything else (a JAX array is immutable) kept as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (tuple, list)):
        return type(value)(snapshot(v) for v in value)
    return value


def storage_addresses(value) -> set[int]:
    """Start addresses of the memory behind a result's tensors/arrays (torch: the storage; NumPy: the base
    array's buffer), so views of one buffer share an address; empty for anything else."""
    import torch

    if isinstance(value, torch.Tensor):
        return {value.untyped_storage().data_ptr()} - {0}
    if isinstance(value, np.ndarray):
        while isinstance(value.base, np.ndarray):
            value = value.base
        return {value.__array_interface__["data"][0]} - {0}
    if isinstance(value, (tuple, list)):
        return set().union(*(storage_addresses(v) for v in value))
    return set()


def foreign_tensor(value) -> str | None:
    """The class of a torch.Tensor subclass in a call's result, else None. A subclass runs its own code whenever
    the output is read (`__torch_function__`), so its work can happen after the timer stopped: on a thread the
    call started, or deferred until the harness reads it (a CPU kernel has no stream for the timer to wait on)."""
    import torch

    if isinstance(value, (tuple, list)):
        return next(filter(None, map(foreign_tensor, value)), None)
    if isinstance(value, torch.Tensor) and type(value) not in (torch.Tensor, torch.nn.Parameter):
        return type(value).__qualname__
    return None


def checked_calls(n: int) -> list[int]:
    """Timed calls whose outputs are verified, of n: the first, the last power of two before the last, the last."""
    middle = 1 << max(0, (n - 2).bit_length() - 1) if n > 2 else 0
    return sorted({0, middle, n - 1}) if n else []


class TimedCalls:
    """Watches the results of a `Rotation`'s calls, called after each call's timing (`after` in measure.py).

    Holds the last INPUT_SETS results, copies the results of the calls `checked_calls` may pick (the first
    and each power of two; the last is held anyway), and notes an output in memory the caller still holds
    or in an input's memory. `findings(verify)` verifies the picked calls at the end.
    """

    def __init__(self, rotation: Rotation, input_addresses: set[int]):
        self.rotation, self.input_addresses = rotation, input_addresses
        self.held: deque = deque(maxlen=len(rotation.calls))     # (result, its addresses)
        self.copies: dict[int, tuple[int, object]] = {}          # timed call -> (input set, snapshot)
        self.timed = 0
        self.reused: str | None = None
        self.aliased: str | None = None
        self.deferred: str | None = None

    def __call__(self, result, index: int | None) -> None:
        """Record `result` of timed call `index` (None: a warm-up call, only held)."""
        addresses = storage_addresses(result)
        if index is not None:
            self.timed = index + 1
            self._note_storage(result, addresses, index)
            if index & (index - 1) == 0:                         # 0 and the powers of two
                # Keep the first and the power of two before this one: the middle, should this call be the last.
                self.copies = {i: c for i, c in self.copies.items() if i in (0, index // 2)}
                self.copies[index] = (self.rotation.last_set, snapshot(result))
        self.held.append((result, addresses))

    def _note_storage(self, result, addresses: set[int], index: int) -> None:
        subclass = self.deferred is None and foreign_tensor(result)
        if subclass:
            self.deferred = (f"timed call {index + 1} returned a torch.Tensor subclass ({subclass}), whose own code "
                             "runs when the output is read: its work need not have happened inside the timing")
        held = set().union(*(a for _, a in self.held))
        if self.reused is None and addresses & held:
            self.reused = (f"timed call {index + 1} returned memory the caller still held from one of the "
                           f"{len(self.held)} calls before it (a cached or reused output)")
        if self.aliased is None and addresses & self.input_addresses:
            self.aliased = f"timed call {index + 1} returned an output in an input's memory"

    def findings(self, verify: Callable[[int, object], str | None]) -> dict:
        """{"timed_calls", "checked", "failure", "reused_storage", "aliases_input"}; verify(input set, result)
        says what is wrong with a result (None: right). The first wrong call checked is the failure."""
        picked = checked_calls(self.timed)
        results = {**self.copies, self.timed - 1: (self.rotation.last_set, self.held[-1][0])} if picked else {}
        failure = None
        for i in picked:
            which, result = results[i]
            wrong = verify(which, result)
            if wrong:
                failure = f"timed call {i + 1} of {self.timed} wrong (input set {which}): {wrong}"
                break
        failure = failure or self.deferred
        return {"input_sets": len(self.rotation.calls), "timed_calls": self.timed, "checked": [i + 1 for i in picked],
                "failure": failure, "reused_storage": self.reused, "aliases_input": self.aliased}


def combine(findings: list[dict]) -> dict:
    """One point's `TimedCalls.findings` over its processes: timed calls made and checked in all, and the
    first failure, reused storage and input alias any process found."""
    first = lambda key: next((f[key] for f in findings if f[key]), None)  # noqa: E731
    return {"input_sets": findings[0]["input_sets"], "processes": len(findings),
            "timed_calls": sum(f["timed_calls"] for f in findings),
            "timed_calls_checked": sum(len(f["checked"]) for f in findings),
            "failure": first("failure"), "reused_storage": first("reused_storage"),
            "aliases_input": first("aliases_input")}


def implausible_reason(flop_count: int, seconds: float, attainable_flops: float) -> str | None:
    """Why a point is impossible on this machine: its FLOP/s beyond ROOFLINE_MARGIN x the attainable rate
    (min(measured peak FLOP/s, measured bandwidth x FLOPs/byte)); None if it is within."""
    rate = flop_count / seconds
    if rate <= ROOFLINE_MARGIN * attainable_flops:
        return None
    return (f"implausible: {rate / 1e12:.3g} TFLOP/s is {rate / attainable_flops:.0f}x this machine's measured "
            f"roofline ({attainable_flops / 1e12:.3g} TFLOP/s; allowed up to {ROOFLINE_MARGIN:g}x): the timed "
            "calls cannot have done the work")
