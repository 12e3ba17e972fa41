"""Stage 2, execution in isolation: one case in a fresh process with a timeout; an OOM, a timeout or a crash is
the point's status. In: a `Case`, `MeasureOptions`, a timeout (from the runner or an executor). Out: (status,
fields), the fields measure.py returned from each process merged by noise.py (`run_isolated`).

Each point runs in a child of a multiprocessing *forkserver* that has imported
torch and the backends once: the child is a fresh process (own allocator, own
peak-RSS mark, own address-space limit) without paying torch's ~3 s import per
point. The forkserver never touches CUDA, so children may initialise it.

A point is measured in `options.processes` such children in turn (its interval
then describes reruns, see noise.py); if the result is noisy it is measured
again, at most `options.remeasure` times, and the calmest attempt is kept with
its noise flag.

The forkserver also runs backend discovery and imports this module once, and
the parent hands each child the backend's capabilities it already probed, so
neither discovery, scipy's import nor the SDPA kernel probes (~1-2 s) are paid
per point.

Backends registered only in the parent (a test's) do not exist in the child;
a case names the module files that register them (`Case.plugins`) and the child
imports those first.

Set-up of the fresh process before it measures (`pin`, `set_threads`, `keep_freed_memory`, `trim`, called by
measure.py). Threads: torch's intra-op pool (OpenMP and MKL) via `torch.set_num_threads`, and NumPy's OpenBLAS
(the `numpy` backend's matmuls) through its own C entry point, since OpenBLAS read its environment when the
forkserver imported NumPy. Allocator: by default glibc serves every allocation over 128 KiB-32 MiB with a fresh
mmap and returns it on free, so a call that allocates (N, M) buffers re-faults every page of them on every call
(torch_eager at N = 1024: ~16,000 minor faults per call, 2.5x its steady-state time). A long-running model keeps
its memory; `keep_freed_memory` makes the worker do the same (no mmap for large blocks, no trimming of the heap
top), and `trim` hands free memory back to the OS on request, before the peak-memory baseline, so a call's own
allocations show in its peak RSS instead of reusing pages freed by input preparation.

By hand, for one point:  python -m attnbench.perf.worker '<case json>'
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import time

from . import integrity, noise
from .machine import fingerprint, with_cached_bandwidth
from .spec import LONG_POINT_TIMEOUT_S, Case, MeasureOptions

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc")
# Imports only (measure.py discovers the backends as it is imported): running any torch op here would start
# OpenMP threads, and a forked child of a process with a live OpenMP pool hangs on its first parallel region.
_PRELOAD = ["torch", "numpy", "attnbench.implementations", "attnbench.perf.measure", "attnbench.perf.worker"]


M_TRIM_THRESHOLD = -1          # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
_OPENBLAS_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "openblas_set_num_threads64_", "scipy_openblas_set_num_threads")


def _libc():
    try:
        return ctypes.CDLL(None)                                 # the running program's symbols: libc's included
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no per-call mmap/munmap, no heap trim); False where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    ok_mmap = libc.mallopt(M_MMAP_MAX, 0)                     # large blocks come from the heap, reused on free
    ok_trim = libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)     # never give the heap top back on free
    return bool(ok_mmap and ok_trim)


def trim() -> bool:
    """Return free heap memory to the OS now (malloc_trim); False where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def _openblas_libs() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if len(ln.split()) >= 6}
    except OSError:
        return []
    return sorted(p for p in paths if "openblas" in os.path.basename(p).lower() and ".so" in p)


