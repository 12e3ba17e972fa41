"""Executors: who measures a sweep's points, and where. One interface, concurrent.futures-style.

`run_sweep` wraps each point in a `PointJob` and hands it to an executor:

    future = executor.submit(job)      # a concurrent.futures.Future of a PointOutcome
    executor.slots                     # how many points the driver keeps in flight
    executor.cancel()                  # drop what has not started, stop what runs (Ctrl-C)

A future always resolves to a `PointOutcome` (a crash, a timeout or a lost worker
is a status, never an exception), and only the driver appends to results.jsonl.

- `SerialExecutor` (default): one point at a time, each in a fresh process (worker.run_isolated).
- `LocalPoolExecutor` (`--workers N`): N points at once on this machine, each pinned
  to its own GPU (CUDA_VISIBLE_DEVICES) or its own set of cores.
- `RayExecutor` (`--executor ray`, in ray_executor.py, imported only when asked for).
"""
from __future__ import annotations

import dataclasses
import os
import queue
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .machine import fingerprint
from .spec import Case, MeasureOptions
from .worker import run_isolated


@dataclass(frozen=True)
class PointJob:
    """One point to measure: the case, how hard, its timeout; caps are the backend's probed Capabilities (a dict)."""

    case: Case
    options: MeasureOptions
    timeout_s: float
    caps: dict | None = None


@dataclass(frozen=True)
class Placement:
    """Where a point runs on its machine: extra environment (CUDA_VISIBLE_DEVICES), the cores it may use, threads."""

    env: dict = field(default_factory=dict)
    cpus: tuple[int, ...] | None = None
    threads: int | None = None


@dataclass(frozen=True)
class PointOutcome:
    """(status, fields) as run_isolated returns them, plus the machine record of whoever measured the point."""

    status: str
    fields: dict
    machine: dict


def measure_point(job: PointJob, placement: Placement | None = None) -> PointOutcome:
    """Measure `job` in a fresh child process here; the child reports the machine it ran on."""
    status, fields = run_isolated(job.case, job.options, job.timeout_s, caps=job.caps,
                                  placement=placement and dataclasses.asdict(placement))
    fields = dict(fields)
    machine = fields.pop("machine", None) or fingerprint(job.case.device, probe_cuda=False)   # child died first
    return PointOutcome(status, fields, machine)


def _done(outcome: PointOutcome) -> Future:
    future: Future = Future()
    future.set_result(outcome)
    return future


class SerialExecutor:
    """Today's behaviour: each point measured when submitted, one at a time, in a fresh process."""

    slots = 1

    def submit(self, job: PointJob) -> Future:
        return _done(measure_point(job))

    def cancel(self) -> None:
        """Nothing is ever pending: submit returns a finished future."""

    def close(self) -> None:
        pass


def cpu_sets(workers: int, cpus=None) -> list[tuple[int, ...]]:
    """`workers` disjoint, near-equal sets of this process's cores (a worker gets at least one)."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if workers > len(cpus):
        raise ValueError(f"{workers} workers but only {len(cpus)} cores")
    return [tuple(cpus[i::workers]) for i in range(workers)]


def placements(device: str, workers: int, visible: str | None = None) -> list[Placement]:
    """One Placement per worker: a GPU each for cuda (from CUDA_VISIBLE_DEVICES if set), a set of cores for cpu."""
    if device == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
        gpus = [g for g in visible.split(",") if g.strip()] if visible else [str(i) for i in range(workers)]
        if workers > len(gpus):
            raise ValueError(f"{workers} workers but only {len(gpus)} GPUs visible ({visible})")
        return [Placement(env={"CUDA_VISIBLE_DEVICES": gpus[i]}) for i in range(workers)]
    return [Placement(cpus=cores) for cores in cpu_sets(workers)]


class LocalPoolExecutor:
    """N points at once on this machine, each in its own fresh process on its own GPU or set of cores.

    Concurrent CPU points share caches, memory bandwidth and the scheduler, so they disturb each
    other's timings: CPU timing sweeps should keep the default of one worker.
    """

    def __init__(self, device: str, workers: int, *, log=lambda line: print(line, file=sys.stderr, flush=True)):
        self.slots = workers
        self._free: queue.Queue = queue.Queue()
        for placement in placements(device, workers):
            self._free.put(placement)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attnbench-point")
        if device == "cpu" and workers > 1:
            log(f"warning: {workers} CPU points run at once and disturb each other's timings "
                "(shared caches and memory bandwidth); use --workers 1 for timings you will compare")

    def _run(self, job: PointJob) -> PointOutcome:
        placement = self._free.get()
        try:
            return measure_point(job, placement)
        finally:
            self._free.put(placement)

    def submit(self, job: PointJob) -> Future:
        return self._pool.submit(self._run, job)

    def cancel(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def make_executor(kind: str = "local", *, device: str = "cpu", workers: int = 1, address: str | None = None,
                  log=lambda line: print(line, file=sys.stderr, flush=True)):
    """The executor a sweep asked for: 'local' (serial, or a pool for workers > 1) or 'ray'."""
    if kind == "ray":
        from .ray_executor import RayExecutor                   # ray is an optional extra: import it only here

        return RayExecutor(address=address, log=log)
    return SerialExecutor() if workers == 1 else LocalPoolExecutor(device, workers, log=log)
