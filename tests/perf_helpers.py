"""Shared bits of the perf tests: a sweep through the CLI into a temporary directory, synthetic records."""
from __future__ import annotations

import json
from pathlib import Path

from attnbench.cli import main
from attnbench.perf import records
from attnbench.perf.records import PointResult

FAST = ["--time-budget", "0.02", "--repeats", "5", "--head-dim", "16", "--heads", "2", "--processes", "2", "--remeasure", "0"]


def perf(tmp_path: Path, *args: str) -> tuple[int, Path]:
    """Run `attnbench perf ... --out tmp_path`; (exit code, the run directory)."""
    code = main(["perf", "--out", str(tmp_path), *FAST, *args])
    runs = sorted(tmp_path.glob("run-*"))
    return code, runs[-1] if runs else tmp_path


# What differs between two measurements of the same point: timings, their noise, the machine that measured, and
# how many calls were timed (so checked: `integrity`).
TIMING = {"time_median_s", "time_iqr_s", "time_ci95_s", "first_call_s", "samples", "tflops", "gbps",
          "fraction_of_peak", "peak_bytes", "machine", "tflops_fa2", "process_medians_s", "noisy", "noise",
          "integrity", "bandwidth_fraction"}


def untimed(path) -> dict[str, dict]:
    """Records of a results.jsonl by key, without what differs between two measurements of the same point."""
    return {r.key: {k: v for k, v in r.to_dict().items() if k not in TIMING} for r in records.read(path)}


def by_backend(run_dir: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["backend"], []).append(row)
    return rows


def synthetic(backend: str, n: int, samples: list[float], **extra) -> PointResult:
    """An ok record with the given timing samples, as if measured in 3 processes (a third of the samples each)."""
    median = sorted(samples)[len(samples) // 2]
    thirds = [sorted(samples[i::3]) for i in range(3)]
    process_medians = tuple(t[len(t) // 2] for t in thirds if t)
    key = f"{backend}|cpu|fwd|B=1,H=2,N={n},D=16,Hkv=2,M={n},Dv=16,dtype=float32"
    fields = dict(key=key, backend=backend, device="cpu", dtype="float32", B=1, H=2, Hkv=2, N=n, M=n, D=16, Dv=16,
                  causal=None, pass_="fwd", status="ok", time_median_s=median, time_iqr_s=0.01 * median,
                  samples=tuple(samples), peak_bytes=n * n * 8, predicted_pattern_bytes=n * n * 8, flops=8 * n * n,
                  tflops=1e-3, fraction_of_peak=0.1, error_vs_ref=1e-7, accurate=True,
                  process_medians_s=process_medians, noisy=False,
                  machine={"device": "cpu", "peak_flops": {"float32": 1e11}, "peak_bandwidth": 1e10})
    return PointResult(**{**fields, **extra})
