"""Time the reference side of a row-sampled forward check, piece by piece, on the issues' benchmark problems.

    OMP_NUM_THREADS=1 python scripts/bench_row_reference.py            # both benchmarks
    OMP_NUM_THREADS=1 python scripts/bench_row_reference.py --problem "B=1,H=8,Hkv=1,N=16,M=131073,D=128" --rows 64

Issue 19: the row-sampled reference for N 16, M 131,073, D 128, GQA 8:1 in at most 1 s. Issue 18: the
row-sampled forward reference with a 4096 window at N = M = 65,536, D 64, 64 rows in at most 2 s. "Reference"
is `check.forward_reference` (float64 rows, the row statistics and bounds, the naive same-dtype yardstick) as a
check of a backend declaring no precision, or one not rounding P, gets it; "+ rounded P" is what a backend
declaring P rounded to its input dtype (FlashAttention's model) adds: `ForwardReference.with_rounded_p`, or
the same sums in the one pass (`--rounded-p`). `make_inputs` is timed apart (the problem's inputs, not the
reference). Prints the budget's fingerprint
(sums of the bounds and of the naive output) so that a faster path can be shown to give the same numbers.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from attnbench import check
from attnbench.check import RowSample, choose_rows, forward_reference
from attnbench.problem import Problem, make_inputs

BENCHMARKS = [
    ("issue 19", "B=1,H=8,Hkv=1,N=16,M=131073,D=128,dtype=bfloat16,causal=bottom_right", None),
    ("issue 19", "B=1,H=8,Hkv=1,N=16,M=131073,D=128,dtype=float16", None),
    ("issue 18", "B=1,H=1,N=65536,M=65536,D=64,dtype=bfloat16,causal=bottom_right,window=4096:0", 64),
]


def _timed(fn, *args, **kwargs):
    """(result, seconds of this process's CPU time): on a shared machine the wall time mostly measures the
    neighbours (quote both; with OMP_NUM_THREADS=1 CPU time is close to an unloaded wall time)."""
    start = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - start


def bench(spec: str, rows: int | None, rounded_p: bool = False) -> None:
    problem = Problem.parse(spec)
    inputs, t_inputs = _timed(make_inputs, problem)
    chosen = choose_rows(problem, inputs, seed=problem.seed)
    if rows is not None:                                  # a fixed count, spread over the sampled rows
        chosen = chosen[np.linspace(0, len(chosen) - 1, rows).astype(int)]
    sample = RowSample(tuple(int(r) for r in chosen), None)
    timings = {}
    for name in ("sdpa_rows_with_scores", "row_stats", "naive_forward"):         # the pieces, each wrapped once for timing
        timings[name] = 0.0
    originals = {name: getattr(check, name) for name in ("naive_forward", "row_stats")}
    originals["sdpa_rows_with_scores"] = check.sdpa_rows_with_scores

    def wrap(name, fn):
        def timed(*args, **kwargs):
            out, seconds = _timed(fn, *args, **kwargs)
            timings[name] += seconds
            return out
        return timed

    check.naive_forward, check.row_stats = wrap("naive_forward", originals["naive_forward"]), wrap(
        "row_stats", originals["row_stats"])
    check.sdpa_rows_with_scores = wrap("sdpa_rows_with_scores", originals["sdpa_rows_with_scores"])
    try:
        wall = time.perf_counter()
        ref, total = _timed(forward_reference, inputs, problem, sample, rounded_p=rounded_p)
        wall = time.perf_counter() - wall
        later = _timed(ref.with_rounded_p, inputs, problem, sample)[1] if not rounded_p else None
    finally:
        check.naive_forward, check.row_stats = originals["naive_forward"], originals["row_stats"]
        check.sdpa_rows_with_scores = originals["sdpa_rows_with_scores"]
    pieces = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    added = "" if later is None else f"; + rounded P {later:.2f} s CPU"
    print(f"{spec} ({len(chosen)} rows{', rounded P in the pass' if rounded_p else ''}): reference {total:.2f} s "
          f"CPU ({wall:.2f} s wall) [{pieces}]{added}; make_inputs {t_inputs:.2f} s")
    print(f"  fingerprint: out_bound {ref.out_bound.sum():.17g} lse_bound {ref.lse_bound.sum():.17g} "
          f"naive {ref.naive.sum():.17g} naive_err {np.abs(ref.naive - ref.out).max():.17g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", help="a problem spec (default: the issues' benchmarks)")
    parser.add_argument("--rows", type=int, help="check this many of the sampled query rows (default: all)")
    parser.add_argument("--rounded-p", action="store_true",
                        help="the rounded-P sums in the one pass (a backend declaring FlashAttention's model)")
    args = parser.parse_args()
    for _, spec, rows in ([(None, args.problem, args.rows)] if args.problem else BENCHMARKS):
        bench(spec, rows, args.rounded_p)


if __name__ == "__main__":
    main()
