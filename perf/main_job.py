"""`attnbench run`: the README's main job, a small `attnbench perf` sweep (about a minute on a 2-core CPU).

Every available backend is checked against the float64 reference and timed on
a few sizes through the same sweep, worker and report code as `attnbench perf`;
the table printed at the end is read back from the run's results.jsonl.
"""
from __future__ import annotations

from pathlib import Path

from . import records
from .report import render
from .runner import new_run_dir, run_sweep
from .spec import RUN, MeasureOptions, SweepSpec, measurable_backends


def format_table(results: list[records.PointResult]) -> str:
    """Measured points, one line each: time, rate, memory and accuracy."""
    head = f"{'backend':<22} {'pass':<7} {'H':>3} {'N':>6} {'status':<7} {'median ms':>10} {'TFLOP/s':>8} {'peak MiB':>9} " \
           f"{'max err':>9}  ok"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.status == "skipped":
            continue
        if r.status != "ok":
            lines.append(f"{r.backend:<22} {r.pass_:<7} {r.H:>3} {r.N:>6} {r.status:<7} {r.message}")
            continue
        lines.append(f"{r.backend:<22} {r.pass_:<7} {r.H:>3} {r.N:>6} {r.status:<7} {r.time_median_s * 1e3:>10.2f} "
                     f"{r.tflops:>8.3f} {r.peak_bytes / 2 ** 20:>9.1f} {r.error_vs_ref:>9.2e}  "
                     f"{'yes' if r.accurate else 'NO'}")
    return "\n".join(lines)


def main_job(out_dir: Path, device: str = "cpu", spec: SweepSpec = RUN.spec,
             options: MeasureOptions = RUN.options, log=print) -> Path:
    """Run the default check-and-time sweep on `device`; returns the report directory."""
    run_dir = new_run_dir(Path(out_dir))
    # Like --quick, the main job leaves out backends simulated on this device (7 of its 9.5 min went to timing
    # triton_blockwise under the Triton interpreter); conformance still checks them, `perf --backends` times them.
    backends = spec.backends if spec.backends is not None else measurable_backends(device, spec.plugins)
    path = run_sweep(SweepSpec(**{**spec.__dict__, "device": device, "backends": backends}), run_dir, options,
                     timeout_s=RUN.timeout_s, log=log)
    render(run_dir)
    log(format_table(records.read(path)))
    return run_dir
