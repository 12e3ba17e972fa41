"""The machine's own peaks, measured by the harness: matmul rate per dtype and memory bandwidth.

Peaks are what this machine reaches with torch's best plain kernels (a big
matmul, a big copy), not datasheet numbers, so a fraction of peak says how far
a backend is from what the same machine already does elsewhere.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}
# A dtype without a fast path (float16 on this CPU: 0.27 GFLOP/s, a 2048^2 matmul takes a minute) is measured
# at the smallest size whose call takes this long: seconds, not minutes, and its rate hardly depends on size.
MATMUL_MIN_SECONDS = 0.05
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


def matmul_peak(dtype: str, device: str = "cpu", *, repeats: int = 5) -> tuple[float, int]:
    """(FLOP/s, S) of an (S, S) @ (S, S) torch matmul in `dtype`: 2 S^3 operations over the best repeat, S
    doubled from 256 up to MATMUL_SIZE while one call takes under MATMUL_MIN_SECONDS."""
    import torch

    s = 256
    while True:
        a = torch.randn(s, s, device=device).to(getattr(torch, dtype))
        b = torch.randn(s, s, device=device).to(getattr(torch, dtype))
        if s >= MATMUL_SIZE[device] or _best_seconds(lambda: a @ b, _sync(device), 1) >= MATMUL_MIN_SECONDS:
            return 2 * s ** 3 / _best_seconds(lambda: a @ b, _sync(device), repeats), s
        s *= 2


def matmul_peak_flops(dtype: str, device: str = "cpu", *, repeats: int = 5) -> float:
    """FLOP/s of the largest torch matmul in `dtype` `matmul_peak` reaches."""
    return matmul_peak(dtype, device, repeats=repeats)[0]


def roofline_flops(machine: dict) -> float | None:
    """The compute roof of a point: the best matmul rate this machine reached in any dtype measured (float32
    always is). A kernel may compute half inputs in float32 (torch's CPU kernels do, where float16 has no fast
    path), so its own dtype's matmul rate is no limit; faster than every rate measured is."""
    peaks = [v for v in machine.get("peak_flops", {}).values() if v]
    return max(peaks) if peaks else None


