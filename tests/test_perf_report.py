"""Reports re-render from results.jsonl alone; `attnbench compare` flags significant regressions only."""
import numpy as np
import pytest

from attnbench.cli import main
from attnbench.perf import records

from perf_helpers import synthetic


def write_run(run_dir, scale=1.0, noise_seed=0):
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(noise_seed)
    for backend, power in (("naive", 2), ("lean", 1)):
        for n in (256, 512, 1024, 2048):
            base = 1e-3 * (n / 256) ** power * scale
            records.append(run_dir / "results.jsonl",
                           synthetic(backend, n, list(base * (1 + 0.02 * rng.random(8))),
                                     peak_bytes=int(64 * n ** power)))
    return run_dir


def test_report_rerenders_from_jsonl_only(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run-x")
    assert main(["report", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    assert "| naive | fwd" in md and "2.00" in md and "1.00" in md        # fitted memory slopes 2 and 1
    assert (run_dir / "report.html").read_text().count("data:image/png;base64,") == 4


def test_compare_flags_a_2x_regression(tmp_path, capsys):
    old, new = write_run(tmp_path / "old"), write_run(tmp_path / "new", scale=2.0, noise_seed=1)
    assert main(["compare", str(old), str(new)]) == 1
    assert capsys.readouterr().out.count("REGRESSION") == 8


def test_compare_identical_runs_exits_0(tmp_path, capsys):
    old = write_run(tmp_path / "old")
    assert main(["compare", str(old), str(old)]) == 0
    assert "0 significant regressions" in capsys.readouterr().out


def test_compare_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--seq-lens", "1,x"], "--seq-lens: expected comma-separated integers"),
    (["--memory-cap", "lots"], "--memory-cap: expected a size"),
    (["--pass", "bwd"], "--pass: expected some of fwd, fwd+bwd"),
    (["--backends", "nosuch"], "unknown backend 'nosuch'"),
    (["--resume", "/nonexistent"], "--resume: no results.jsonl"),
])
def test_perf_user_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["perf", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
