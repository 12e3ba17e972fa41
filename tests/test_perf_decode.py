"""The decode regime of perf (`attnbench perf --decode`): M swept at a fixed small N, judged in GB/s against the
machine's measured memory bandwidth.

The sweep runs through the real runner and workers with the injected clock of test_perf_trust.py (every call
takes a declared 10 ms), so the figures are decided by the test, not by the machine's load: nothing is timed.
"""
import json

import pytest

from attnbench.implementations import registry
from attnbench.perf import measure, records
from attnbench.perf.spec import MeasureOptions, SweepSpec
from attnbench.perf.records import PointResult
from attnbench.perf.report import render
from attnbench.perf.runner import run_sweep
from attnbench.problem import Problem

from test_perf_trust import INJECTED

SECONDS = 0.01


@pytest.fixture
def injected(tmp_path, monkeypatch):
    """A module file registering `injected`: torch_eager whose every call takes SECONDS on the worker's clock."""
    registry.discover()
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    monkeypatch.setattr(measure, "time", measure.time)
    path = tmp_path / "injected_decode.py"
    path.write_text(INJECTED.format(cls="InjectedDecode", name="injected", seconds=SECONDS))
    return str(path)


def test_decode_spec_sweeps_m_at_fixed_n_with_grouped_heads():
    spec = SweepSpec(seq_lens=(1, 16), kv_lens=(4096, 65536), heads=(8,), kv_heads=2)
    assert [(p.N, p.M, p.H, p.Hkv) for p in spec.problems()] == [(1, 4096, 8, 2), (1, 65536, 8, 2),
                                                                 (16, 4096, 8, 2), (16, 65536, 8, 2)]


def test_decode_bytes_are_k_and_v_read_q_read_o_written():
    p = Problem(B=2, H=8, Hkv=2, N=4, M=1000, D=64, Dv=32, dtype="float16")
    assert records.decode_bytes(p) == (2 * 2 * 1000 * (64 + 32) + 2 * 8 * 4 * (64 + 32)) * 2
    assert records.kv_bytes_per_token(p) == 2 * (64 + 32) * 2


def test_decode_sweep_records_gbps_and_the_fraction_of_measured_bandwidth(tmp_path, injected):
    spec = SweepSpec(seq_lens=(1,), kv_lens=(64, 128), heads=(2,), kv_heads=1, head_dims=(16,),
                     backends=("injected",), plugins=(injected,))
    options = MeasureOptions(time_budget_s=0.02, min_repeats=5, processes=1, remeasure=0)
    run_sweep(spec, tmp_path, options, log=lambda *_: None)
    points = [PointResult.from_dict(json.loads(line)) for line in (tmp_path / "results.jsonl").read_text().split("\n")
              if line]
    assert [p.M for p in points] == [64, 128] and all(p.status == "ok" for p in points)
    for p in points:
        bytes_moved = records.decode_bytes(Problem(B=1, H=2, Hkv=1, N=1, M=p.M, D=16))
        assert p.bytes_moved == bytes_moved and p.kv_bytes_per_token == 1 * 2 * 16 * 4 and p.kv_layout == "dense"
        assert p.time_median_s == pytest.approx(SECONDS, rel=0.1)                    # the injected clock
        assert p.gbps == pytest.approx(bytes_moved / p.time_median_s / 1e9, rel=1e-12)
        assert p.machine["peak_bandwidth"] > 0
        assert p.bandwidth_fraction == pytest.approx(p.gbps * 1e9 / p.machine["peak_bandwidth"], rel=1e-12)
    render(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "Decode regime" in report and "of measured bandwidth" in report
    assert (tmp_path / "decode_time_vs_m.png").exists() and (tmp_path / "decode_bandwidth_vs_m.png").exists()


def test_a_ragged_batch_counts_its_own_tokens():
    """Bytes and FLOPs of a ragged or paged point come from each sequence's length, not B times the longest."""
    from attnbench.reference import layouts

    dense = Problem(B=4, H=8, Hkv=2, N=1, M=1000, D=64, dtype="float16")
    ragged = dense.replace(kv="ragged")
    g = layouts.geometry(ragged)
    assert g.seq_k.sum() < 4 * 1000                                        # the drawn lengths are shorter
    assert records.decode_bytes(ragged) == (2 * int(g.seq_k.sum()) * 128 + 8 * int(g.seq_q.sum()) * 128) * 2
    assert records.flops(ragged, "fwd") == sum(2 * 8 * m * 128 for m in g.seq_k.tolist())
    assert records.decode_bytes(dense) == (2 * 4 * 1000 * 128 + 8 * 4 * 128) * 2


def test_perf_times_and_checks_ragged_and_paged_points_natively_and_through_pad_and_mask(tmp_path):
    """`--kv`: torch_blockwise reads the layout itself, torch_eager through pad-and-mask; the timed calls'
    results are checked in the layout's own shapes either way (they were 'inaccurate: output shape' before)."""
    from perf_helpers import perf
    from test_perf_trust import rows

    for kv in ("ragged", "paged:16"):
        code, run_dir = perf(tmp_path / kv.replace(":", ""), "--decode", "--kv-lens", "80", "--seq-lens", "2",
                             "--batch", "3", "--kv", kv, "--append", "1", "--backends", "torch_blockwise,torch_eager",
                             "--processes", "1", "--causal", "bottom_right")
        points = rows(run_dir)
        assert code == 0 and {r["backend"] for r in points} == {"torch_blockwise", "torch_eager"}
        for r in points:
            assert r["status"] == "ok" and r["accurate"] and r["integrity"]["failure"] is None, r
            assert r["kv_layout"] == f"{kv}+append 1"


def test_a_bad_layout_is_one_line_naming_the_flag(capsys):
    from attnbench.cli import main

    assert main(["perf", "--kv", "pages:16", "--backends", "numpy"]) == 2
    assert "--kv: kv: expected one of" in capsys.readouterr().err
