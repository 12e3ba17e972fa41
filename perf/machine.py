"""The machine's own peaks, measured by the harness: matmul rate per dtype and memory bandwidth.

Peaks are what this machine reaches with torch's best plain kernels (a big
matmul, a big copy), not datasheet numbers, so a fraction of peak says how far
a backend is from what the same machine already does elsewhere.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}
COPY_BYTES = {"cpu": 256 * 1024 * 1024, "cuda": 1024 * 1024 * 1024}


def _best_seconds(fn, sync, repeats: int) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def matmul_peak_flops(dtype: str, device: str = "cpu", *, repeats: int = 5) -> float:
    """FLOP/s of an (S, S) @ (S, S) torch matmul in `dtype`: 2 S^3 operations over the best repeat."""
    import torch

    s = MATMUL_SIZE[device]
    a = torch.randn(s, s, device=device).to(getattr(torch, dtype))
    b = torch.randn(s, s, device=device).to(getattr(torch, dtype))
    return 2 * s ** 3 / _best_seconds(lambda: a @ b, _sync(device), repeats)


def copy_bandwidth(device: str = "cpu", *, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy, counting the read and the write."""
    import torch

    n = COPY_BYTES[device]
    src = torch.ones(n // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * n / _best_seconds(lambda: dst.copy_(src), _sync(device), repeats)


def fingerprint(device: str, *, probe_cuda: bool = True) -> dict:
    """Who measures: host, device name, cores, torch threads, versions. Cheap; no peaks.

    probe_cuda=False leaves a CUDA device unnamed rather than initialise CUDA in this process.
    """
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name() if probe_cuda else "cuda (unprobed)"
    else:
        name = platform.processor() or platform.machine()
    return {"host": platform.node(), "device": device, "device_name": name, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),   # a loaded or shared box is far slower with more threads
            "torch": torch.__version__, "numpy": np.__version__}


def same_machine(a: dict, b: dict) -> bool:
    """Whether two machine records describe the same host and device (so peaks measured on one hold for the other)."""
    return all(a.get(k) == b.get(k) for k in ("host", "device", "device_name"))


def machine_label(m: dict) -> str:
    """'host: device_name (device)', the name a report groups points by."""
    return f"{m.get('host', '?')}: {m.get('device_name', '?')} ({m.get('device', '?')})"


def measure_machine(device: str, dtypes) -> dict:
    """{"host", "device", "peak_flops": {dtype: FLOP/s}, "peak_bandwidth": B/s, ...} for `device`."""
    return {**fingerprint(device),
            "peak_flops": {dt: matmul_peak_flops(dt, device) for dt in dtypes},
            "peak_bandwidth": copy_bandwidth(device),
            # A busy machine depresses these; a fraction of peak above 1 means the peak was measured low.
            "peaks_measured_by": f"best of 5: {MATMUL_SIZE[device]}^2 torch matmul per dtype; "
                                 f"{COPY_BYTES[device] >> 20} MiB tensor copy (read + write)"}
