"""Peak memory of one forward call, torch_blockwise vs torch_eager, on CPU: linear vs quadratic in N.

A sweep on the shared worker, like `attnbench perf`: each point runs in a fresh
process, its peak memory measured by measure.py (peak-RSS mark reset, inputs
prepared before the baseline) and its accuracy checked; the log-log slope of
memory against N comes from analysis.slopes, about 2 for a kernel holding
(N, N) scores and about 1 for one holding an (N, block) tile. Points beyond the
memory cap are recorded as oom. The run directory gets the usual report.

    python -m attnbench.perf.blockwise_memory [--seq-lens 2048,4096,8192,16384] [--out reports]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import records
from .analysis import slopes
from .spec import MEMORY_SCAN, with_grid


def memory_table(results: list[records.PointResult]) -> str:
    """Markdown: peak MiB per N and backend (or the point's status), then each backend's fitted slope."""
    backends = sorted({r.backend for r in results})
    cell = {(r.backend, r.N): (f"{r.peak_bytes / 2**20:.0f}" if r.status == "ok" else r.status) for r in results
            if r.status != "skipped"}
    s = MEMORY_SCAN.spec
    lines = [f"peak memory of one forward, B{s.batch[0]} H{s.heads[0]} D{s.head_dims[0]} {s.dtypes[0]} (MiB)",
             "| N | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for n in sorted({n for _, n in cell}):
        lines.append(f"| {n} | " + " | ".join(cell.get((b, n), "-") for b in backends) + " |")
    fits = [f"{s['series'].split()[0]} {s['memory_slope']:.2f}" for s in slopes(results) if s["memory_slope"]]
    lines.append("log-log slope of memory vs N: " + (", ".join(fits) or "needs two N measured ok"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .commands import csv, ints

    from .report import render
    from .runner import new_run_dir, run_sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seq-lens", default=csv(MEMORY_SCAN.spec.seq_lens), help="N values")
    parser.add_argument("--out", default="reports", help="parent of the new run directory")
    args = parser.parse_args(argv)
    run_dir = new_run_dir(Path(args.out))
    profile = with_grid(MEMORY_SCAN, seq_lens=ints(args.seq_lens, "seq-lens"))
    path = run_sweep(profile.spec, run_dir, profile.options, timeout_s=profile.timeout_s)
    render(run_dir)
    print(memory_table(records.read(path)))
    print(f"report: {run_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