def set_threads(n: int) -> int:
    """Use `n` threads in torch (OpenMP, MKL) and OpenBLAS; returns what torch reports afterwards."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)                                 # for anything that reads them later
    torch.set_num_threads(n)
    for path in _openblas_libs():
        lib = ctypes.CDLL(path)
        for name in _OPENBLAS_SETTERS:
            if hasattr(lib, name):
                getattr(lib, name)(n)
                break
    return torch.get_num_threads()


def pin(cpus: tuple[int, ...] | None) -> tuple[int, ...]:
    """Pin this process to `cpus` (None: leave it); returns the CPUs it may run on."""
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    return tuple(sorted(os.sched_getaffinity(0)))


def classify(exc: BaseException) -> str:
    """'oom' for allocation failures (MemoryError, torch CPU/CUDA OOM), else 'error'.

    The exception's causes count too: torch.compile re-raises a MemoryError as
    InternalTorchDynamoError("MemoryError: ...") from it.
    """
    while exc is not None:
        text = str(exc).lower()
        if isinstance(exc, MemoryError) or text.startswith("memoryerror") or any(m in text for m in OOM_MARKERS):
            return "oom"
        exc = exc.__cause__ or exc.__context__
    return "error"


def _options(options: dict) -> MeasureOptions:
    pin = options.get("pin_cpus")
    return MeasureOptions(**{**options, "pin_cpus": tuple(pin) if pin else None})


def _child(case_json: str, options: dict, caps: dict | None, conn, placement: dict | None = None,
           check_accuracy: bool = True) -> None:
    from .measure import measure_case, set_cpu_cap

    try:
        case = Case.from_json(case_json)
        _apply_placement(placement)
        if caps is not None:
            _reuse_capabilities(case, caps)
        # before the memory cap: naming the CPU spawns `uname -p`. The copy bandwidth this machine measured
        # (peaks.json), so a point measured elsewhere (Ray) still has its bandwidth fraction.
        machine = with_cached_bandwidth(fingerprint(case.device))
        fields = measure_case(case, _options(options), check_accuracy=check_accuracy)
        conn.send(("ok", {**fields, "machine": machine}))
    except BaseException as exc:  # noqa: BLE001 - every failure is a recorded status
        if options.get("memory_cap") is not None:
            set_cpu_cap(None)                                    # room to report the failure
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        conn.send((classify(exc), {"message": f"{type(exc).__name__}: {first_line}"}))
    finally:
        conn.close()


def _apply_placement(placement: dict | None) -> None:
    """Pin this child to its GPU (CUDA_VISIBLE_DEVICES, before CUDA starts), its cores (affinity) and thread count."""
    if not placement:
        return
    import torch

    os.environ.update(placement.get("env") or {})
    cpus, threads = placement.get("cpus"), placement.get("threads")
    if cpus:
        os.sched_setaffinity(0, cpus)
        threads = min(threads or torch.get_num_threads(), len(cpus))     # no more threads than cores
    if threads:
        torch.set_num_threads(threads)


def capabilities_from_dict(caps: dict):
    """`dataclasses.asdict(Capabilities)` (through JSON or pickling: lists for tuples) back to Capabilities, the
    declared `Precision` of each dtype and the per-dtype pairs included."""
    from attnbench.implementations import Capabilities
    from attnbench.precision import Precision

    def as_tuple(value):
        return tuple(as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value

    fields = {k: as_tuple(v) for k, v in caps.items()}
    fields["precision"] = tuple((dtype, Precision(**model)) for dtype, model in caps.get("precision", ()))
    return Capabilities(**fields)


def _reuse_capabilities(case: Case, caps: dict) -> None:
    """Give the child's backend the capabilities the parent already probed (SDPA probes cost ~1 s a kernel)."""
    from attnbench.implementations import get_backend

    from .spec import load_plugins

    load_plugins(case.plugins)
    get_backend(case.backend).adopt_capabilities(case.device, capabilities_from_dict(caps))


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def run_isolated(case: Case, options: MeasureOptions, timeout_s: float, *,
                 caps=None, placement: dict | None = None) -> tuple[str, dict]:
    """(status, fields) of one case measured in `options.processes` fresh processes, re-measured while noisy.

    status: ok, oom, timeout or error (the first process that fails decides).
    caps: the backend's Capabilities on the case's device (a dataclass or its dict), if the caller
    has them (saves re-probing). placement: {"env": {...}, "cpus": (...), "threads": n} for the child.
    A measured point's fields carry "machine", the first child's fingerprint, and "options".
    """
    caps = dataclasses.asdict(caps) if dataclasses.is_dataclass(caps) else caps
    best, accuracy, machine, checks = None, None, None, []
    for attempt in range(1 + max(0, options.remeasure)):
        runs = []
        for i in range(max(1, options.processes)):
            status, fields = run_one(case, options, timeout_s, caps=caps, placement=placement,
                                     check_accuracy=accuracy is None and i == 0)
            if status != "ok":
                return status, fields
            checks.append(fields.pop("timed_check"))
            runs.append(fields)
        if accuracy is None:
            accuracy = {k: runs[0][k] for k in ("error_vs_ref", "accurate")}
            machine = runs[0]["machine"]
        fields = {**noise.merge(runs), **accuracy}
        if best is None or noise.noise_score(fields) < noise.noise_score(best):
            best = fields
        best["noise"]["attempts"] = attempt + 1
        if not best["noisy"]:
            break
    # Every process's timed calls count, the attempts not kept too: one wrong timed call anywhere is a wrong kernel.
    timed = integrity.combine(checks)
    wrong = {"accurate": False} if timed["failure"] else {}
    return "ok", {**best, **wrong, "message": timed["failure"] or "", "integrity": timed, "machine": machine,
                  "options": dataclasses.asdict(options)}


