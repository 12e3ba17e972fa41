"""Run a sweep: expand the spec, measure each point in isolation, append its record, show progress."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

from . import derived, records
from .executors import PointJob, SerialExecutor
from .machine import measure_machine, same_machine
from .measure import MeasureOptions
from .records import PointResult
from .sweep import Case, SweepSpec, expand


def new_run_dir(out: Path) -> Path:
    """reports/run-YYYYmmdd-HHMMSS (a numeric suffix if taken)."""
    base = Path(out) / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir, i = base, 1
    while run_dir.exists():
        run_dir, i = Path(f"{base}-{i}"), i + 1
    run_dir.mkdir(parents=True)
    return run_dir


def machine_info(run_dir: Path, spec: SweepSpec) -> dict:
    """machine.json of the run: measured once, reused on resume."""
    path = run_dir / "machine.json"
    if path.exists():
        return json.loads(path.read_text())
    info = measure_machine(spec.device, spec.dtypes)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def result_of(case: Case, status: str, fields: dict, machine: dict) -> PointResult:
    """The record of a measured case, with its derived figures."""
    p = case.problem
    flop_count, byte_count = derived.flops(p, case.pass_), derived.min_bytes(p, case.pass_)
    extra = {}
    if status == "ok":
        t = fields["time_median_s"]
        peak = machine["peak_flops"].get(p.dtype)
        extra = dict(tflops=flop_count / t / 1e12, gbps=byte_count / t / 1e9,
                     fraction_of_peak=peak and derived.roofline_fraction(flop_count, byte_count, t, peak,
                                                                         machine["peak_bandwidth"]))
    measured = {k: v for k, v in fields.items() if k != "repeats"}
    if "time_ci95_s" in measured:
        measured["time_ci95_s"] = tuple(measured["time_ci95_s"])
    measured["samples"] = tuple(measured.get("samples", ()))
    return PointResult(**records.base_fields(case), status=status, flops=flop_count, bytes_moved=byte_count,
                       predicted_pattern_bytes=derived.predicted_pattern_bytes(p), machine=machine,
                       **measured, **extra)


def _eta(elapsed: float, done: int, remaining: int) -> str:
    if not done:
        return "?"
    s = int(elapsed / done * remaining)
    return f"{s // 60}m{s % 60:02d}s"


def with_peaks(measured_by: dict, known: dict) -> dict:
    """The record's machine: the measuring worker's own, with the peaks of `known` if it is the same machine."""
    if "peak_flops" in measured_by or not same_machine(measured_by, known):
        return measured_by
    return {**known, **measured_by}


def run_sweep(spec: SweepSpec, run_dir: Path, options: MeasureOptions, *, timeout_s: float = 60.0,
              executor=None, log=lambda line: print(line, file=sys.stderr, flush=True)) -> Path:
    """Measure every case of `spec` not already in run_dir/results.jsonl; returns the results path.

    executor: who measures the points (executors.py; default one at a time here). Points are
    appended as they complete, by this process alone.
    """
    from attnbench.implementations import get_backend

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.jsonl"
    cases, skipped = expand(spec)
    done = records.done_keys(path)
    machine = machine_info(run_dir, spec)
    for case, reason in skipped:
        if case.key not in done:
            records.append(path, PointResult(**records.base_fields(case), status="skipped", message=reason))
    todo = [c for c in cases if c.key not in done]
    if len(todo) < len(cases):
        log(f"resume: {len(cases) - len(todo)} of {len(cases)} points already in {path}")
    executor = executor or SerialExecutor()
    jobs = iter(PointJob(c, options, timeout_s, dataclasses.asdict(get_backend(c.backend).capabilities(c.device)))
                for c in todo)
    start, finished, pending = time.perf_counter(), 0, {}
    try:
        while True:
            while len(pending) < executor.slots and (job := next(jobs, None)) is not None:
                log(f"[{finished + len(pending) + 1}/{len(todo)}] {job.case.backend:<20} {job.case.pass_:<7} "
                    f"{job.case.problem.id:<28} ETA {_eta(time.perf_counter() - start, finished, len(todo) - finished)}")
                pending[executor.submit(job)] = job.case
            if not pending:
                break
            completed, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in completed:
                case, outcome = pending.pop(future), future.result()
                records.append(path, result_of(case, outcome.status, outcome.fields,
                                               with_peaks(outcome.machine, machine)))
                finished += 1
                if outcome.status != "ok":
                    log(f"    -> {case.backend} {case.problem.id}: {outcome.status}: "
                        f"{outcome.fields.get('message', '')}")
    except BaseException:
        executor.cancel()                                       # Ctrl-C: stop what is in flight; records stay
        raise
    finally:
        executor.close()
    log(f"{len(todo)} points in {time.perf_counter() - start:.0f} s -> {path}")
    return path
