"""--resume continues the sweep saved in the run directory; Ctrl-C stops cleanly; one writer per run at a time."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from attnbench.cli import main
from attnbench.perf import records
from attnbench.perf.runner import writer_lock

import pytest

from perf_helpers import perf


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One small finished run (numpy, N 32 and 48, fwd); each test gets its own copy."""
    code, run_dir = perf(tmp_path_factory.mktemp("measured"), "--backends", "numpy", "--seq-lens", "32,48",
                         "--pass", "fwd")
    assert code == 0
    return run_dir


@pytest.fixture
def run_dir(measured, tmp_path):
    return Path(shutil.copytree(measured, tmp_path / measured.name))

SLOW_PLUGIN = textwrap.dedent('''
    import os, time
    import numpy as np
    from attnbench.implementations import Backend, Capabilities, register

    @register
    class Sleeps(Backend):
        """Correct (computes the reference), but sleeps at N > 256 while the file SLEEP_FLAG exists."""
        name = "test_sleeps"
        caps = Capabilities(dtypes=("float32",))
        def to_numpy(self, value):
            return np.asarray(value, dtype=np.float64)
        def prepare(self, inputs, problem, *, device="cpu", return_lse=False):
            from attnbench.reference import sdpa
            flag = os.environ["SLEEP_FLAG"]
            def run():
                if problem.N > 256 and os.path.exists(flag):
                    with open(flag + ".pid", "w") as f:
                        f.write(str(os.getpid()))
                    time.sleep(600)
                return sdpa(inputs.q, inputs.k, inputs.v).astype(np.float32)    # every call does the work
            return run
''')


def _terminal_signals() -> None:
    """The child starts with SIGINT as a terminal's shell leaves it (default, unblocked), whatever the test process
    inherited: an ignored or blocked SIGINT is inherited across exec, and Python then installs no
    KeyboardInterrupt at all (CI's pytest-xdist workers were seen so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except FileNotFoundError:
        return True


def test_ctrl_c_ends_workers_renders_and_prints_the_resume_command(tmp_path):
    plugin, flag = tmp_path / "slow.py", tmp_path / "sleep"
    plugin.write_text(SLOW_PLUGIN)
    flag.write_text("")
    out = tmp_path / "reports"
    argv = [sys.executable, "-m", "attnbench.cli", "perf", "--out", str(out), "--plugin", str(plugin),
            "--backends", "torch_eager,test_sleeps", "--seq-lens", "512", "--heads", "1", "--head-dim", "16",
            "--time-budget", "0.01", "--repeats", "2", "--pass", "fwd"]
    env = {**os.environ, "SLEEP_FLAG": str(flag), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_terminal_signals)
    deadline = time.time() + 120
    while not (tmp_path / "sleep.pid").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    worker = int((tmp_path / "sleep.pid").read_text())
    proc.send_signal(signal.SIGINT)                              # the parent only, as a kill -INT would
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    run_dir = next(out.glob("run-*"))
    assert f"continue with: attnbench perf --resume {run_dir}" in stderr
    assert (run_dir / "report.html").is_file() and "torch_eager" in (run_dir / "report.md").read_text()
    for _ in range(50):
        if _gone(worker):
            break
        time.sleep(0.1)
    assert _gone(worker), "the worker of the interrupted point is still running"
    assert [r.backend for r in records.read(run_dir / "results.jsonl")] == ["torch_eager"]

    flag.unlink()                                                # the resumed point now finishes
    done = subprocess.run([sys.executable, "-m", "attnbench.cli", "perf", "--resume", str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resume: 1 of 2 points already" in done.stderr
    assert sorted(r.backend for r in records.read(run_dir / "results.jsonl")) == ["test_sleeps", "torch_eager"]


def test_resume_continues_the_saved_sweep_not_the_default(run_dir, capsys):
    saved = json.loads((run_dir / "spec.json").read_text())
    assert saved["spec"]["seq_lens"] == [32, 48] and saved["args"]["heads"] == "2"
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text(lines[0] + "\n")     # as if stopped after the first point
    capsys.readouterr()
    assert main(["perf", "--resume", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "resume: 1 of 2 points already" in err
    assert [r.N for r in records.read(run_dir / "results.jsonl")] == [32, 48]


def test_resume_refuses_flags_that_contradict_the_saved_sweep(run_dir, capsys):
    before = (run_dir / "results.jsonl").read_text()
    capsys.readouterr()
    assert main(["perf", "--resume", str(run_dir), "--heads", "8"]) == 2
    err = capsys.readouterr().err
    assert "--heads 8 contradicts the sweep saved in" in err and len(err.strip().splitlines()) == 1
    assert main(["perf", "--resume", str(run_dir), "--heads", "4"]) == 2          # the default, typed: still no
    capsys.readouterr()
    assert main(["perf", "--resume", str(run_dir), "--heads", "2", "--seq-lens", "32,48", "--pass", "fwd"]) == 0   # repeats it: fine
    assert (run_dir / "results.jsonl").read_text() == before


def test_a_second_writer_of_one_run_is_refused(run_dir, capsys):
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text(lines[0] + "\n")
    with writer_lock(run_dir):                                   # another process is resuming it
        capsys.readouterr()
        assert main(["perf", "--resume", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert "is being measured by another attnbench process" in err and "Traceback" not in err
    assert len(records.read(run_dir / "results.jsonl")) == 1


def test_compare_refuses_a_run_with_duplicate_records(run_dir, capsys):
    path = run_dir / "results.jsonl"
    path.write_text(path.read_text() * 2)                       # two writers appended the same point
    capsys.readouterr()
    assert main(["compare", str(run_dir), str(run_dir)]) == 2
    assert "records 2 points more than once" in capsys.readouterr().err


def test_unreadable_lines_are_reported_not_dropped(run_dir):
    path = run_dir / "results.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n" + '{"torn": \n' + second + "\n" + json.dumps({**json.loads(second), "schema": 99}))
    warnings = []
    assert len(records.read(path, warn=warnings.append)) == 2
    assert len(warnings) == 2
    assert ":2: unreadable record (a torn write" in warnings[0] and "schema 99 is newer" in warnings[1]


def test_a_ctrl_c_the_kernel_hands_to_another_thread_still_stops_the_wait_for_a_worker():
    """Linux may deliver a process's SIGINT to any of its threads (the perf parent has two); Python then raises
    KeyboardInterrupt only when the main thread returns to bytecode, so a single long `poll` on the worker's pipe
    sat out the whole point timeout (CI: a 60 s wait, stuck). `_poll` waits in slices: interrupted within ~1 s."""
    import multiprocessing
    import threading

    from attnbench.perf.worker import _poll

    recv, _send = multiprocessing.Pipe(duplex=False)
    # SIGINT as an interactive process has it, whatever this test process inherited (see `_terminal_signals`)
    handler, mask = signal.signal(signal.SIGINT, signal.default_int_handler), signal.pthread_sigmask(
        signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        threading.Timer(0.3, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT)).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            _poll(recv, 30.0)
        assert time.monotonic() - start < 5.0
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def test_ctrl_c_before_the_first_point_is_recorded_prints_the_resume_command(tmp_path, capsys):
    """A sweep interrupted during its first point has a run directory without results.jsonl: a clean stop with
    the resume command, not a traceback from rendering the missing file (found by the README review)."""
    from attnbench.perf.commands import interrupted
    from attnbench.perf.runner import Interrupted

    assert interrupted(Interrupted(tmp_path, 0, 8)) == 130
    err = capsys.readouterr().err
    assert "no partial report: no point was recorded yet" in err
    assert f"continue with: attnbench perf --resume {tmp_path}" in err
