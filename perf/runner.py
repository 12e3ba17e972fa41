"""Run a sweep: expand the spec, measure each point in isolation, append its record, show progress."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import derived, records
from .machine import measure_machine
from .measure import MeasureOptions
from .records import PointResult
from .sweep import Case, SweepSpec, expand
from .worker import run_isolated


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


def run_sweep(spec: SweepSpec, run_dir: Path, options: MeasureOptions, *, timeout_s: float = 60.0,
              log=lambda line: print(line, file=sys.stderr, flush=True)) -> Path:
    """Measure every case of `spec` not already in run_dir/results.jsonl; returns the results path."""
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
    start = time.perf_counter()
    for i, case in enumerate(todo):
        log(f"[{i + 1}/{len(todo)}] {case.backend:<20} {case.pass_:<7} {case.problem.id:<28} "
            f"ETA {_eta(time.perf_counter() - start, i, len(todo) - i)}")
        caps = get_backend(case.backend).capabilities(case.device)
        status, fields = run_isolated(case, options, timeout_s, caps=caps)
        records.append(path, result_of(case, status, fields, machine))
        if status != "ok":
            log(f"    -> {status}: {fields.get('message', '')}")
    log(f"{len(todo)} points in {time.perf_counter() - start:.0f} s -> {path}")
    return path
