"""Timings a performance engineer can trust, end to end with real workers.

Each verdict here is decided on timings the test controls, so it runs, and can fail, under any load:

- Injected timings: a plugin backend whose calls take the seconds it declares on the clock the worker times
  with (`INJECTED`): that clock moves only with the backend's calls and serves as CPU time too, so a loaded
  machine changes nothing compare sees. Sweeps measure it through the real runner, worker, measure, noise
  verdict and records, and `compare` must judge its point: identical code is no regression; twice the
  seconds (the controlled slowdown) is a REGRESSION.
- Under that artificial load a sweep of a real backend flags its points noisy, and compare says it did not
  judge them (compare's statistics on fixed samples are in test_perf_compare.py).
- The interleaved A/B gate catches a real 2x slowdown (the same work done twice) and passes identical code:
  the ratio of adjacent calls holds on a loaded machine.
- Peak memory counts small allocations; steady-state calls do not re-fault.

Performance figures themselves are measured and quoted in the notes, never asserted here.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from attnbench.cli import main
from attnbench.implementations import registry
from attnbench.perf import measure
from attnbench.perf.spec import MeasureOptions, SweepSpec
from attnbench.perf.runner import run_sweep

from perf_helpers import perf

TINY = ["--backends", "torch_eager", "--seq-lens", "128,256", "--pass", "fwd"]

SLOWABLE = textwrap.dedent('''
    from attnbench.implementations import register
    from attnbench.implementations.torch_eager import TorchEager

    @register
    class {cls}(TorchEager):
        name = "{name}"
        def attention(self, q, k, v, **kw):
            for _ in range({extra}):
                super().attention(q, k, v, **kw)                   # the injected slowdown: the same work again
            return super().attention(q, k, v, **kw)
''')

INJECTED = textwrap.dedent('''
    """`{name}`: torch_eager whose every call takes {seconds} s on the clock the worker times with."""
    import os
    import types

    import numpy as np

    from attnbench.implementations import register
    from attnbench.implementations.torch_eager import TorchEager
    from attnbench.perf import measure


    class Clock:
        """Advanced by this backend's calls only; the measure module reads it as wall and CPU time alike, so
        another process holding the CPU changes nothing the noise verdict or compare sees."""
        now = 0.0


    measure.time = types.SimpleNamespace(perf_counter=lambda: Clock.now, process_time=lambda: Clock.now)
    # Fresh processes differ, as on a real machine: each times at its own level (2% spread in log), its calls
    # within 0.5% of it; both under the noise flags' 10%, so every point is judged.
    RNG = np.random.default_rng(os.getpid())
    LEVEL = {seconds} * float(np.exp(RNG.normal(0, 0.02)))


    @register
    class {cls}(TorchEager):
        name = "{name}"

        def attention(self, q, k, v, **kw):
            Clock.now += LEVEL * (1 + 0.005 * RNG.standard_normal())
            return super().attention(q, k, v, **kw)
''')


@pytest.fixture
def busy():
    """Two processes spinning on one CPU for the duration of the test (ended by their own pid); yields that CPU.

    The workers are pinned to the same CPU, so the load reaches them on a machine of any core count.
    """
    cpu = min(os.sched_getaffinity(0))
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              preexec_fn=lambda: os.sched_setaffinity(0, {cpu})) for _ in range(2)]
    yield cpu
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def slowable(tmp_path, monkeypatch):
    """Module files registering: `probe` (plain), `probe` doing the work twice, and `probe_slow` (twice)."""
    registry.discover()                                  # before the copy: the copy is what the test may change
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    files = {}
    for tag, name, extra in (("fast", "probe", 0), ("slow", "probe", 1), ("slow_named", "probe_slow", 1)):
        files[tag] = tmp_path / f"probe_{tag}.py"
        files[tag].write_text(SLOWABLE.format(cls=f"Probe_{tag}", name=name, extra=extra))
    return {k: str(v) for k, v in files.items()}


@pytest.fixture
def injected(tmp_path, monkeypatch):
    """{tag: module file} registering `injected` at 10 ms a call ("fast"), the same again ("same") and at 20 ms
    ("slow"). Loading one in this process installs its clock here too: restored, with the registry, afterwards."""
    registry.discover()                                  # before the copy: the copy is what the test may change
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    monkeypatch.setattr(measure, "time", measure.time)
    files = {}
    for tag, seconds in (("fast", 0.01), ("same", 0.01), ("slow", 0.02)):
        files[tag] = tmp_path / f"injected_{tag}.py"
        files[tag].write_text(INJECTED.format(cls=f"Injected_{tag}", name="injected", seconds=seconds))
    return {k: str(v) for k, v in files.items()}


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def injected_run(run_dir, plugin: str):
    """One sweep of the injected backend registered by `plugin`, through the real runner (no report); run_dir,
    after checking its point was measured and judged trustworthy, so compare must decide on it."""
    registry._BACKENDS.pop("injected", None)                              # each plugin registers it afresh
    spec = SweepSpec(seq_lens=(64,), heads=(2,), head_dims=(16,), backends=("injected",), plugins=(plugin,))
    options = MeasureOptions(time_budget_s=0.02, min_repeats=5, processes=3, remeasure=0)
    run_sweep(spec, run_dir, options, log=lambda *_: None)
    (point,) = rows(run_dir)
    assert point["status"] == "ok" and not point["noisy"], point.get("noise", point.get("message"))
    return run_dir


def test_injected_timings_are_judged_identical_code_passes_and_a_2x_slowdown_is_caught(tmp_path, injected, capsys):
    fast, same, slow = (injected_run(tmp_path / tag, injected[tag]) for tag in ("fast", "same", "slow"))
    assert main(["compare", str(fast), str(same)]) == 0
    assert "1 points compared; 0 significant regressions" in capsys.readouterr().out
    assert main(["compare", str(fast), str(slow)]) == 1
    assert "1 points compared; 1 significant regressions" in capsys.readouterr().out


def test_under_load_noisy_points_are_flagged_and_compare_does_not_judge_them(tmp_path, busy, capsys):
    runs = []
    for name in ("a", "b"):
        code, run_dir = perf(tmp_path / name, *TINY, "--remeasure", "1", "--pin-cpus", str(busy))
        assert code == 0
        runs.append(run_dir)
        ok = [r for r in rows(run_dir) if r["status"] == "ok"]
        assert any(r["noisy"] for r in ok)                                 # flagged in the record
        noisy = next(r for r in ok if r["noisy"])
        assert noisy["noise"]["reasons"] and noisy["noise"]["attempts"] == 2
        assert "Noisy points" in (run_dir / "report.md").read_text()       # and in the report
    assert "NOISY" in capsys.readouterr().err                               # and on the console
    assert main(["compare", str(runs[0]), str(runs[1])]) == 0
    out = capsys.readouterr().out
    assert "flagged noisy" in out and "REGRESSION" not in out              # said, not silently passed


def test_injected_2x_slowdown_is_caught_by_the_interleaved_gate(slowable, capsys):
    common = ["--seq-lens", "256", "--heads", "2", "--head-dim", "32", "--time-budget", "0.2",
              "--plugin", slowable["fast"], "--plugin", slowable["slow_named"]]
    assert main(["compare", "--interleaved", "probe", "probe_slow", *common]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out
    assert main(["compare", "--interleaved", "probe", "probe", *common]) == 0   # identical: no regression
    assert "REGRESSION" not in capsys.readouterr().out


def test_no_backend_reads_zero_peak_memory_for_a_forward_that_allocates_its_output(tmp_path):
    # torch_sdpa_flash read 0.00 MiB at every N: pages freed by input preparation were reused for the output.
    code, run_dir = perf(tmp_path, "--seq-lens", "512", "--pass", "fwd", "--processes", "1")
    ok = [r for r in rows(run_dir) if r["status"] == "ok"]
    assert len(ok) >= 5
    for r in ok:
        output_bytes = r["B"] * r["H"] * r["N"] * r["Dv"] * 4
        assert r["peak_bytes"] >= output_bytes, r["backend"]


def test_steady_state_calls_do_not_refault_their_buffers(tmp_path):
    # torch_eager re-faulted its (N, M) buffers on every call because glibc served them with a fresh mmap and
    # returned them on free; the worker now keeps freed memory, as a long-running process would. The buffers
    # must be 32 MiB or more (H 2, N = M = 2048, float32): below glibc's largest dynamic mmap threshold the
    # allocator adapts by itself and this test passed with the fix switched off (checked: at H 2, N 2048 and
    # the fix off it reads 32,772 faults a call). Up to 21 timed calls in 2 s, not FAST's 5: on a loaded machine
    # about 1 call in 5 re-faults one buffer at random (seen in-process with the integrity checks' copies off
    # too; cause not found), and 3 of 5 now and then made the median of 5 one buffer's pages.
    code, run_dir = perf(tmp_path, "--backends", "torch_eager", "--seq-lens", "2048", "--pass", "fwd",
                         "--heads", "2", "--head-dim", "64", "--processes", "1", "--repeats", "21",
                         "--time-budget", "2")
    (r,) = [r for r in rows(run_dir) if r["status"] == "ok"]
    pattern_pages = r["predicted_pattern_bytes"] // 4096
    # The typical call faults in (almost) nothing; the mean may carry one growth of glibc's heap (one buffer
    # re-faulted once in a handful of calls), never the old four buffers on every call (4x the pattern's pages).
    assert r["noise"]["minor_faults_median_per_call"] < 0.1 * pattern_pages
    assert r["noise"]["minor_faults_per_call"] < pattern_pages
    assert r["noise"]["freed_memory_kept"]


def test_threads_are_set_in_the_worker_and_recorded(tmp_path):
    code, run_dir = perf(tmp_path, "--backends", "torch_sdpa_flash", "--seq-lens", "64", "--pass", "fwd",
                         "--threads", "2", "--processes", "1")
    (r,) = [r for r in rows(run_dir) if r["status"] == "ok"]
    assert r["noise"]["threads"] == 2 and r["options"]["threads"] == 2
    assert json.loads((run_dir / "machine.json").read_text())["threads"] == 2
