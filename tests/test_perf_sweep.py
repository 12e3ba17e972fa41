"""`attnbench perf` end to end on CPU: a quick sweep writes every report file; --resume skips done points."""
import json

from attnbench.perf import records
from attnbench.perf.spec import MeasureOptions, SweepSpec, expand
from attnbench.perf.runner import run_sweep

from perf_helpers import by_backend, perf

REPORT_FILES = ("results.jsonl", "machine.json", "spec.json", "report.md", "report.html", "time_vs_n.png",
                "memory_vs_n.png", "fraction_of_peak.png")   # one H swept: time_vs_h is a sentence, not an image


def test_quick_sweep_writes_all_report_files(tmp_path):
    code, run_dir = perf(tmp_path, "--quick", "--backends", "torch_eager,torch_sdpa_flash,numpy")
    assert code == 0
    assert all((run_dir / name).is_file() for name in REPORT_FILES)
    rows = by_backend(run_dir)
    ok = [r for rs in rows.values() for r in rs if r["status"] == "ok"]
    assert len(ok) == 9 and all(r["accurate"] and r["tflops"] > 0 and r["samples"] for r in ok)
    assert all(r["machine"]["peak_flops"]["float32"] > 0 for r in ok)
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "ru_maxrss" in html and "only H = 2 was swept" in html


def test_unsupported_combinations_are_listed_with_a_reason():
    cases, skipped = expand(SweepSpec(seq_lens=(64,), passes=("fwd", "fwd+bwd"), backends=("numpy",)))
    assert len(cases) == 1 and [reason for _, reason in skipped] == ["no backward (grad) support"]


def test_resume_skips_points_already_recorded(tmp_path):
    spec = SweepSpec(seq_lens=(32, 64), heads=(2,), head_dims=(16,), backends=("torch_sdpa_flash",))
    options = MeasureOptions(time_budget_s=0.01, min_repeats=2, max_repeats=3)
    path = run_sweep(spec, tmp_path, options, log=lambda _: None)
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n" + '{"torn": ')                   # as if killed while writing the second point
    log = []
    run_sweep(spec, tmp_path, options, log=log.append)
    assert "resume: 1 of 2 points already" in log[0]
    lines = path.read_text().splitlines()
    assert lines[0] == first and len(records.read(path)) == 2
    assert [json.loads(line)["N"] for line in lines[:1] + lines[2:]] == [32, 64]


def test_quick_leaves_out_backends_that_run_under_a_simulator(capsys, monkeypatch):
    # --quick used to time triton_blockwise under the Triton interpreter: 59 of its 112 s, times of no kernel.
    from attnbench.implementations import triton_blockwise
    from attnbench.perf.spec import measurable_backends

    monkeypatch.setattr(triton_blockwise, "INTERPRETED", True)     # as the CLI sets it without CUDA
    kept = measurable_backends("cpu", ())
    assert "torch_eager" in kept and "numpy" in kept and "triton_blockwise" not in kept
    assert "triton_blockwise (runs under the Triton interpreter" in capsys.readouterr().err
    monkeypatch.setattr(triton_blockwise, "INTERPRETED", False)
    assert "triton_blockwise" in measurable_backends("cpu", ())


def test_quick_without_backends_builds_its_sweep(tmp_path, capsys):
    # The --quick path that picks the measurable backends itself (no --backends); a bad size then stops it
    # before any work, so this runs in a second and still goes through the selection.
    from attnbench.cli import main

    assert main(["perf", "--quick", "--memory-cap", "0", "--out", str(tmp_path)]) == 2
    assert "--memory-cap" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_capabilities_survive_the_trip_to_a_worker():
    """The parent hands each worker its probed capabilities as a dict: the declared precision and the shape
    constraints come back as they were (a Precision came back a dict, and every half-precision point errored)."""
    import dataclasses
    import json

    from attnbench.implementations import get_backend
    from attnbench.perf.worker import capabilities_from_dict

    for name in ("torch_sdpa_flash", "torch_blockwise"):
        caps = get_backend(name).capabilities("cpu").replace(seq_multiple=16, max_seq_by_dtype=(("float16", 64),))
        assert capabilities_from_dict(json.loads(json.dumps(dataclasses.asdict(caps)))) == caps
