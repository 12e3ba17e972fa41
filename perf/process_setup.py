"""Set up a fresh worker process before it measures: threads, CPU pinning, and glibc's allocator.

Threads: torch's intra-op pool (OpenMP and MKL) via `torch.set_num_threads`, and
NumPy's OpenBLAS (the `numpy` backend's matmuls) through its own C entry point,
since OpenBLAS read its environment when the forkserver imported NumPy.

Allocator: by default glibc serves every allocation over 128 KiB-32 MiB with a
fresh mmap and returns it on free, so a call that allocates (N, M) buffers
re-faults every page of them on every call (torch_eager at N = 1024: ~16,000
minor faults per call, 2.5x its steady-state time). A long-running model keeps
its memory; `keep_freed_memory` makes the worker do the same (no mmap for large
blocks, no trimming of the heap top), and `trim` hands free memory back to the
OS on request, before the peak-memory baseline, so a call's own allocations
show in its peak RSS instead of reusing pages freed by input preparation.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1          # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
_OPENBLAS_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "openblas_set_num_threads64_", "scipy_openblas_set_num_threads")


def _libc():
    try:
        return ctypes.CDLL(None)                                 # the running program's symbols: libc's included
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no per-call mmap/munmap, no heap trim); False where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    ok_mmap = libc.mallopt(M_MMAP_MAX, 0)                     # large blocks come from the heap, reused on free
    ok_trim = libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)     # never give the heap top back on free
    return bool(ok_mmap and ok_trim)


def trim() -> bool:
    """Return free heap memory to the OS now (malloc_trim); False where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def _openblas_libs() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if len(ln.split()) >= 6}
    except OSError:
        return []
    return sorted(p for p in paths if "openblas" in os.path.basename(p).lower() and ".so" in p)


def set_threads(n: int) -> int:
    """Use `n` threads in torch (OpenMP, MKL) and OpenBLAS; returns what torch reports afterwards."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)                                 # for anything that reads them later
    torch.set_num_threads(n)
    for path in _openblas_libs():
        lib = ctypes.CDLL(path)
        for name in _OPENBLAS_SETTERS:
            if hasattr(lib, name):
                getattr(lib, name)(n)
                break
    return torch.get_num_threads()


def pin(cpus: tuple[int, ...] | None) -> tuple[int, ...]:
    """Pin this process to `cpus` (None: leave it); returns the CPUs it may run on."""
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    return tuple(sorted(os.sched_getaffinity(0)))
