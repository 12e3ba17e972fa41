"""GPU benchmark: triton_blockwise vs torch_sdpa_flash, forward and forward+backward, bfloat16.

For N in 1k..16k, H 16, D 64 and 128, causal and not (B 1, N = M): median time
(CUDA events, after warm-up), TFLOP/s from `attnbench.reference.attention_flops`
(causal counts only attended pairs) and peak memory (`torch.cuda.max_memory_allocated`
growth over the inputs). A measured bf16 matmul rate is printed first as the
machine's ceiling. Needs CUDA; exits with a message otherwise.

    python -m attnbench.perf.bench_blockwise_gpu
"""
from __future__ import annotations

import sys

BACKENDS = ("triton_blockwise", "torch_sdpa_flash")
SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
B, H = 1, 16


def cuda_time_ms(fn, *, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds per call of `fn`, timed with CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def matmul_tflops(n: int = 8192) -> float:
    """Measured bf16 (n, n) @ (n, n) rate in TFLOP/s."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n**3 / cuda_time_ms(lambda: a @ b) / 1e9


def bench_point(backend, n: int, d: int, causal: str | None, pass_: str) -> dict:
    """Time and peak memory of one (backend, N, D, causal, pass) point; pass_ is "fwd" or "fwd+bwd"."""
    import torch

    from attnbench.reference import attention_flops

    shape = (B, H, n, d)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=pass_ != "fwd")
               for _ in range(3))
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            return backend.attention(q, k, v, mask=None, causal=causal, scale=None)

    def fwd_bwd():
        out = backend.attention(q, k, v, mask=None, causal=causal, scale=None)
        return torch.autograd.grad(out, (q, k, v), grad)

    fn = fwd if pass_ == "fwd" else fwd_bwd
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ms = cuda_time_ms(fn)
    flops = attention_flops(B, H, n, n, d, causal=causal, pass_=pass_)
    return dict(ms=ms, tflops=flops / ms / 1e9, peak_mib=peak / 2**20)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("bench_blockwise_gpu: no CUDA device here; this benchmark needs a GPU (nothing was run).")
        return 1
    from attnbench.implementations import get_backend

    print(f"device: {torch.cuda.get_device_name()}; bf16 matmul 8192^3: {matmul_tflops():.0f} TFLOP/s")
    print(f"{'backend':18s} {'pass':8s} {'causal':12s} {'D':>4s} {'N':>6s} {'ms':>9s} {'TFLOP/s':>8s} {'peak MiB':>9s}")
    for pass_ in ("fwd", "fwd+bwd"):
        for causal in (None, "top_left"):
            for d in HEAD_DIMS:
                for n in SEQ_LENS:
                    for name in BACKENDS:
                        backend = get_backend(name)
                        reason = backend.why_not(_problem(n, d, causal), "cuda", need_grad=pass_ != "fwd")
                        if reason:
                            print(f"{name:18s} {pass_:8s} {str(causal):12s} {d:4d} {n:6d}  skipped: {reason}")
                            continue
                        try:
                            r = bench_point(backend, n, d, causal, pass_)
                        except torch.OutOfMemoryError:
                            print(f"{name:18s} {pass_:8s} {str(causal):12s} {d:4d} {n:6d}  out of memory")
                            torch.cuda.empty_cache()
                            continue
                        print(f"{name:18s} {pass_:8s} {str(causal):12s} {d:4d} {n:6d} {r['ms']:9.3f} "
                              f"{r['tflops']:8.1f} {r['peak_mib']:9.1f}", flush=True)
    return 0


def _problem(n: int, d: int, causal: str | None):
    from attnbench.problem import Problem

    return Problem(B=B, H=H, N=n, D=d, dtype="bfloat16", causal=causal)


if __name__ == "__main__":
    sys.exit(main())
