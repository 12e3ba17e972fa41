"""Stage 3, measurement in the worker: one case measured in the current (fresh) process.

In: a `Case` and its `MeasureOptions` (spec.py), handed over by worker.py in a fresh child. Out: the point's
fields for that process (accuracy, first call, peak memory, timed samples and their statistics, what the
process saw meanwhile); noise.py merges several processes into the point, records.py makes it a record.

Accuracy: `attnbench.evaluate` on the case's own problem, the verdict `attnbench check` and conformance give.

Peak memory is what the attention call itself allocates. On CPU: inputs are
prepared first, the process's peak-RSS mark is reset (Linux /proc/self/clear_refs)
and read as the baseline, and the growth of `ru_maxrss` across the first call is
the point's peak. On CUDA: `max_memory_allocated` after `reset_peak_memory_stats`,
minus what was allocated before the call. Free heap memory is handed back to the OS
(malloc_trim) just before the baseline, so a call's small allocations (its output)
grow the RSS instead of reusing pages that input preparation freed. A memory cap
bounds what the call may allocate beyond the baseline: RLIMIT_AS on CPU, the
per-process memory fraction on CUDA.

The process is set up first (worker.py): the thread count, optional CPU pinning,
and glibc told to keep freed memory so repeats measure the steady state of a
long-running process rather than the kernel's page-fault path.

Timing: warm-up until the time settles, then repeats within a budget. On CUDA every
repeat is timed with device events around the call alone, after a 256 MB write that
evicts the L2 cache, so a repeat never reads a warm cache the previous repeat left
behind (a real model's attention never sees its inputs hot). The timed calls rotate
among `integrity.INPUT_SETS` input sets, each prepared before the first call, and a
sample of them is verified after the timing (integrity.py): a point is only as
accurate as its timed calls. `measure_pair` times two backends alternately for
`compare --interleaved`.

The worker's forkserver imports this module once (worker.py): the backends are discovered here, at import, so
their packages are imported once per run, not once per point. Imports only: running any torch op here would
start OpenMP threads, and a forked child of a process with a live OpenMP pool hangs on its first parallel
region.
"""
from __future__ import annotations

import resource
import time
from typing import Callable

import numpy as np

from attnbench.implementations import all_backends
from attnbench.problem import Problem, make_inputs

from . import integrity, noise, worker
from .stats import summarize
from .spec import Case, MeasureOptions, load_plugins

all_backends()

L2_FLUSH_BYTES = 256 * 1024 * 1024
SETTLE_SPREAD = 1.10     # warm-up ends when the last SETTLE_CALLS calls are within 10% of each other
SETTLE_CALLS = 3
# ... and none of them faulted in more than this many pages: the allocator has stopped growing. A heap that still
# grows (glibc reuses freed blocks only once fragmentation settles) re-faults a whole buffer now and then; a point
# timed before that shows it as minor faults per call in its noise record.
SETTLED_FAULTS = 64
MAX_WARMUP_CALLS = 30


# Called with each call's result and its timed index (None for a warm-up call), after the call's timing:
# what verifies timed calls (integrity.TimedCalls) sees every result without moving the timings.
After = Callable[[object, "int | None"], None]


def _ignore(result, index) -> None:
    """The default `after`: the result is dropped at once, as a caller that does not keep it."""


