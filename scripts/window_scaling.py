"""torch_blockwise with a sliding window: time grows like N once N >> W (key tiles outside the window skipped).

    OMP_NUM_THREADS=1 python scripts/window_scaling.py [--window 1024] [--lengths 1024,16384]

Prints the median forward time per N (B 1, H 4, D 64, float32, window W:0), interleaved repeats so load hits
every length alike, and the ratio t(N) / (t(N0) N / N0) against the shortest length: 1 is linear in N.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnbench.implementations import get_backend
from attnbench.problem import Problem, make_inputs
from attnbench.reference.mods import Window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--lengths", default="1024,16384")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    backend = get_backend("torch_blockwise")
    lengths = [int(x) for x in args.lengths.split(",")]
    calls = {}
    for n in lengths:
        problem = Problem(B=1, H=4, N=n, D=64, dtype="float32", mods=(Window(args.window, 0),))
        calls[n] = backend.prepare(make_inputs(problem), problem)
        calls[n]()                                                             # warm-up
    times = {n: [] for n in lengths}
    for _ in range(args.repeats):                                              # interleaved: load hits all alike
        for n in lengths:
            start = time.perf_counter()
            calls[n]()
            times[n].append(time.perf_counter() - start)
    base = lengths[0]
    for n in lengths:
        median = statistics.median(times[n])
        ratio = median / (statistics.median(times[base]) * n / base)
        print(f"N {n:6d}  window {args.window}:0  median {median * 1e3:8.1f} ms  vs linear from N {base}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
