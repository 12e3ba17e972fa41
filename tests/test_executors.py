"""Executors: the serial and multi-worker local ones give the same records; each point names the machine that measured it."""
import dataclasses

import pytest

from attnbench.cli import main
from attnbench.perf import records
from attnbench.perf.executors import (LocalPoolExecutor, Placement, PointJob, SerialExecutor, cpu_sets,
                                      measure_point, placements)
from attnbench.perf.spec import Case, MeasureOptions, SweepSpec
from attnbench.perf.runner import run_sweep, with_peaks
from attnbench.problem import Problem

from perf_helpers import untimed

SPEC = SweepSpec(seq_lens=(32, 64), heads=(2,), head_dims=(16,), backends=("torch_eager", "numpy"))
OPTIONS = MeasureOptions(time_budget_s=0.01, min_repeats=2, max_repeats=3)
def test_cpu_sets_split_the_cores_disjointly():
    sets = cpu_sets(3, cpus=[0, 1, 2, 3, 4, 5, 6])
    assert sorted(c for s in sets for c in s) == list(range(7)) and min(len(s) for s in sets) == 2
    with pytest.raises(ValueError, match="3 workers but only 2 cores"):
        cpu_sets(3, cpus=[0, 1])


def test_cuda_workers_get_one_visible_gpu_each():
    assert [p.env for p in placements("cuda", 2, visible="4,6,7")] == [{"CUDA_VISIBLE_DEVICES": "4"},
                                                                      {"CUDA_VISIBLE_DEVICES": "6"}]
    with pytest.raises(ValueError, match="2 workers but only 1 GPUs"):
        placements("cuda", 2, visible="0")


def test_the_child_reports_the_machine_it_ran_on():
    job = PointJob(Case("numpy", Problem(N=32, H=2, D=16)), OPTIONS, 60.0)
    outcome = measure_point(job, Placement(cpus=(sorted(__import__("os").sched_getaffinity(0))[0],), threads=2))
    assert outcome.status == "ok" and "machine" not in outcome.fields
    assert outcome.machine["threads"] == 1                       # one core pinned: the child capped its threads


def test_peaks_are_borrowed_only_from_the_same_machine():
    driver = {"host": "a", "device": "cpu", "device_name": "x86", "threads": 2, "peak_flops": {"float32": 1e11}}
    assert with_peaks({"host": "a", "device": "cpu", "device_name": "x86", "threads": 1}, driver) == \
        {**driver, "threads": 1}
    other = {"host": "b", "device": "cpu", "device_name": "x86", "threads": 1}
    assert with_peaks(other, driver) == other


def test_two_local_workers_record_what_one_does(tmp_path):
    serial = run_sweep(SPEC, tmp_path / "serial", OPTIONS, executor=SerialExecutor(), log=lambda _: None)
    log = []
    pooled = run_sweep(SPEC, tmp_path / "pooled", OPTIONS, executor=LocalPoolExecutor("cpu", 2, log=log.append),
                       log=log.append)
    assert any("disturb each other's timings" in line for line in log)
    lines = pooled.read_text().splitlines()
    assert len(lines) == len(set(lines)) == 4                    # every point once
    assert untimed(pooled) == untimed(serial)
    cores = max(len(s) for s in cpu_sets(2))
    assert all(r.machine["peak_flops"] and r.machine["threads"] <= cores for r in records.read(pooled))


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers: expected an integer >= 1"),
    (["--address", "auto"], "--address needs --executor ray"),
    (["--executor", "ray", "--workers", "2"], "--workers is for the local executor"),
])
def test_bad_executor_options_exit_2(tmp_path, capsys, argv, message):
    assert main(["perf", "--out", str(tmp_path), "--quick", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())                          # nothing made before the input was checked


def test_the_report_groups_points_by_the_machine_that_measured_them(tmp_path):
    from attnbench.perf.report import render

    from perf_helpers import synthetic

    def on(host, n):
        r = synthetic("numpy", n, [1e-3 * n / 64] * 5)
        return dataclasses.replace(r, machine={**r.machine, "host": host, "device_name": "x86"})

    for r in [on("node-a", 64), on("node-a", 128), on("node-b", 64), on("node-b", 128)]:
        records.append(tmp_path / "results.jsonl", r)
    render(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Machine node-a: x86 (cpu)" in md and "## Machine node-b: x86 (cpu)" in md
    points_a = md.split("## Points on node-a")[1].split("##")[0]
    assert points_a.count("| numpy |") == 2                       # node-b's points are not in node-a's table
    assert (tmp_path / "m1-time_vs_n.png").is_file() and (tmp_path / "m2-time_vs_n.png").is_file()
