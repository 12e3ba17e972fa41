"""Cross-check a run's times against an independent timer: torch.utils.benchmark's `blocked_autorange`.

For every ok CPU point of a run, a fresh process (same thread count; glibc keeping
freed memory, as the worker does, unless --plain-allocator) prepares the same call
and times it with `Timer.blocked_autorange`; the ratio attnbench / Timer per point
and its median are printed.

    python -m attnbench.perf.crosscheck reports/run-...  [--plain-allocator] [--min-run-time 0.5]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import records

_CHILD = """
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
    out = subprocess.run([sys.executable, "-c", _CHILD, case_json, str(threads), "1" if keep_freed_memory else "0",
                          str(min_run_time)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median"]


def main(argv=None) -> int:
    from .spec import Case
    from attnbench.problem import Problem

    parser = argparse.ArgumentParser(prog="python -m attnbench.perf.crosscheck", description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
