"""GPU benchmark: triton_blockwise vs torch_sdpa_flash, forward and forward+backward, bfloat16.

A sweep on the shared worker, like `attnbench perf --device cuda`: N in 1k..16k,
H 16, D 64 and 128, causal and not (B 1, N = M); each point in a fresh process,
timed with CUDA events and an L2 flush, peak memory from
`max_memory_allocated`, accuracy checked, TFLOP/s from `attention_flops` (causal
counts only attended pairs), beside the predicted roofline bound for this GPU
(`attnbench.perf.audit.predicted_on_device`, published peaks; "of bound" =
measured / bound). The run's machine.json holds the measured bf16 matmul peak;
the run directory gets the usual report and plots. Needs CUDA; exits with a
message otherwise.

    python -m attnbench.perf.bench_blockwise_gpu [--out reports] [--dtype float16] [--causal none]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnbench.precision import HALF_DTYPES

from . import records
from .spec import GPU_BENCH, with_grid


def format_table(results: list[records.PointResult], machine: dict) -> str:
    """One line per point: time, TFLOP/s, peak memory, or the status; the measured matmul ceiling first."""
    dtype, peak = next(iter((machine.get("peak_flops") or {}).items()), (None, None))
    short = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
    lines = [f"device: {machine.get('device_name', '?')}; measured {short} matmul peak: "
             f"{peak / 1e12:.0f} TFLOP/s" if peak else f"device: {machine.get('device_name', '?')}",
             f"{'backend':18s} {'pass':8s} {'causal':10s} {'D':>4s} {'N':>6s} {'ms':>9s} {'TFLOP/s':>8s} "
             f"{'peak MiB':>9s} {'bound':>6s} {'of bound':>8s}"]
    for r in results:
        head = f"{r.backend:18s} {r.pass_:8s} {str(r.causal):10s} {r.D:4d} {r.N:6d}"
        if r.status != "ok":
            lines.append(f"{head}  {r.status}: {r.message}")
        else:
            lines.append(f"{head} {r.time_median_s * 1e3:9.3f} {r.tflops:8.1f} {r.peak_bytes / 2**20:9.1f}"
                         + bound_columns(r, machine.get("device_name", "")) + ("" if r.accurate else "  INACCURATE"))
    return "\n".join(lines)


def bound_columns(r: records.PointResult, device_name: str) -> str:
    """' bound of-bound' for a measured point: the predicted roofline TFLOP/s on this GPU and measured / bound."""
    from .audit import predicted_on_device

    bound = predicted_on_device(device_name, b=r.B, h=r.H, n=r.N, d=r.D, dtype=r.dtype, causal=r.causal,
                                pass_=r.pass_)
    return "      -        -" if bound is None else f" {bound['tflops']:6.0f} {r.tflops / bound['tflops']:8.1%}"


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="reports", help="parent of the new run directory")
    parser.add_argument("--dtype", default="bfloat16", choices=HALF_DTYPES)
    parser.add_argument("--causal", default="none,top_left", help="none and/or top_left, comma-separated")
    parser.add_argument("--seq-lens", default=",".join(map(str, GPU_BENCH.spec.seq_lens)), help="N values, comma-separated")
    args = parser.parse_args(argv)
    profile = with_grid(GPU_BENCH, dtypes=(args.dtype,), seq_lens=tuple(int(n) for n in args.seq_lens.split(",")),
                        causal=tuple(None if c == "none" else c for c in args.causal.split(",")))
    if not torch.cuda.is_available():
        print("bench_blockwise_gpu: no CUDA device here; this benchmark needs a GPU (nothing was run).")
        return 1
    from .report import render
    from .runner import machine_info, new_run_dir, run_sweep

    run_dir = new_run_dir(Path(args.out))
    path = run_sweep(profile.spec, run_dir, profile.options, timeout_s=profile.timeout_s)
    render(run_dir)
    print(format_table(records.read(path), machine_info(run_dir, profile.spec)))
    print(f"report: {run_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
