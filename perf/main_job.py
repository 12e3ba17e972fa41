"""`attnbench run`: check every available backend on a few problems and time each; print and save a report."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from attnbench.check import check_forward
from attnbench.implementations import all_backends
from attnbench.problem import Problem, make_inputs
from attnbench.reference import attention_flops

from .timing import summarize, time_callable

DEFAULT_PROBLEMS = [
    Problem(B=1, H=4, N=512, D=64, dtype="float32"),
    Problem(B=1, H=4, N=512, D=64, dtype="float32", causal="top_left"),
    Problem(B=1, H=4, N=1024, D=64, dtype="float32"),
]
CHECK_MAX_N = 256   # accuracy is checked on the same problem shrunk to this length: the float64 reference is O(N^2)


def run_point(backend, problem: Problem, device: str) -> dict:
    """One row: accuracy on a shrunk copy of `problem`, then time on the full one."""
    small = problem.replace(N=min(problem.N, CHECK_MAX_N), M=min(problem.M, CHECK_MAX_N))
    verdict = check_forward(backend, small, device)[0]
    fn = backend.prepare(make_inputs(problem), problem, device=device)
    stats = summarize(time_callable(fn, synchronize=lambda: backend.synchronize(device), budget_s=0.5))
    flops = attention_flops(problem.B, problem.H, problem.N, problem.M, problem.D, problem.Dv, causal=problem.causal)
    return {"backend": backend.name, "device": device, "problem": problem.id, **stats,
            "tflops": flops / stats["time_median_s"] / 1e12, "max_error": verdict.max_error,
            "accurate": verdict.passed}


def format_table(rows: list[dict]) -> str:
    head = f"{'backend':<22} {'problem':<34} {'median ms':>10} {'TFLOP/s':>8} {'max err':>9}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['backend']:<22} {r['problem']:<34} {r['time_median_s'] * 1e3:>10.2f} {r['tflops']:>8.3f} "
                     f"{r['max_error']:>9.2e}  {'yes' if r['accurate'] else 'NO'}")
    return "\n".join(lines)


def main_job(out_dir: Path, device: str = "cpu", problems=DEFAULT_PROBLEMS, log=print) -> Path:
    """Run the default check-and-time job; returns the report directory."""
    run_dir = out_dir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(run_dir / "results.jsonl", "a") as sink:
        for backend in all_backends():
            for problem in problems:
                reason = backend.why_not(problem, device)
                if reason:
                    continue
                log(f"  {backend.name} {problem.id} ...")
                row = run_point(backend, problem, device) | {"machine": platform.node()}
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                rows.append(row)
    table = format_table(rows)
    (run_dir / "report.md").write_text(f"# attnbench run ({device})\n\n```\n{table}\n```\n")
    log(table)
    return run_dir