def run_one(case: Case, options: MeasureOptions, timeout_s: float, *, caps: dict | None = None,
            placement: dict | None = None, check_accuracy: bool = True) -> tuple[str, dict]:
    """(status, fields) of one fresh process measuring the case (fields as `measure_case` returns them)."""
    return _spawn(_child, (case.to_json(), dataclasses.asdict(options), caps), (placement, check_accuracy),
                  options, timeout_s)


def _pair_child(case_a: str, case_b: str, options: dict, caps: list, conn) -> None:
    try:
        from .measure import measure_pair

        cases = [Case.from_json(case_a), Case.from_json(case_b)]
        for case, known in zip(cases, caps):
            if known is not None:
                _reuse_capabilities(case, known)
        conn.send(("ok", measure_pair(*cases, _options(options))))
    except BaseException as exc:  # noqa: BLE001 - every failure is a recorded status
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        conn.send((classify(exc), {"message": f"{type(exc).__name__}: {first_line}"}))
    finally:
        conn.close()


def run_pair(case_a: Case, case_b: Case, options: MeasureOptions, timeout_s: float, *,
             caps=(None, None)) -> tuple[str, list[dict] | dict]:
    """("ok", per-process {samples_a, samples_b}) of A and B timed alternately in each of `options.processes`
    fresh processes, or (status, fields) of the first process that failed."""
    caps = [dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c for c in caps]
    runs = []
    for _ in range(max(1, options.processes)):
        status, fields = _spawn(_pair_child, (case_a.to_json(), case_b.to_json(), dataclasses.asdict(options), caps),
                                (), options, timeout_s)
        if status != "ok":
            return status, fields
        runs.append(fields)
    return "ok", runs


def _poll(conn, timeout_s: float, slice_s: float = 0.5) -> bool:
    """`conn.poll(timeout_s)` in slices: a Ctrl-C that the kernel handed to another thread of this process (torch's,
    tqdm's) interrupts no blocking call of the main thread, so one long poll would sit out the whole point's
    timeout before Python raised KeyboardInterrupt; between slices it is raised within slice_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if conn.poll(max(0.0, min(slice_s, left))):
            return True
        if left <= slice_s:
            return False


def _spawn(target, args: tuple, after_conn: tuple, options: MeasureOptions, timeout_s: float) -> tuple[str, dict]:
    """Run target(*args, conn, *after_conn) in a fresh forkserver child; (status, fields) it sent, or why not."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, send, *after_conn), daemon=True)
    proc.start()
    send.close()
    try:
        if not _poll(recv, timeout_s):
            proc.kill()
            proc.join()
            return "timeout", {"message": f"no result within {timeout_s:g} s"}
        return recv.recv()
    except EOFError:                                             # the child died without a word
        proc.join()
        return _died(proc.exitcode, options)
    finally:
        proc.join(5)
        recv.close()


def _died(exitcode: int | None, options: MeasureOptions) -> tuple[str, dict]:
    sig = -exitcode if exitcode and exitcode < 0 else None
    name = signal.Signals(sig).name if sig else f"exit code {exitcode}"
    # Under an address-space cap an allocation failure can surface as a crash inside a C++ allocator;
    # SIGKILL without a cap is the kernel's OOM killer.
    if sig and (options.memory_cap is not None or sig == signal.SIGKILL):
        return "oom", {"message": f"worker killed ({name}) under memory pressure"}
    return "error", {"message": f"worker died ({name})"}


def main(argv: list[str]) -> int:
    options = MeasureOptions(**json.loads(argv[1] if len(argv) > 1 else "{}"))
    status, fields = run_isolated(Case.from_json(argv[0]), options, LONG_POINT_TIMEOUT_S)
    print(json.dumps({"status": status, **fields}))
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