def time_callable(fn: Callable[[], object], *, synchronize: Callable[[], None] = lambda: None, warmup: int = 1,
                  min_repeats: int = 3, max_repeats: int = 100, budget_s: float = 1.0,
                  faults: list[int] | None = None, after: After = _ignore) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then at least `min_repeats`, until `budget_s` or `max_repeats`.

    `faults`, if given, receives each timed call's minor page faults (read outside the timed interval);
    `after(result, index)` runs after each call's timing.
    """
    for _ in range(warmup):
        after(fn(), None)
    synchronize()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_repeats or (len(samples) < max_repeats and time.perf_counter() < deadline):
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if faults is not None else 0
        start = time.perf_counter()
        result = fn()
        synchronize()
        samples.append(time.perf_counter() - start)
        if faults is not None:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        after(result, len(samples) - 1)
        del result                                               # not alive in the next call unless `after` keeps it
    return samples


def warm_up(fn: Callable[[], object], *, synchronize: Callable[[], None] = lambda: None, min_calls: int = 1,
            budget_s: float = 1.0, after: After = _ignore) -> int:
    """Call `fn` until its time settles (last SETTLE_CALLS within SETTLE_SPREAD), or budget_s / MAX_WARMUP_CALLS.

    Returns the number of warm-up calls. Caches, lazy initialisation, JIT and the
    allocator's first growth all show as early calls slower than the rest, or as calls that fault in pages.
    `after(result, None)` runs after each call's timing, so what it holds is in the steady state too.
    """
    times: list[float] = []
    faults: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < MAX_WARMUP_CALLS:
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        result = fn()
        synchronize()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        after(result, None)
        del result
        last = times[-SETTLE_CALLS:]
        settled = (len(times) >= max(min_calls, SETTLE_CALLS) and max(last) <= SETTLE_SPREAD * min(last)
                   and max(faults[-SETTLE_CALLS:]) <= SETTLED_FAULTS)
        if settled or (len(times) >= min_calls and time.perf_counter() > deadline):
            break
    return len(times)


def time_steady(fn: Callable[[], object], *, synchronize: Callable[[], None] = lambda: None, warmup: int = 1,
                min_repeats: int = 3, max_repeats: int = 100, budget_s: float = 1.0, after: After = _ignore) -> dict:
    """Warm up until settled, then time repeats; with what the process saw meanwhile. `after` as in time_callable.

    Returns samples (s), warmup_calls, minor_faults_per_call (mean: what faulting costs the point) and
    minor_faults_median_per_call (the typical call: 0 in steady state even when the heap grew once), cpu_share (the
    process's CPU time over wall time, capped at 1: below 1 when another task held the CPU),
    involuntary context switches per second, and the machine's load around it.
    """
    warmup_calls = warm_up(fn, synchronize=synchronize, min_calls=warmup, budget_s=budget_s, after=after)
    before_sys, before_ru = noise.system_snapshot(), resource.getrusage(resource.RUSAGE_SELF)
    # Process CPU time, all threads: a backend may compute on its own pool (XLA) while the caller waits.
    cpu0, wall0 = time.process_time(), time.perf_counter()
    faults: list[int] = []
    samples = time_callable(fn, synchronize=synchronize, warmup=0, min_repeats=min_repeats,
                            max_repeats=max_repeats, budget_s=budget_s, faults=faults, after=after)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    after_ru, after_sys = resource.getrusage(resource.RUSAGE_SELF), noise.system_snapshot()
    return {"samples": samples, "warmup_calls": warmup_calls,
            # the calls' own faults: copies of checked outputs (`after`) fault outside the timed interval
            "minor_faults_per_call": float(np.mean(faults)),
            "minor_faults_median_per_call": float(np.median(faults)),
            "cpu_share": min(1.0, cpu / wall) if wall > 0 else None,
            "involuntary_switches_per_s": (after_ru.ru_nivcsw - before_ru.ru_nivcsw) / wall if wall > 0 else None,
            "timed_wall_s": wall, **noise.system_delta(before_sys, after_sys, wall)}


def time_cuda(fn: Callable[[], object], *, warmup: int = 1, min_repeats: int = 3, max_repeats: int = 100,
              budget_s: float = 1.0, after: After = _ignore) -> list[float]:
    """Seconds per call from CUDA events, with an L2 flush (not timed) before each repeat; `after` as in
    time_callable, once the device is synchronised."""
    import torch

    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        after(fn(), None)
    torch.cuda.synchronize()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_repeats or (len(samples) < max_repeats and time.perf_counter() < deadline):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
        after(result, len(samples) - 1)
        del result
    return samples


def accuracy(backend, case: Case) -> tuple[float, bool]:
    """(max error, passed) of `attnbench.evaluate` on the case's own problem, the pass it times: the forward,
    and for "bwd" / "fwd+bwd" the gradients too (a wrong backward makes the point inaccurate). Every row at
    small sizes, the rows `attnbench.check.choose_rows` picks at length (the row-sampled float64 reference
    costs O(rows M D)), so the accuracy is that of the very N and M being timed; the same verdict `attnbench
    check` and conformance give, the call's contract and declared known deviations included."""
    from attnbench.evaluate import evaluate    # here, not at import: the CLI builds its parser from this module

    result = evaluate(backend, case.problem, case.device, backward=case.pass_ != "fwd")
    return result.max_error, bool(result.passed)


def prepare(backend, case: Case, problem: Problem | None = None):
    """The zero-argument callable of the case's pass on `problem`'s inputs (default the case's), converted
    (not timed)."""
    problem = problem or case.problem
    from attnbench.check import grad_out_for

    inputs = make_inputs(problem)
    if case.pass_ == "fwd":
        return backend.prepare(inputs, problem, device=case.device)
    return backend.prepare_backward(inputs, problem, grad_out_for(problem), device=case.device)


def input_addresses(calls) -> set[int]:
    """Memory of every input a prepared call reads: the converted tensors it exposes (`native_inputs`: q, k, v;
    `native_kv`: a layout's storage read natively; `native_grad_out`: the backward's dO), as the check's contract
    reads them."""
    def read(call) -> tuple:
        grad_out = getattr(call, "native_grad_out", None)
        return (*getattr(call, "native_inputs", ()), *getattr(call, "native_kv", {}).values(),
                *(() if grad_out is None else (grad_out,)))

    return set().union(*(integrity.storage_addresses(read(call)) for call in calls))


def verifier(backend, case: Case, problems: list[Problem], calls: list):
    """verify(input set, result) -> what is wrong with a timed call's result (None: right), against the float64
    reference of that set's inputs on the rows `attnbench check` judges (`check.default_rows`: every row with the
    full check's bounds at small sizes, the row-sampled reference at length), so a timed call gets the verdict
    `evaluate` gives; `calls` the prepared callables, whose route (pad-and-mask) maps results to the layout's
    shapes as the check does."""
    from attnbench.check import default_rows, verify_backward, verify_forward

    verify = verify_forward if case.pass_ == "fwd" else verify_backward

    def wrong(which: int, result) -> str | None:
        problem = problems[which]
        verdicts = verify(backend, problem, result, case.device, rows=default_rows(problem), run=calls[which])
        return next((v.describe() for v in verdicts if not v.passed), None)

    return wrong


def inputs_written(backend, case: Case, problems: list[Problem], calls: list) -> str | None:
    """What the calls wrote of their inputs over the whole timing, read once after it: the call's contract of
    `attnbench.check` (`inputs_contract`, `grad_out_contract`) on the converted inputs each call exposes, against
    its set's inputs made again (deterministic, so no copy is held while timing). The check's single call is
    clean for a kernel that writes its inputs from its second call on (prescaling q in place once)."""
    from attnbench.check import grad_out_contract, grad_out_for, inputs_contract

    for which, (problem, call) in enumerate(zip(problems, calls)):
        inputs = make_inputs(problem)
        broken = inputs_contract(backend, call, inputs, make_inputs(problem))
        if case.pass_ != "fwd":
            broken += grad_out_contract(backend, call, problem, grad_out_for(problem))
        if broken:
            return f"timed calls wrote their inputs (input set {which}): {'; '.join(broken)}"
    return None


def with_inputs_written(findings: dict, written: str | None) -> dict:
    """`integrity.TimedCalls.findings` with an input write as its failure (a wrong output stays the first)."""
    return findings if written is None or findings["failure"] else {**findings, "failure": written}


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                         # 5: reset the peak RSS to the current RSS
    except OSError:
        pass                                                     # non-Linux: the delta may under-count; say so


def set_cpu_cap(cap: int | None) -> None:
    """Limit further address space to `cap` bytes beyond what is mapped now (None lifts the limit)."""
    limit = resource.RLIM_INFINITY if cap is None else _vm_size_bytes() + cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _first_call_cpu(fn, cap):
    worker.trim()                                         # small allocations must grow the RSS
    _reset_peak_rss()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    set_cpu_cap(cap)
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024   # Linux: KiB
    return seconds, peak


def _first_call_cuda(fn, cap):
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    if cap is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (before + cap) / total))
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated() - before


