"""Benchmarks and cross-checks run by hand, each through the same pipeline as `attnbench perf`:

    python -m attnbench.perf.tools memory-scan [--seq-lens 2048,4096,8192,16384] [--out reports]
    python -m attnbench.perf.tools gpu-bench [--out reports] [--dtype float16] [--causal none] [--seq-lens ...]
    python -m attnbench.perf.tools crosscheck reports/run-...  [--plain-allocator] [--min-run-time 0.5]
    OMP_NUM_THREADS=1 python -m attnbench.perf.tools reference

- memory-scan: peak memory of one forward call, torch_blockwise against torch_eager, on CPU (spec.MEMORY_SCAN):
  linear against quadratic in N. Each point in a fresh process, its peak memory measured by measure.py and its
  accuracy checked; the log-log slope of memory against N (analysis.slopes) is about 2 for a kernel holding
  (N, N) scores and about 1 for one holding an (N, block) tile. Points beyond the memory cap are oom.
- gpu-bench: triton_blockwise against SDPA's flash kernel on CUDA (spec.GPU_BENCH), forward and forward+backward,
  timed with CUDA events and an L2 flush, beside the predicted roofline bound for this GPU
  (`audit.predicted_on_device`, published peaks; "of bound" = measured / bound). Needs CUDA.
- crosscheck: a run's times against an independent timer, torch.utils.benchmark's `blocked_autorange`: for
  every ok CPU point, a fresh process (same thread count; glibc keeping freed memory as the worker does, unless
  --plain-allocator) prepares the same call and times it; the ratio attnbench / Timer per point and its median.
- reference: the row-sampled float64 reference's own cost (a benchmark, not a test; quote it with the command):
  the reference half of a row-sampled forward check at N = M = 65,536, D = 64, one head, 64 rows, and the
  reference dK, dV of 64 key rows at N = M = 16,384.

The sweeps write the usual run directory (results.jsonl, report.html) and print their table from its records.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from attnbench.precision import HALF_DTYPES

from . import records
from .commands import csv, ints
from .spec import GPU_BENCH, MEMORY_SCAN, Profile, with_grid


def sweep(profile: Profile, out: str) -> tuple[Path, list[records.PointResult]]:
    """Run `profile` into a new run directory under `out` and render its report; (run_dir, its records)."""
    from .report import render
    from .runner import new_run_dir, run_sweep

    run_dir = new_run_dir(Path(out))
    results = records.read(run_sweep(profile.spec, run_dir, profile.options, timeout_s=profile.timeout_s))
    render(run_dir, results)
    return run_dir, results


def memory_rows(results: list[records.PointResult]) -> list[list[str]]:
    """Peak MiB per N (a row) and backend (a column), or the point's status."""
    backends = sorted({r.backend for r in results})
    cell = {(r.backend, r.N): (f"{r.peak_bytes / 2**20:.0f}" if r.status == "ok" else r.status) for r in results
            if r.status != "skipped"}
    return [["N", *backends], *([str(n), *(cell.get((b, n), "-") for b in backends)]
                                for n in sorted({n for _, n in cell}))]


