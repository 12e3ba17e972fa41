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
- `RayExecutor` (`--executor ray`): each point a Ray task, on a local Ray cluster or an existing one.

Stage 2, execution: in, `PointJob`s from the runner; out, futures of `PointOutcome`s (worker.py's status and
fields, and the machine that measured). Nothing here writes results.jsonl.

Ray: each point is one Ray task that asks for the device it needs (num_gpus=1 for a CUDA point, as many CPUs
as the point's threads) and runs in a fresh Ray worker process (max_calls=1, no retries). Inside it the point is
measured exactly as locally, by worker.run_isolated: the same timeout, memory cap and statuses. A Ray worker
that dies (killed, node lost) costs its point, recorded as an error. Each outcome carries the machine record of
the node that measured it; a node other than the driver's measures its own peaks once per run (cached in its
temp dir). Ray is an optional extra (`pip install attnbench[ray]`), imported only when a RayExecutor is made.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import platform
import queue
import sys
import tempfile
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .machine import copy_bandwidth, fingerprint, matmul_peak_flops
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
        return RayExecutor(address=address, log=log)
    return SerialExecutor() if workers == 1 else LocalPoolExecutor(device, workers, log=log)


def _ray():
    """The ray module (an optional extra), imported on first use; an ImportError the CLI prints as one line."""
    try:
        import ray
        import ray.exceptions
    except ImportError as exc:
        raise ImportError("Ray is not installed: pip install 'attnbench[ray]'") from exc
    return ray


def threads_of(job: PointJob) -> int:
    """CPU threads the point uses: its --threads if the options carry one, else 1."""
    return int(getattr(job.options, "threads", None) or 1)


def resources_of(job: PointJob) -> dict:
    """What the point's Ray task asks the scheduler for."""
    cpus = threads_of(job)
    return {"num_cpus": cpus, "num_gpus": 1} if job.case.device == "cuda" else {"num_cpus": cpus}


def node_peaks(machine: dict, dtype: str, run_token: str) -> dict:
    """This node's measured peaks for `dtype` and the copy bandwidth, measured once per run and node.

    Tasks on one node share a file in its temp dir, under a lock, so only the first measures.
    """
    device = machine["device"]
    path = Path(tempfile.gettempdir()) / f"attnbench-peaks-{run_token}-{device}.json"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        peaks = json.loads(path.read_text()) if path.exists() else {"peak_flops": {}}
        for wanted in dict.fromkeys([dtype, "float32"]):            # float32 always: machine.roofline_flops
            if wanted not in peaks["peak_flops"]:
                peaks["peak_flops"][wanted] = matmul_peak_flops(wanted, device)
        if "peak_bandwidth" not in peaks:
            peaks["peak_bandwidth"] = copy_bandwidth(device)
            peaks["peaks_measured_by"] = "best of 5 on this node, once per run (see machine.py)"
        path.write_text(json.dumps(peaks))
    return peaks


def ray_point(job: PointJob, driver_host: str, run_token: str) -> PointOutcome:
    """The Ray task: measure `job` in a fresh child here; a node other than the driver's adds its own peaks."""
    outcome = measure_point(job, Placement(threads=threads_of(job)))
    machine = outcome.machine
    if machine.get("host") != driver_host and outcome.status == "ok":
        machine = {**machine, **node_peaks(machine, job.case.problem.dtype, run_token)}
    return PointOutcome(outcome.status, outcome.fields, machine)


def _lost(exc: BaseException) -> PointOutcome:
    """The outcome of a task Ray could not finish: its worker died, it was cancelled, or it raised."""
    ray = _ray()
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        message = "cancelled"
    elif isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        message = f"Ray worker died: {type(exc).__name__}"
    else:
        message = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    return PointOutcome("error", {"message": message}, {})       # the machine is unknown: grouped as such


class RayExecutor:
    """Points as Ray tasks. Connects to `address` ('auto', 'HOST:PORT', 'ray://...') or starts a local cluster."""

    def __init__(self, address: str | None = None, *, log=lambda line: print(line, file=sys.stderr, flush=True),
                 **init_kwargs):
        ray = self._ray = _ray()
        self._owns_cluster = not ray.is_initialized()
        if self._owns_cluster:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
            except ConnectionError as exc:
                raise ConnectionError(f"cannot reach a Ray cluster at {address!r}: {exc}") from None
        resources = ray.cluster_resources()
        log(f"Ray cluster: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs")
        # Enough in flight to fill the cluster; the rest stay with the driver so Ctrl-C loses little.
        self.slots = max(1, 2 * int(resources.get("CPU", 1)))
        self._remote = ray.remote(max_calls=1, max_retries=0)(ray_point)
        self._driver_host = platform.node()
        self._run_token = uuid.uuid4().hex[:12]
        self._refs: dict[Future, object] = {}                    # future -> its ray.ObjectRef

    def submit(self, job: PointJob) -> Future:
        ref = self._remote.options(**resources_of(job)).remote(job, self._driver_host, self._run_token)
        future: Future = Future()
        self._refs[future] = ref

        def settle(ray_future):
            self._refs.pop(future, None)
            try:
                future.set_result(ray_future.result())
            except BaseException as exc:                         # noqa: BLE001 - a lost point is a status
                future.set_result(_lost(exc))

        ref.future().add_done_callback(settle)
        return future

    def cancel(self) -> None:
        for ref in list(self._refs.values()):
            self._ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owns_cluster:
            self._ray.shutdown()
