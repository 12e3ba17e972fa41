"""Peak memory of one forward call, torch_blockwise vs torch_eager, on CPU: linear vs quadratic in N.

Each point runs in a fresh subprocess: inputs are allocated first, then the
peak resident set size (`ru_maxrss`) is read, one forward call is made, and the
growth of the peak is the call's memory. A fresh process keeps one point's
allocations from hiding the next one's. The slope of log(memory) against
log(N) is fitted per backend: about 2 for a kernel holding (N, N) scores,
about 1 for one holding a (N, block) tile.

    python -m attnbench.perf.blockwise_memory
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

BACKENDS = ("torch_blockwise", "torch_eager")
SEQ_LENS = (2048, 4096, 8192, 16384)
B, H, D = 1, 4, 64
# torch_eager holds about two (B, H, N, N) float32 buffers; skip points that would need more than this.
MAX_PREDICTED_BYTES = 16 * 2**30


def predicted_bytes(backend: str, n: int) -> int:
    """A pessimistic estimate used only to skip points that cannot fit: 3 (B, H, N, N) buffers for eager."""
    return 3 * B * H * n * n * 4 if backend == "torch_eager" else 64 * B * H * n * D * 4


def measure_in_this_process(backend: str, n: int) -> int:
    """Peak-RSS growth in bytes across one forward call of `backend` at (B, H, N=M=n, D) float32."""
    import resource

    import torch

    from attnbench.implementations import get_backend
    from attnbench.problem import Problem, make_inputs

    problem = Problem(B=B, H=H, N=n, D=D, dtype="float32")
    run = get_backend(backend).prepare(make_inputs(problem), problem)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) * 1024                # Linux reports kilobytes


def measure(backend: str, n: int) -> int:
    """`measure_in_this_process` in a fresh interpreter."""
    code = f"from attnbench.perf.blockwise_memory import measure_in_this_process as m; print(m({backend!r}, {n}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def loglog_slope(ns, values) -> float:
    """Least-squares slope of log(value) against log(N)."""
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def main() -> None:
    results = {b: {} for b in BACKENDS}
    for backend in BACKENDS:
        for n in SEQ_LENS:
            if predicted_bytes(backend, n) > MAX_PREDICTED_BYTES:
                print(f"{backend:16s} N={n:6d}  skipped (would need more than 16 GiB)", flush=True)
                continue
            results[backend][n] = measure(backend, n)
            print(f"{backend:16s} N={n:6d}  {results[backend][n] / 2**20:9.1f} MiB", flush=True)
    print(f"\npeak-RSS growth of one forward, B{B} H{H} D{D} float32 (MiB)")
    print("| N | " + " | ".join(BACKENDS) + " |\n|---|" + "---|" * len(BACKENDS))
    for n in SEQ_LENS:
        cells = [f"{results[b][n] / 2**20:.0f}" if n in results[b] else "-" for b in BACKENDS]
        print(f"| {n} | " + " | ".join(cells) + " |")
    slopes = {b: loglog_slope(list(r), list(r.values())) for b, r in results.items() if len(r) >= 2}
    print("log-log slope: " + ", ".join(f"{b} {s:.2f}" for b, s in slopes.items()))
    print(json.dumps({"results_bytes": results, "slopes": slopes}))


if __name__ == "__main__":
    main()
