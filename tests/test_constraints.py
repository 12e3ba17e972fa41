"""Shape constraints are data the whole suite respects: a narrow backend runs `pytest conformance` with skips
and reasons, never a failure, an error or hypothesis' Unsatisfiable, and is still failed when it is wrong."""
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings

from attnbench.implementations import Capabilities
from conformance.strategies import problems

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "narrow_plugin.py"
NARROW = Capabilities(dtypes=("float16",), seq_multiple=128, head_dim_choices=(64, 128), same_length=True,
                      max_seq_by_dtype=(("float16", 512),), max_batch_heads=64)


@settings(max_examples=50, deadline=None)
@given(problems(NARROW))
def test_drawn_problems_stay_inside_the_declared_constraints(problem):
    assert NARROW.why_not(problem) is None, problem


@pytest.mark.parametrize("change, words", [
    (dict(N=100, M=100), "multiples of 128"),
    (dict(D=80, Dv=80), "not one of 64, 128"),
    (dict(M=256), "N = M only"),
    (dict(N=640, M=640), "above max 512 in float16"),
    (dict(B=16, H=8), "B * H = 128 above max 64"),
])
def test_a_problem_outside_a_constraint_is_refused_with_the_reason(change, words):
    from attnbench.problem import Problem

    inside = Problem(N=128, M=128, D=64, dtype="float16")
    assert NARROW.why_not(inside) is None
    assert words in NARROW.why_not(inside.replace(**change))


# The suites where constraints bite (drawn problems, bad input, the fixed cases); `--long` runs the whole suite.
WHERE_CONSTRAINTS_BITE = ("conformance/test_properties.py", "conformance/test_bad_input.py",
                          "conformance/test_agreement.py")


def _conformance(backend: str, *extra: str, paths=WHERE_CONSTRAINTS_BITE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider",
                           "--plugin", str(PLUGIN), "--backend", backend, *extra],
                          cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ,
                                                                          "OMP_NUM_THREADS": "1"})


def test_a_correct_narrow_backend_passes_the_whole_suite_and_a_wrong_one_fails(request):
    # CI: the three suites where a constraint can turn into an error or a false failure (~1/4 of the whole
    # suite's time); --long: all of conformance/.
    ok = _conformance("narrow_sdpa", paths=("conformance",) if request.config.getoption("--long")
                      else WHERE_CONSTRAINTS_BITE)
    tail = ok.stdout[-3000:] + ok.stderr[-2000:]
    assert ok.returncode == 0, tail
    assert " error" not in ok.stdout.splitlines()[-1] and "passed" in ok.stdout.splitlines()[-1], tail
    wrong = _conformance("narrow_sdpa_no_scale", "-x")
    assert wrong.returncode == 1 and "FAILED" in wrong.stdout, wrong.stdout[-3000:]
