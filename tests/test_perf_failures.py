"""A sweep goes on past a backend that crashes, one that runs out of memory and one that hangs.

The failing backends are test-only: they live in a module file given with
`--plugin`, because each point runs in a fresh worker process that cannot see
backends registered only in this (the parent) process; the worker imports the
file named in the case before looking the backend up.
"""
import textwrap

import pytest

from attnbench.implementations import registry

from perf_helpers import by_backend, perf

PLUGIN = textwrap.dedent('''
    import time
    import numpy as np
    from attnbench.implementations import Backend, Capabilities, register

    class _Test(Backend):
        caps = Capabilities(dtypes=("float32",))
        def to_numpy(self, value):
            return np.asarray(value, dtype=np.float64)
        def prepare(self, inputs, problem, *, device="cpu", return_lse=False):
            q = inputs.q.astype(np.float32)
            # Every call misbehaves: the point's first call (under the memory cap) comes before its accuracy check.
            return lambda: self.misbehave(q, problem)

    @register
    class Crashes(_Test):
        name = "test_crashes"
        def misbehave(self, q, problem):
            raise RuntimeError("kernel exploded")

    @register
    class Hogs(_Test):
        name = "test_hogs"
        def misbehave(self, q, problem):
            return np.ones(1 << 30, dtype=np.uint8)                # 1 GiB, far beyond the cap

    @register
    class Wrong(_Test):
        name = "test_wrong"                                        # runs fine, answers q: inaccurate
        def misbehave(self, q, problem):
            # an attention's matmuls, so the time is plausible (answering q at once is implausible)
            return q + 0 * ((q @ q.swapaxes(-1, -2)) @ q)

    @register
    class Hangs(_Test):
        name = "test_hangs"
        def misbehave(self, q, problem):
            time.sleep(600)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    registry.all_backends()                     # discover first: restoring an undiscovered (empty) copy empties it
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))   # keep test backends out of later tests
    path = tmp_path / "misbehaving_backends.py"
    path.write_text(PLUGIN)
    return str(path)


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, plugin, capsys):
    code, run_dir = perf(tmp_path, "--plugin", plugin, "--seq-lens", "512", "--pass", "fwd",
                         "--backends", "test_crashes,test_hangs,test_hogs,test_wrong,numpy",
                         "--memory-cap", "256M", "--timeout", "20")
    assert code == 1                                             # a crash and a wrong answer fail the run
    rows = {name: rs[0] for name, rs in by_backend(run_dir).items()}
    assert rows["test_crashes"]["status"] == "error" and "kernel exploded" in rows["test_crashes"]["message"]
    assert rows["test_hogs"]["status"] == "oom"
    assert rows["test_hangs"]["status"] == "timeout"
    assert rows["test_wrong"]["status"] == "ok" and rows["test_wrong"]["accurate"] is False
    assert rows["numpy"]["status"] == "ok"
    report = (run_dir / "report.md").read_text()
    assert "kernel exploded" in report and "timeout" in report
    summary = capsys.readouterr().out
    assert "4 points implausible, inaccurate, suspicious or failed" in summary
    for backend, verdict in (("test_crashes", "error"), ("test_hangs", "timeout"), ("test_hogs", "oom"),
                             ("test_wrong", "inaccurate")):
        assert any(line.split()[:5:4] == [backend, verdict] for line in summary.splitlines()), (backend, summary)
    fastest = next(line for line in summary.splitlines() if line.startswith("fwd "))
    assert "numpy" in fastest and "test_wrong" not in fastest     # fastest *accurate* backend
    assert "exit 1: 2 points errored, were inaccurate or implausible" in summary


def test_allow_failures_exits_0(tmp_path, plugin):
    code, run_dir = perf(tmp_path, "--plugin", plugin, "--seq-lens", "512", "--pass", "fwd",
                         "--backends", "test_wrong", "--allow-failures")
    assert code == 0 and by_backend(run_dir)["test_wrong"][0]["accurate"] is False


def test_a_memory_error_inside_torch_compile_is_oom():
    from torch._dynamo.exc import InternalTorchDynamoError

    from attnbench.perf.worker import classify

    try:
        try:
            raise MemoryError("std::bad_alloc")
        except MemoryError as exc:
            raise InternalTorchDynamoError("MemoryError: std::bad_alloc") from exc
    except InternalTorchDynamoError as wrapped:
        assert classify(wrapped) == "oom"
    assert classify(InternalTorchDynamoError("AttributeError: no attribute 'x'")) == "error"