def copy_bandwidth(device: str = "cpu", *, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy, counting the read and the write."""
    import torch

    n = COPY_BYTES[device]
    src = torch.ones(n // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * n / _best_seconds(lambda: dst.copy_(src), _sync(device), repeats)


def _first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_frequency() -> dict:
    """Governor and current/max frequency (MHz) of CPU 0 where cpufreq is exposed; else the cpuinfo MHz."""
    base = "/sys/devices/system/cpu/cpu0/cpufreq/"
    info = {"governor": _first_line(base + "scaling_governor")}
    for key, name in (("cur_mhz", "scaling_cur_freq"), ("max_mhz", "cpuinfo_max_freq")):
        khz = _first_line(base + name)
        info[key] = int(khz) / 1000 if khz and khz.isdigit() else None
    if info["cur_mhz"] is None:
        try:
            with open("/proc/cpuinfo") as f:
                mhz = next((ln.split(":")[1] for ln in f if ln.startswith("cpu MHz")), None)
            info["cur_mhz"] = float(mhz) if mhz else None
        except OSError:
            pass
    return info


def load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def describe(m: dict) -> str:
    """One paragraph for a report's machine section, from a machine.json dict (older files lack some keys)."""
    freq = m.get("frequency") or {}
    parts = [f"{m.get('host', '?')}: {m.get('cpu_model') or m.get('device_name', '?')}",
             f"{m.get('cpus', '?')} CPUs, {m.get('threads', '?')} worker threads"]
    if m.get("device") == "cuda":
        parts.append(f"GPU {m.get('device_name', '?')}")
    if freq.get("governor") or freq.get("cur_mhz"):
        parts.append(f"governor {freq.get('governor') or 'not exposed'}, "
                     f"{_fmt(freq.get('cur_mhz'))} MHz now (max {_fmt(freq.get('max_mhz'))})")
    else:
        parts.append("frequency and governor not exposed")
    if m.get("load_average"):
        parts.append("load average " + " / ".join(f"{x:.2f}" for x in m["load_average"]) + " (1/5/15 min) "
                     "when the run started")
    peaks = ", ".join(f"{dt} {v / 1e12:.3g} TFLOP/s" for dt, v in m.get("peak_flops", {}).items())
    return (", ".join(parts) + f"; torch {m.get('torch', '?')}. Measured peaks: {peaks or '?'}; memory bandwidth "
            f"{m.get('peak_bandwidth', 0) / 1e9:.3g} GB/s ({m.get('peaks_measured_by', '')}).")


def _fmt(x) -> str:
    return "?" if x is None else f"{x:.0f}"


def fingerprint(device: str, *, probe_cuda: bool = True) -> dict:
    """Who measures: host, device name, cores, torch threads, versions. Cheap; no peaks.

    probe_cuda=False leaves a CUDA device unnamed rather than initialise CUDA in this process.
    """
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name() if probe_cuda else "cuda (unprobed)"
    else:
        name = cpu_model()
    return {"host": platform.node(), "device": device, "device_name": name, "cpu_model": cpu_model(),
            "cpus": os.cpu_count(), "frequency": cpu_frequency(), "load_average": load_average(),
            "threads": torch.get_num_threads(),   # a loaded or shared box is far slower with more threads
            "torch": torch.__version__, "numpy": np.__version__}


def same_machine(a: dict, b: dict) -> bool:
    """Whether two machine records describe the same host and device (so peaks measured on one hold for the other)."""
    return all(a.get(k) == b.get(k) for k in ("host", "device", "device_name"))


def machine_label(m: dict) -> str:
    """'host: device_name (device)', the name a report groups points by."""
    return f"{m.get('host', '?')}: {m.get('device_name', '?')} ({m.get('device', '?')})"


def measure_machine(device: str, dtypes, *, threads: int | None = None) -> dict:
    """{"host", "device", "peak_flops": {dtype: FLOP/s}, "peak_bandwidth": B/s, ...} for `device`.

    threads: measure the peaks with the workers' thread count (restored afterwards).
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(device, dtypes)
    finally:
        torch.set_num_threads(previous)


def peaks_cache_path() -> Path:
    """Where measured peaks are kept between runs: $ATTNBENCH_CACHE (else ~/.cache/attnbench)/peaks.json."""
    root = os.environ.get("ATTNBENCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                    "attnbench")
    return Path(root) / "peaks.json"


def _cache_key(machine: dict) -> str:
    """The machine a peak belongs to: host, device, its name, worker threads and torch (a new torch may add a
    faster kernel). Delete the file to measure again (after the machine was busy when it was measured)."""
    return "|".join(str(machine.get(k)) for k in ("host", "device", "device_name", "threads", "torch"))


def _cached_peaks(key: str) -> dict:
    try:
        return json.loads(peaks_cache_path().read_text()).get(key, {})
    except (OSError, ValueError):
        return {}


def _store_peaks(key: str, entry: dict) -> None:
    path = peaks_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        everything = json.loads(path.read_text()) if path.exists() else {}
        everything[key] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(everything, indent=1))
        tmp.replace(path)                          # atomic: concurrent runs never read half a file
    except (OSError, ValueError):
        pass                                       # a read-only home: measure again next time


def with_cached_bandwidth(machine: dict) -> dict:
    """A fingerprint with the copy bandwidth this machine measured before (peaks.json), if any: no measuring
    here (a worker must not spend its point's time on it)."""
    bandwidth = _cached_peaks(_cache_key(machine)).get("peak_bandwidth")
    return {**machine, "peak_bandwidth": bandwidth} if bandwidth else machine


def _measure(device: str, dtypes) -> dict:
    """Peaks per dtype and the copy bandwidth, measured once per machine (`peaks_cache_path`): a dtype without a
    fast path costs seconds to time, every run would pay them again, and a later run under load would measure
    a lower peak than an earlier quiet one."""
    machine = fingerprint(device)
    key = _cache_key(machine)
    cached = _cached_peaks(key)
    flops, sizes = dict(cached.get("peak_flops", {})), dict(cached.get("sizes", {}))
    missing = [dt for dt in dict.fromkeys([*dtypes, "float32"]) if dt not in flops]
    for dt in missing:
        flops[dt], sizes[dt] = matmul_peak(dt, device)
    bandwidth = cached.get("peak_bandwidth") or copy_bandwidth(device)
    if missing or "peak_bandwidth" not in cached:
        _store_peaks(key, {"peak_flops": flops, "sizes": sizes, "peak_bandwidth": bandwidth,
                           "measured_at": cached.get("measured_at") or time.strftime("%Y-%m-%d %H:%M:%S")})
    wanted = dict.fromkeys([*dtypes, "float32"])
    sizes_text = ", ".join(f"{dt} {sizes[dt]}^2" for dt in wanted)
    source = ("measured now" if len(missing) == len(wanted) else
              f"cached in {peaks_cache_path()} since {cached.get('measured_at', '?')}"
              + (f" ({', '.join(missing)} measured now)" if missing else ""))
    return {**machine,
            "peak_flops": {dt: flops[dt] for dt in wanted},
            "peak_bandwidth": bandwidth,
            # A busy machine depresses these; a fraction of peak above 1 means the peak was measured low.
            "peaks_measured_by": f"best of 5 torch matmuls per dtype ({sizes_text}: up to {MATMUL_SIZE[device]}^2, "
                                 f"smaller where one call takes {MATMUL_MIN_SECONDS:g} s); "
                                 f"{COPY_BYTES[device] >> 20} MiB tensor copy (read + write); {source}"}
