"""The machine's peaks are measured once per machine and kept (`perf.machine.peaks_cache_path`)."""
import json

from attnbench.perf import machine


def test_peaks_are_measured_once_per_machine_and_a_new_dtype_only_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path))
    timed = []
    monkeypatch.setattr(machine, "matmul_peak", lambda dt, device: timed.append(dt) or (1e9, 256))
    monkeypatch.setattr(machine, "copy_bandwidth", lambda device: timed.append("copy") or 5e9)
    first = machine.measure_machine("cpu", ["float16"])
    assert timed == ["float16", "float32", "copy"] and "measured now" in first["peaks_measured_by"]
    second = machine.measure_machine("cpu", ["float16"])
    assert timed == ["float16", "float32", "copy"]                         # nothing timed again
    assert second["peak_flops"] == first["peak_flops"] and "cached in" in second["peaks_measured_by"]
    machine.measure_machine("cpu", ["bfloat16"])
    assert timed[3:] == ["bfloat16"]                                       # only the dtype never measured
    stored = json.loads((tmp_path / "peaks.json").read_text())
    assert set(next(iter(stored.values()))["peak_flops"]) == {"float16", "float32", "bfloat16"}


def test_an_unwritable_cache_measures_instead_of_failing(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ATTNBENCH_CACHE", str(blocker))                     # a file where the directory should be
    monkeypatch.setattr(machine, "matmul_peak", lambda dt, device: (2e9, 256))
    monkeypatch.setattr(machine, "copy_bandwidth", lambda device: 1e9)
    assert machine.measure_machine("cpu", ["float32"])["peak_flops"] == {"float32": 2e9}
