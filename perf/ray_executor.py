"""Measure a sweep's points as Ray tasks, on a local Ray cluster or an existing one (`--executor ray`).

Each point is one Ray task that asks for the device it needs (num_gpus=1 for a
CUDA point, as many CPUs as the point's threads) and runs in a fresh Ray worker
process (max_calls=1, no retries). Inside it the point is measured exactly as
locally, by worker.run_isolated: the same timeout, memory cap and statuses. A
Ray worker that dies (killed, node lost) costs its point, recorded as an error.

Outcomes stream back to the driver, which alone appends to results.jsonl. Each
outcome carries the machine record of the node that measured it; a node other
than the driver's measures its own peaks once per run (cached in its temp dir).

Ray is an optional extra (`pip install attnbench[ray]`); only this module imports it.
"""
from __future__ import annotations

import fcntl
import json
import platform
import sys
import tempfile
import uuid
from concurrent.futures import Future
from pathlib import Path

from .executors import Placement, PointJob, PointOutcome, measure_point

try:
    import ray
    import ray.exceptions
except ImportError as exc:                                      # a one-line error for the CLI
    raise ImportError("Ray is not installed: pip install 'attnbench[ray]'") from exc


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
    from .machine import copy_bandwidth, matmul_peak_flops

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
        self._refs: dict[Future, ray.ObjectRef] = {}

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
            ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owns_cluster:
            ray.shutdown()
