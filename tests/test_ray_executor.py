"""A sweep on a local Ray cluster: every point once, a killed worker costs one point, resume works, same records.

The cluster is started here (`ray.init(num_cpus=2)`, no dashboard, its own temp
dir) and shared by the tests of this module; skipped where Ray is not installed, and without --long.
"""
import platform
import shutil
import tempfile
import textwrap

import pytest

from attnbench.implementations import registry
from attnbench.perf import records
from attnbench.perf.spec import MeasureOptions, SweepSpec
from attnbench.perf.runner import run_sweep

from perf_helpers import perf, untimed

OPTIONS = MeasureOptions(time_budget_s=0.01, min_repeats=2, max_repeats=3)

# A backend whose measuring process kills the Ray worker above it (the worker runs a forkserver,
# whose child measures), then dies itself: to Ray, the task's worker vanished mid-run.
KILLER = textwrap.dedent('''
    import os, signal
    import numpy as np
    from attnbench.implementations import Backend, Capabilities, register

    def _parent_of(pid):
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    @register
    class KillsItsWorker(Backend):
        name = "test_kills_its_worker"
        caps = Capabilities(dtypes=("float32",))
        def to_numpy(self, value):
            return np.asarray(value, dtype=np.float64)
        def prepare(self, inputs, problem, *, device="cpu", return_lse=False):
            q = inputs.q.astype(np.float32)
            if problem.N > 256:                                  # the accuracy check runs at N <= 256
                os.kill(_parent_of(os.getppid()), signal.SIGKILL)
                os._exit(1)
            return lambda: q
''')


@pytest.fixture(scope="module")
def cluster(request):
    # A local cluster and a Ray worker per point cost about 50 worker-seconds, the dearest module of CI's 15
    # minutes for an optional extra; the executor's contract (records, resume) is the local executor's, tested
    # in CI (tests/test_perf_*.py).
    if not request.config.getoption("--long"):
        pytest.skip("Ray integration (a local cluster, ~50 s): run with --long")
    ray = pytest.importorskip("ray")                               # ~5 s to import: only when it runs
    temp_dir = tempfile.mkdtemp(prefix="ray")                  # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def killer_plugin(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))   # keep the test backend out of others
    path = tmp_path / "killer_backend.py"
    path.write_text(KILLER)
    return str(path)


def test_attnbench_perf_on_ray_records_what_the_local_executor_does(cluster, tmp_path):
    sweep = ("--backends", "numpy", "--seq-lens", "32,64", "--pass", "fwd")      # each point costs a Ray worker
    code, ray_run = perf(tmp_path / "ray", "--executor", "ray", *sweep)    # joins the cluster started above
    assert code == 0
    code, local_run = perf(tmp_path / "local", *sweep)
    assert code == 0
    ray_path, local_path = ray_run / "results.jsonl", local_run / "results.jsonl"
    keys = [r.key for r in records.read(ray_path)]
    assert len(keys) == len(set(keys)) == 2                      # every point arrives once
    assert untimed(ray_path) == untimed(local_path)
    for r in records.read(ray_path):                             # measured by a Ray worker on this host
        assert r.machine["host"] == platform.node() and r.machine["threads"] == 1
        assert r.machine["peak_flops"]["float32"] > 0            # the driver's peaks: same machine
    assert (ray_run / "report.html").is_file()


def test_a_killed_worker_costs_one_point_and_resume_skips_what_is_done(cluster, tmp_path, killer_plugin):
    from attnbench.perf.executors import RayExecutor

    spec = SweepSpec(seq_lens=(512,), heads=(2,), head_dims=(16,),
                     backends=("numpy", "test_kills_its_worker"), plugins=(killer_plugin,))
    path = run_sweep(spec, tmp_path, OPTIONS, executor=RayExecutor(log=lambda _: None), log=lambda _: None)
    by_key = {r.key: r for r in records.read(path)}
    assert len(by_key) == 2
    killed = [r for r in by_key.values() if r.backend == "test_kills_its_worker"]
    assert [(r.status, r.machine) for r in killed] == [("error", {})]
    assert "Ray worker died" in killed[0].message
    assert all(r.status == "ok" for r in by_key.values() if r not in killed)

    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")                 # as if the driver stopped before the last point
    log = []
    run_sweep(spec, tmp_path, OPTIONS, executor=RayExecutor(log=lambda _: None), log=log.append)
    assert "resume: 1 of 2 points already" in log[0]
    again = path.read_text().splitlines()
    assert again[:-1] == lines[:-1] and {r.key for r in records.read(path)} == set(by_key)
