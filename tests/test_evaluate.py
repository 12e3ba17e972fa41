"""One problem, one verdict: `attnbench check`, a conformance test and a perf point all go through
`attnbench.evaluate`, a declared known deviation included; a perf fwd+bwd point is judged on its gradients."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from attnbench.deviations import KnownDeviation, KnownDeviationWarning
from attnbench.implementations import registry
from attnbench.problem import Problem

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conformance._verdict import assert_passes  # noqa: E402
from conformance.mutants import make_backend  # noqa: E402
from conformance.mutants.twin import BlockwiseTwin  # noqa: E402
from perf.measure import accuracy  # noqa: E402
from perf.spec import Case  # noqa: E402

PROBLEM = Problem(B=1, H=2, N=32, M=64, D=32, dtype="float16", seed=4)


class Sloppy(BlockwiseTwin):
    """sloppy: the twin with 4e-3 added away from zero before the output's rounding, about 7x the plain
    float16 formula's error and inside condition 1's bound: it fails only the 2x-naive rule."""

    name = "sloppy_for_test"
    caps = BlockwiseTwin.caps.replace(precision=())

    def round_output(self, out, io_dtype):
        return (out + 4e-3 * out.sign()).to(io_dtype)


DECLARED = KnownDeviation(
    name="sloppy_output", backend=Sloppy.name, device="cpu", problem_class="float16 forward",
    applies=lambda problem, backward: problem.dtype == "float16" and not backward, tensors=("output",),
    ratio_by_length=((64, 20.0),), evidence="planted by the test", witness=PROBLEM.spec())


def _three_paths(backend, capsys):
    """(exit code of `attnbench check`, whether the conformance assertion passed, perf's accurate flag)."""
    from attnbench.cli import main

    code = main(["check", backend.name, "--problem", PROBLEM.spec()])
    printed = capsys.readouterr().out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            assert_passes(backend, PROBLEM, "cpu")
            conformance = True
        except AssertionError:
            conformance = False
    _, accurate = accuracy(backend, Case(backend.name, PROBLEM, "fwd"))
    noted = "known deviation" in printed and any(issubclass(w.category, KnownDeviationWarning) for w in caught)
    return code, conformance, accurate, noted


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_a_known_deviation_gets_the_same_verdict_on_check_pytest_and_perf(monkeypatch, capsys, declared):
    backend = Sloppy()
    backend.known_deviations = (DECLARED,) if declared else ()
    monkeypatch.setitem(registry._BACKENDS, backend.name, backend)
    code, conformance, accurate, noted = _three_paths(backend, capsys)
    if declared:
        assert (code, conformance, accurate, noted) == (0, True, True, True)
    else:
        assert (code, conformance, accurate, noted) == (1, False, False, False)


def test_a_perf_fwd_bwd_point_with_a_wrong_backward_is_inaccurate():
    backend = make_backend("dk_dv_swapped")             # right forward, dK and dV exchanged
    problem = Problem(B=1, H=2, N=24, M=24, D=16, dtype="float32")
    assert accuracy(backend, Case(backend.name, problem, "fwd"))[1] is True
    assert accuracy(backend, Case(backend.name, problem, "fwd+bwd"))[1] is False


def test_a_skip_says_why_and_passes_nothing():
    from attnbench.evaluate import evaluate
    from attnbench.implementations import get_backend

    result = evaluate(get_backend("numpy"), PROBLEM.replace(dtype="bfloat16"))
    assert result.passed is None and "dtype bfloat16 not supported" in result.message()


@pytest.mark.parametrize("backend, spec", [
    ("torch_blockwise", "B=1,H=2,N=100,M=2,D=16,dtype=float32,seed=14,scale=4"),
    ("torch_blockwise", "B=1,H=2,N=1,M=64,D=4,dtype=float32,seed=41,inputs=peaked"),
    ("torch_sdpa_flash", "B=1,H=2,N=5,M=1,D=64,dtype=float16,seed=57"),
])
def test_perf_verifies_a_timed_call_on_the_rows_and_bounds_check_uses(backend, spec):
    """A timed fwd+bwd call of a correct kernel passes where `attnbench check` passes it: at small sizes both judge
    every row with the full check's bounds (floor (b) of condition 2). On `sampled_rows` the timed call lost floor
    (b) and failed these correct backends (dK 1.15x torch_blockwise's 2x-naive limit; dQ, dK of sdpa flash with
    M = 1, where the naive error is 0) in perf only."""
    from attnbench.check import grad_out_for
    from attnbench.evaluate import evaluate
    from attnbench.problem import make_inputs
    from perf.measure import verifier

    b, problem = registry.get_backend(backend), Problem.parse(spec)
    assert evaluate(b, problem, backward=True).passed
    run = b.prepare_backward(make_inputs(problem), problem, grad_out_for(problem))
    wrong = verifier(b, Case(backend, problem, "fwd+bwd"), [problem], [run])
    assert wrong(0, run()) is None



def test_a_row_sampled_backward_says_it_did_not_judge_the_sink_gradient():
    """d sink sums over every query row: a row-sampled check has no reference for it, and its verdicts and message
    say so, where a sign slip in it then passes; a full check judges it (and fails the slip)."""
    from attnbench.evaluate import evaluate
    from attnbench.reference.mods import Sinks

    problem = Problem(B=1, H=2, N=16, M=24, D=16, dtype="float32", seed=3, mods=(Sinks(),))
    slip = make_backend("sink_grad_sign_flipped")
    sampled = evaluate(slip, problem, backward=True, forward=False, rows=(0, 15))
    assert sampled.passed and len(sampled.unjudged) == 1 and "not judged: dsink" in sampled.message()
    full = evaluate(slip, problem, backward=True, forward=False)
    assert not full.passed and not full.unjudged