def setup_process(options: MeasureOptions) -> dict:
    """Threads, pinning and allocator of this worker, as set (recorded with the point)."""
    cpus = worker.pin(options.pin_cpus)                  # an executor's placement may have pinned already
    if options.threads:
        threads = worker.set_threads(min(options.threads, len(cpus)))   # no more threads than cores
    else:
        import torch

        threads = torch.get_num_threads()
    kept = worker.keep_freed_memory() if options.keep_freed_memory else False
    return {"threads": threads, "cpus": list(cpus), "freed_memory_kept": kept}


def measure_case(case: Case, options: MeasureOptions, *, check_accuracy: bool = True) -> dict:
    """Measured fields of one point; raises on failure (the worker classifies the exception).

    check_accuracy False skips the reference check (a point's second and later processes).
    """
    from attnbench.implementations import get_backend

    setup = setup_process(options)
    load_plugins(case.plugins)
    backend = get_backend(case.backend)
    problems = integrity.input_problems(case.problem)
    calls = [prepare(backend, case, p) for p in problems]
    first_call = _first_call_cuda if case.device == "cuda" else _first_call_cpu
    first_s, peak = first_call(calls[0], options.memory_cap)      # the kernel's very first call in this process
    set_cpu_cap(None)
    error, passed = accuracy(backend, case) if check_accuracy else (None, None)
    set_cpu_cap(options.memory_cap if case.device != "cuda" else None)
    rotation = integrity.Rotation(calls)
    watch = integrity.TimedCalls(rotation, input_addresses(calls))
    # At least two rotations of warm-up: the outputs held and the copies of checked ones take heap the call's own
    # buffers then cannot reuse; until each set has come round twice, calls re-fault those buffers (torch_eager at
    # N 1024: a typical 4096 faults a call after one warm-up call, 256 after four, 0 after six).
    repeats = dict(warmup=max(options.warmup, 2 * len(calls)), min_repeats=options.min_repeats,
                   max_repeats=options.max_repeats, budget_s=options.time_budget_s, after=watch)
    if case.device == "cuda":
        timed = {"samples": time_cuda(rotation, **repeats)}
    else:
        timed = time_steady(rotation, synchronize=lambda: backend.synchronize(case.device), **repeats)
        set_cpu_cap(None)                    # the cap bounds the call; the reference the check computes is ours
    return {"first_call_s": first_s, "peak_bytes": int(peak), **timed, **summarize(timed["samples"]),
            "error_vs_ref": error, "accurate": passed,
            "timed_check": with_inputs_written(watch.findings(verifier(backend, case, problems, calls)),
                                               inputs_written(backend, case, problems, calls)),
            **setup}


