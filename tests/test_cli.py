"""The command line: help works, checks exit 0/1, user mistakes exit 2 with one line and no traceback."""
import pytest

from attnbench.cli import main


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "run" in capsys.readouterr().out


def test_check_passes_on_a_correct_backend(capsys):
    assert main(["check", "torch_eager", "--problem", "B=2,N=33,M=40,dtype=float16,causal=bottom_right"]) == 0
    assert "repro: attnbench check torch_eager" in capsys.readouterr().out


def test_check_backward(capsys):
    assert main(["check", "torch_eager", "--backward", "--problem", "N=17,D=16"]) == 0
    assert "dk: ok" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["check", "nosuch", "--problem", "N=4"], "unknown backend 'nosuch'"),
    (["check", "numpy", "--problem", "heads=3"], "expected key=value"),
    (["check", "numpy", "--problem", "H=3,Hkv=2"], "multiple of Hkv"),
    (["check", "numpy", "--problem", "N=0"], "sizes must be integers >= 1"),
    (["check", "numpy", "--problem", "N=abc"], "N expects a number"),
    (["check", "numpy", "--problem", "B=1.5"], "B expects a number"),
    (["check", "numpy", "--problem", "dtype=int8"], "dtype must be one of"),
    (["check", "numpy", "--problem", "mask=triangle"], "mask must be one of"),
    (["check", "numpy", "--problem", "causal=diagonal"], "causal"),
    (["check", "numpy", "--problem", "layout=diagonal"], "layout must be one of"),
    (["check", "numpy", "--problem", "inputs=uniform"], "inputs must be one of"),
    (["check", "numpy", "--problem", "scale=nan"], "scale must be a finite number"),
    (["check", "numpy", "--problem", "N"], "expected key=value"),
])
def test_user_mistakes_exit_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unsupported_problem_is_reported_not_crashed(capsys):
    assert main(["check", "numpy", "--problem", "dtype=bfloat16"]) == 2
    assert "dtype bfloat16 not supported" in capsys.readouterr().out


def test_run_writes_a_report(tmp_path):
    from attnbench.perf.commands import finish, main_job
    from attnbench.perf.spec import RUN, MeasureOptions, SweepSpec

    assert RUN.spec.heads_at_n and len(RUN.spec.heads) > 1   # `run` draws time vs H
    spec = SweepSpec(seq_lens=(32, 48), heads=(2, 4), heads_at_n=32, head_dims=(16,),
                     backends=("numpy", "torch_eager", "torch_sdpa_math"))
    run_dir = main_job(tmp_path, spec=spec, options=MeasureOptions(time_budget_s=0.01, min_repeats=2),
                       log=lambda *_: None)
    printed = []
    assert finish(run_dir, allow_failures=False, log=printed.append, points=True) == 0
    assert printed[0].split()[:3] == ["backend", "pass", "H"] and printed[0].count("\n") >= 10   # every point
    rows = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(rows) == 9 and "torch_eager" in (run_dir / "report.md").read_text()
    assert (run_dir / "time_vs_h.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["check", "torch_sdpa_flash", "--problem", "layout=strided"], "strided (non-contiguous) inputs not supported"),
    (["check", "numpy", "--backward", "--problem", "N=4"], "no backward (grad) support"),
])
def test_unsupported_feature_is_a_reason_not_a_traceback(capsys, argv, message):
    assert main(argv) == 2
    out = capsys.readouterr()
    assert message in out.out and "Traceback" not in out.out + out.err


def test_unknown_option_is_argparse_usage_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "numpy", "--problem", "N=4", "--device", "tpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'tpu'" in err and "Traceback" not in err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"attnbench {version('attnbench')}"


def test_every_help_shows_the_defaults():
    from attnbench.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.default not in (None, [], False, True, "==SUPPRESS==") and action.help:
                flag = action.option_strings[-1] if action.option_strings else action.dest
                shown = " ".join(sub.formatter_class("x")._get_help_string(action).split())
                assert "default" in shown and f"{action.default}" in text, (name, flag)


def test_check_runs_triton_under_the_interpreter_and_its_repro_line_is_complete(tmp_path):
    """Without CUDA, `attnbench check triton_blockwise` sets TRITON_INTERPRET itself; its repro line re-runs as is."""
    import os
    import shlex
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("the interpreter is chosen only without CUDA")
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cli = [sys.executable, "-m", "attnbench.cli"]
    done = subprocess.run([*cli, "check", "triton_blockwise", "--problem", "B=1,H=2,N=33,D=16,dtype=float32"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    repro = next(line for line in done.stdout.splitlines() if line.startswith("repro: ")).removeprefix("repro: ")
    again = subprocess.run([*cli, *shlex.split(repro)[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "repro: " + repro in again.stdout


@pytest.mark.parametrize("name, said", [
    ("torch_eagr", ["unknown backend 'torch_eagr'", "torch_eager"]),
    # a function backend whose package is missing (the README's flash_attn commands on a CPU machine): was an
    # INTERNALERROR traceback
    ("no_such_package_xyz:attention", ["cannot load no_such_package_xyz:attention", "No module named"]),
])
def test_unknown_backend_in_pytest_is_one_line(name, said):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "conformance", "--backend", name, "-q",
                           "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300)
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 4 and len(output) == 1, output[:20]
    assert all(words in output[0] for words in said), output[0]


needs_no_cuda = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is present here")


@needs_no_cuda
@pytest.mark.parametrize("command", ["run", "perf"])
def test_cuda_without_cuda_is_one_line_exit_2_and_no_run_dir(capsys, tmp_path, command):
    assert main([command, "--device", "cuda", "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()


@needs_no_cuda
def test_conformance_on_cuda_without_cuda_fails_not_passes():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "conformance", "--device", "cuda", "-q",
                           "-k", "test_agreement", "-p", "no:cacheprovider"], capture_output=True, text=True)
    assert done.returncode != 0 and "--device cuda" in done.stderr + done.stdout
    assert "passed" not in done.stdout
