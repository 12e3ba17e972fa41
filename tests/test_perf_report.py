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


def slope_rows(md: str) -> dict[str, tuple[str, str]]:
    """{series: (time slope, memory slope)} from the report's slopes table."""
    section = md.split("## Fitted slopes")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    return {r[0]: (r[1], r[2]) for r in rows[2:]}


def test_report_rerenders_from_jsonl_only(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run-x")
    assert main(["report", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    slopes = slope_rows(md)
    naive = next(v for k, v in slopes.items() if k.startswith("naive"))
    lean = next(v for k, v in slopes.items() if k.startswith("lean"))
    # times grow like N^2 and N^1 (2% noise), memory exactly like 64 N^2 and 64 N
    assert naive[1] == "2.00" and lean[1] == "1.00"
    assert abs(float(naive[0]) - 2) < 0.05 and abs(float(lean[0]) - 1) < 0.05
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "No time-vs-H plot: only H = 2 was swept" in page


def test_an_empty_results_file_is_an_error_not_a_report(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text("")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no readable records" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


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
    (["--memory-cap", "0"], "--memory-cap: expected a size above 0"),
    (["--repeats", "0"], "--repeats, --time-budget and --timeout must be positive"),
    (["--kv-len", "0"], "--kv-len: expected an integer >= 1"),
    (["--pass", "bwd"], "--pass: expected some of fwd, fwd+bwd"),
    (["--backends", "nosuch"], "unknown backend 'nosuch'"),
    (["--resume", "/nonexistent"], "--resume: no results.jsonl"),
])
def test_perf_user_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["perf", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