def memory_scan(argv: list[str]) -> int:
    from .analysis import slopes
    from .report import markdown_table

    parser = argparse.ArgumentParser(prog="python -m attnbench.perf.tools memory-scan",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seq-lens", default=csv(MEMORY_SCAN.spec.seq_lens), help="N values")
    parser.add_argument("--out", default="reports", help="parent of the new run directory")
    args = parser.parse_args(argv)
    run_dir, results = sweep(with_grid(MEMORY_SCAN, seq_lens=ints(args.seq_lens, "seq-lens")), args.out)
    s = MEMORY_SCAN.spec
    print(f"peak memory of one forward, B{s.batch[0]} H{s.heads[0]} D{s.head_dims[0]} {s.dtypes[0]} (MiB)")
    print(markdown_table(memory_rows(results)), end="")
    fits = [f"{f['series'].split()[0]} {f['memory_slope']:.2f}" for f in slopes(results) if f["memory_slope"]]
    print("log-log slope of memory vs N: " + (", ".join(fits) or "needs two N measured ok"))
    print(f"report: {run_dir / 'report.html'}")
    return 0


def gpu_rows(results: list[records.PointResult], device_name: str) -> list[list[str]]:
    """Per point: time, TFLOP/s, peak memory and the predicted roofline bound on this GPU, or the status."""
    from .audit import predicted_on_device

    rows = [["backend", "pass", "causal", "D", "N", "ms", "TFLOP/s", "peak MiB", "bound", "of bound", "ok"]]
    for r in results:
        head = [r.backend, r.pass_, str(r.causal), str(r.D), str(r.N)]
        if r.status != "ok":
            rows.append([*head, f"{r.status}: {r.message}", "", "", "", "", ""])
            continue
        bound = predicted_on_device(device_name, b=r.B, h=r.H, n=r.N, d=r.D, dtype=r.dtype, causal=r.causal,
                                    pass_=r.pass_)
        rows.append([*head, f"{r.time_median_s * 1e3:.3f}", f"{r.tflops:.1f}", f"{r.peak_bytes / 2**20:.1f}",
                     "-" if bound is None else f"{bound['tflops']:.0f}",
                     "-" if bound is None else f"{r.tflops / bound['tflops']:.1%}", "yes" if r.accurate else "NO"])
    return rows


def gpu_table(results: list[records.PointResult], machine: dict) -> str:
    """The measured matmul ceiling, then `gpu_rows` as a terminal table."""
    from .report import text_table

    dtype, peak = next(iter((machine.get("peak_flops") or {}).items()), (None, None))
    short = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
    device = machine.get("device_name", "?")
    title = f"device: {device}; measured {short} matmul peak: {peak / 1e12:.0f} TFLOP/s" if peak else \
        f"device: {device}"
    return title + "\n" + text_table(gpu_rows(results, machine.get("device_name", "")))


def gpu_bench(argv: list[str]) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m attnbench.perf.tools gpu-bench",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="reports", help="parent of the new run directory")
    parser.add_argument("--dtype", default=GPU_BENCH.spec.dtypes[0], choices=HALF_DTYPES)
    parser.add_argument("--causal", default="none,top_left", help="none and/or top_left, comma-separated")
    parser.add_argument("--seq-lens", default=csv(GPU_BENCH.spec.seq_lens), help="N values, comma-separated")
    args = parser.parse_args(argv)
    profile = with_grid(GPU_BENCH, dtypes=(args.dtype,), seq_lens=ints(args.seq_lens, "seq-lens"),
                        causal=tuple(None if c == "none" else c for c in args.causal.split(",")))
    if not torch.cuda.is_available():
        print("gpu-bench: no CUDA device here; this benchmark needs a GPU (nothing was run).")
        return 1
    from .runner import machine_info

    run_dir, results = sweep(profile, args.out)
    print(gpu_table(results, machine_info(run_dir, profile.spec)))
    print(f"report: {run_dir / 'report.html'}")
    return 0


_TIMER_CHILD = """
import json, sys
from attnbench.perf import worker
from attnbench.perf.measure import prepare
from attnbench.perf.spec import Case, load_plugins
case, threads, keep, min_run_time = Case.from_json(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
worker.set_threads(threads)
if keep:
    worker.keep_freed_memory()
import torch.utils.benchmark as tb
from attnbench.implementations import get_backend
load_plugins(case.plugins)
fn = prepare(get_backend(case.backend), case)
fn()
m = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
print(json.dumps({"median": m.median}))
"""


def timer_median(case_json: str, threads: int, keep_freed_memory: bool, min_run_time: float) -> float:
    """Seconds per call by blocked_autorange in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _TIMER_CHILD, case_json, str(threads),
                          "1" if keep_freed_memory else "0", str(min_run_time)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median"]


def crosscheck(argv: list[str]) -> int:
    from attnbench.problem import Problem

    from .spec import Case

    parser = argparse.ArgumentParser(prog="python -m attnbench.perf.tools crosscheck")
    parser.add_argument("run_dir")
    parser.add_argument("--plain-allocator", action="store_true", help="do not keep freed memory in the timer's process")
    parser.add_argument("--min-run-time", type=float, default=0.5)
    args = parser.parse_args(argv)
    ratios = []
    for r in records.read(Path(args.run_dir) / "results.jsonl"):
        if r.status != "ok" or r.device != "cpu":
            continue
        problem = Problem.parse(r.key.split("|", 3)[3])
        case = Case(r.backend, problem, r.pass_, r.device)      # backends from discovery (no --plugin files)
        threads = (r.noise or {}).get("threads") or 1
        t = timer_median(case.to_json(), threads, not args.plain_allocator, args.min_run_time)
        ratios.append(r.time_median_s / t)
        print(f"{r.time_median_s / t:7.3f}  attnbench {r.time_median_s * 1e3:9.3f} ms  Timer {t * 1e3:9.3f} ms  "
              f"{'noisy ' if r.noisy else ''}{r.key}", flush=True)
    print(f"median ratio attnbench / blocked_autorange over {len(ratios)} points: {np.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


def _timed(fn) -> str:
    """Wall and CPU seconds of fn(): on a shared machine CPU time is what one idle core would take."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return f"{time.perf_counter() - wall:.2f} s wall, {time.process_time() - cpu:.2f} s CPU"


def reference(argv: list[str]) -> int:
    from attnbench.check import RowSample, forward_reference
    from attnbench.problem import Problem, make_grad_out, make_inputs
    from attnbench.reference import sdpa_backward_rows

    argparse.ArgumentParser(prog="python -m attnbench.perf.tools reference").parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    p = Problem(B=1, H=1, N=65536, M=65536, D=64, dtype="float32", causal="bottom_right")
    inputs = make_inputs(p)
    rows = np.sort(np.random.default_rng(0).choice(p.N, 64, replace=False))
    seconds = _timed(lambda: forward_reference(inputs, p, RowSample(tuple(rows.tolist()), None)))
    print(f"forward reference side, N=M=65536 D=64 H=1, 64 rows (O, lse, bound, naive): {seconds}")
    p = Problem(B=1, H=1, N=16384, M=16384, D=64, dtype="float32")
    inputs, g = make_inputs(p), make_grad_out(p)
    keys = np.sort(np.random.default_rng(1).choice(p.M, 64, replace=False))
    seconds = _timed(lambda: sdpa_backward_rows(inputs.q, inputs.k, inputs.v, g, [0], keys))
    print(f"backward reference dK, dV of 64 key rows (and dQ of 1 row), N=M=16384 D=64 H=1: {seconds}")
    return 0


TOOLS = {"memory-scan": memory_scan, "gpu-bench": gpu_bench, "crosscheck": crosscheck, "reference": reference}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TOOLS:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return TOOLS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
