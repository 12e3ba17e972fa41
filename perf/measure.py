"""Measure one case in the current process: accuracy, first call, peak memory, timed repeats.

Peak memory is what the attention call itself allocates. On CPU: inputs are
prepared first, the process's peak-RSS mark is reset (Linux /proc/self/clear_refs)
and read as the baseline, and the growth of `ru_maxrss` across the first call is
the point's peak. On CUDA: `max_memory_allocated` after `reset_peak_memory_stats`,
minus what was allocated before the call. Run it in a fresh process per point
(see worker.py) so one point's allocator state never shapes another's.

Free heap memory is handed back to the OS (malloc_trim) just before the
baseline, so a call's small allocations (its output) grow the RSS instead of
reusing pages that input preparation freed.

A memory cap bounds what the call may allocate beyond the baseline: RLIMIT_AS
on CPU, the per-process memory fraction on CUDA.

The process is set up first (process_setup.py): the thread count, optional CPU
pinning, and glibc told to keep freed memory so repeats measure the steady
state of a long-running process rather than the kernel's page-fault path.

The timed calls rotate among `integrity.INPUT_SETS` input sets, each prepared
before the first call, and a sample of them is verified after the timing
(integrity.py): a point is only as accurate as its timed calls.
"""
from __future__ import annotations

import resource
import time

from attnbench.problem import Problem, make_grad_out, make_inputs

from . import integrity, process_setup
from .spec import Case, MeasureOptions, load_plugins
from .timing import summarize, time_cuda, time_steady


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
    inputs = make_inputs(problem)
    if case.pass_ == "fwd":
        return backend.prepare(inputs, problem, device=case.device)
    return backend.prepare_backward(inputs, problem, make_grad_out(problem), device=case.device)


def input_addresses(calls) -> set[int]:
    """Memory of every input a prepared call reads: the converted tensors it exposes (`native_inputs`)."""
    return set().union(*(integrity.storage_addresses(tuple(getattr(call, "native_inputs", ()))) for call in calls))


def verifier(backend, case: Case, problems: list[Problem]):
    """verify(input set, result) -> what is wrong with a timed call's result (None: right), against the
    row-sampled float64 reference of that set's inputs (the rows `attnbench.check.sampled_rows` picks)."""
    from attnbench.check import sampled_rows, verify_backward, verify_forward

    verify = verify_forward if case.pass_ == "fwd" else verify_backward

    def wrong(which: int, result) -> str | None:
        problem = problems[which]
        verdicts = verify(backend, problem, result, case.device, rows=sampled_rows(problem))
        return next((v.describe() for v in verdicts if not v.passed), None)

    return wrong


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
    process_setup.trim()                                         # small allocations must grow the RSS
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
    cpus = process_setup.pin(options.pin_cpus)                  # an executor's placement may have pinned already
    if options.threads:
        threads = process_setup.set_threads(min(options.threads, len(cpus)))   # no more threads than cores
    else:
        import torch

        threads = torch.get_num_threads()
    kept = process_setup.keep_freed_memory() if options.keep_freed_memory else False
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
            "error_vs_ref": error, "accurate": passed, "timed_check": watch.findings(verifier(backend, case, problems)),
            **setup}
