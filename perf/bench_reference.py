"""Benchmark the row-sampled float64 reference (a benchmark, not a test; quote it with the command).

    OMP_NUM_THREADS=1 python -m attnbench.perf.bench_reference

1. The reference half of a row-sampled forward check at N = M = 65,536, D = 64, one head, 64 rows: expected
   O and lse (`sdpa_rows`), the elementwise bound and the naive float32 yardstick on those rows.
2. The reference dK, dV of 64 key rows at N = M = 16,384 (`sdpa_backward_rows`: every query's lse and delta
   first, blockwise, then the chosen columns).
"""
from __future__ import annotations

import os
import time

import numpy as np

from attnbench.check import RowSample, forward_reference
from attnbench.problem import Problem, make_grad_out, make_inputs
from attnbench.reference import sdpa_backward_rows


def _timed(fn) -> str:
    """Wall and CPU seconds of fn(): on a shared machine CPU time is what one idle core would take."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return f"{time.perf_counter() - wall:.2f} s wall, {time.process_time() - cpu:.2f} s CPU"


def main() -> None:
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


if __name__ == "__main__":
    main()
