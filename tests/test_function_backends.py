"""A plain function in (B, N, H, D) layout is a backend by name, in check, pytest conformance and perf."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.implementations import get_backend
from attnbench.reference import AttentionInputError

ROOT = Path(__file__).resolve().parents[1]
GOOD = "tests.plugins.functions:sdpa_bnhd@bnhd"
BAD = "tests.plugins.functions:sdpa_bnhd_no_scale@bnhd"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True)


def test_the_signature_decides_what_is_declared():
    caps = get_backend(GOOD).capabilities("cpu")
    assert caps.causal == ("top_left",) and caps.masks == () and caps.gqa and caps.grad


@pytest.mark.parametrize("name, words", [
    ("tests.plugins.functions", "unknown backend .* or a function as 'package.module:function'"),
    ("tests.plugins.functions:sdpa_bnhd@nhbd", "expected 'package.module:function'"),
    ("tests.plugins.functions:missing", "cannot load"),
    ("no_such_module_anywhere:fn", "cannot load"),
])
def test_a_bad_function_name_is_one_line_naming_it(name, words):
    with pytest.raises((AttentionInputError, KeyError), match=words):
        get_backend(name)


def test_check_passes_the_function_and_fails_the_buggy_one_with_a_repro():
    problem = "B=1,H=4,Hkv=2,N=97,M=113,D=32,dtype=float32,scale=0.3"
    good = _run("-m", "attnbench.cli", "check", GOOD, "--problem", problem)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _run("-m", "attnbench.cli", "check", BAD, "--problem", problem)
    assert bad.returncode == 1 and f"attnbench check {BAD}" in bad.stdout, bad.stdout + bad.stderr


def test_pytest_conformance_takes_the_function_by_name():
    ok = _run("-m", "pytest", "conformance/test_agreement.py", "conformance/test_gradients.py", "-q",
              "-p", "no:cacheprovider", "-k", "float32", "--backend", GOOD)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    wrong = _run("-m", "pytest", "conformance/test_agreement.py", "-q", "-x", "-p", "no:cacheprovider",
                 "--backend", BAD)
    assert wrong.returncode == 1 and "FAILED" in wrong.stdout, wrong.stdout[-3000:]


def test_perf_times_and_checks_the_function(tmp_path):
    run = _run("-m", "attnbench.cli", "perf", "--backends", GOOD, "--seq-lens", "64", "--quick", "--out",
               str(tmp_path), "--dtype", "float32")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in next(tmp_path.glob("run-*/results.jsonl")).read_text().splitlines()]
    assert records and all(r["backend"] == GOOD and r["status"] == "ok" and r["accurate"] for r in records)


def test_a_function_in_transformers_convention_is_a_backend_by_name():
    """fn(module, q, k, v, attention_mask, scaling=) -> ((B, N, H, Dv), _): the module object, the additive mask and
    the output layout are the adapter's; the same name passes when right and fails when it drops the mask."""
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    good = get_backend("tests.plugins.functions:hf_style_attention")
    bad = get_backend("tests.plugins.functions:hf_style_attention_ignoring_mask")
    assert good.module_convention and good.capabilities("cpu").causal == ("top_left", "bottom_right")
    problem = Problem(B=2, H=4, Hkv=2, N=37, M=45, D=16, causal="bottom_right", mask="padding", dtype="float32")
    assert evaluate(good, problem, backward=True).passed
    assert evaluate(bad, problem).passed is False
    assert "rows with every key masked" in good.why_not(problem.replace(mask="fully_masked"))
