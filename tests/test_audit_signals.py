"""SIGTERM and Ctrl-C end `attnbench audit` and its compile workers: none is left holding the caller's pipe.

The reported bug: `timeout 900 attnbench audit triton_blockwise` left its compile workers running, holding the
pipe open, so the caller never returned. Each test starts the audit in its own session (as `timeout` or a CI
runner would), waits for its spawned workers, signals, and then reads the pipes to their end: that returns only
once every process holding them has closed them.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("triton")

# a few compiles of triton_blockwise's forward: the audit is still compiling when the signal comes
AUDIT = ["audit", "triton_blockwise", "--kernels", "fwd", "--head-dims", "64", "--dtypes", "float16",
         "--causal", "causal", "--mods", "none", "--targets", "sm_80", "--jobs", "2", "--no-cache"]


def _children(pid: int) -> dict[int, str]:
    """{pid: command line} of the live processes whose parent is `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()           # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the workers")
@pytest.mark.parametrize("how", ["SIGTERM to the audit", "Ctrl-C to its process group"])
def test_a_signal_ends_the_audit_and_its_compile_workers(tmp_path, how):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["ATTNBENCH_AUDIT_CACHE"] = str(tmp_path)
    audit = subprocess.Popen([sys.executable, "-m", "attnbench", *AUDIT], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True, env=env)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and audit.poll() is None and time.monotonic() < deadline:
            workers |= {pid for pid, cmd in _children(audit.pid).items() if "spawn_main" in cmd}
            time.sleep(0.1)
        assert len(workers) == 2, f"the audit's two compile workers never started: {audit.poll()=}"
        if how.startswith("SIGTERM"):
            audit.send_signal(signal.SIGTERM)
        else:                                  # a terminal's Ctrl-C: SIGINT to the foreground process group
            os.killpg(audit.pid, signal.SIGINT)
        _, err = audit.communicate(timeout=60)     # EOF on both pipes: no process holds them any more
        assert not [pid for pid in workers if _alive(pid)]
        assert audit.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), err.decode()[-2000:]
        assert b"Traceback" not in err
    finally:
        for pid in [*workers, audit.pid]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        audit.wait()
