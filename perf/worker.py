"""Run one case in a fresh process, with a timeout; an OOM, a timeout or a crash becomes the point's status.

Each point runs in a child of a multiprocessing *forkserver* that has imported
torch and the backends once: the child is a fresh process (own allocator, own
peak-RSS mark, own address-space limit) without paying torch's ~3 s import per
point. The forkserver never touches CUDA, so children may initialise it.

Backends registered only in the parent (a test's) do not exist in the child;
a case names the module files that register them (`Case.plugins`) and the child
imports those first.

By hand, for one point:  python -m attnbench.perf.worker '<case json>'
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sys

from .machine import fingerprint
from .measure import MeasureOptions, measure_case, set_cpu_cap
from .sweep import Case

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc")
# Imports only: running any torch op here would start OpenMP threads, and a forked child of a
# process with a live OpenMP pool hangs on its first parallel region.
_PRELOAD = ["torch", "numpy", "attnbench.implementations", "attnbench.perf.measure"]


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


def _child(case_json: str, options: dict, caps: dict | None, conn, placement: dict | None = None) -> None:
    try:
        case = Case.from_json(case_json)
        _apply_placement(placement)
        if caps is not None:
            _reuse_capabilities(case, caps)
        machine = fingerprint(case.device)       # before the memory cap: naming the CPU spawns `uname -p`
        conn.send(("ok", {**measure_case(case, MeasureOptions(**options)), "machine": machine}))
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


def _reuse_capabilities(case: Case, caps: dict) -> None:
    """Give the child's backend the capabilities the parent already probed (SDPA probes cost ~1 s a kernel)."""
    from attnbench.implementations import Capabilities, get_backend
    from .sweep import load_plugins

    load_plugins(case.plugins)
    backend = get_backend(case.backend)
    known = Capabilities(**{k: tuple(v) if isinstance(v, list) else v for k, v in caps.items()})
    backend.capabilities = lambda device: known                  # instance attribute shadows the probing method


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def run_isolated(case: Case, options: MeasureOptions, timeout_s: float, *,
                 caps=None, placement: dict | None = None) -> tuple[str, dict]:
    """(status, fields) of one case measured in a fresh process: status ok, oom, timeout or error.

    caps: the backend's Capabilities on the case's device (a dataclass or its dict), if the caller
    has them (saves re-probing). placement: {"env": {...}, "cpus": (...), "threads": n} for the child.
    A measured point's fields carry "machine", the child's fingerprint.
    """
    ctx = _context()
    caps = dataclasses.asdict(caps) if dataclasses.is_dataclass(caps) else caps
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case.to_json(), dataclasses.asdict(options), caps, send, placement),
                       daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
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
    status, fields = run_isolated(Case.from_json(argv[0]), MeasureOptions(**json.loads(argv[1] if len(argv) > 1
                                                                                         else "{}")), 600)
    print(json.dumps({"status": status, **fields}))
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