def time_alternately(fn_a, fn_b, *, synchronize, options: MeasureOptions) -> tuple[list[float], list[float]]:
    """Seconds per call of A and B, timed in adjacent pairs (ABBA order), after both have warmed up."""
    for fn in (fn_a, fn_b):
        warm_up(fn, synchronize=synchronize, min_calls=options.warmup, budget_s=options.time_budget_s / 2)
    a_times, b_times = [], []
    deadline = time.perf_counter() + options.time_budget_s
    while len(a_times) < options.min_repeats or (len(a_times) < options.max_repeats
                                                  and time.perf_counter() < deadline):
        order = ((fn_a, a_times), (fn_b, b_times))
        for fn, out in order if len(a_times) % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            synchronize()
            out.append(time.perf_counter() - start)
    return a_times, b_times


def measure_pair(case_a: Case, case_b: Case, options: MeasureOptions) -> dict:
    """In one (fresh) process: A's and B's samples, timed alternately."""
    from attnbench.implementations import get_backend

    setup = setup_process(options)
    load_plugins(case_a.plugins + case_b.plugins)
    backend_a, backend_b = get_backend(case_a.backend), get_backend(case_b.backend)
    fn_a, fn_b = prepare(backend_a, case_a), prepare(backend_b, case_b)

    def sync():
        backend_a.synchronize(case_a.device)
        backend_b.synchronize(case_b.device)

    a, b = time_alternately(fn_a, fn_b, synchronize=sync, options=options)
    return {"samples_a": a, "samples_b": b, **setup}
