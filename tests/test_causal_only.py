"""A causal-only kernel (many prefill kernels) declares `non_causal=False`: every problem without causal is a skip
with the reason, everywhere a problem is chosen for a backend (drawn, fixed, long, perf, check), never a failure."""
import pytest
from hypothesis import given, settings

from attnbench.backends_table import backend_row, format_table
from attnbench.cli import main
from attnbench.evaluate import evaluate
from attnbench.implementations import Capabilities, get_backend
from attnbench.implementations.torch_eager import TorchEager
from attnbench.perf import records
from attnbench.perf.runner import run_sweep
from attnbench.perf.spec import MeasureOptions, SweepSpec, expand
from attnbench.problem import Problem
from attnbench.reference import AttentionInputError
from attnbench.reference.mods import Softcap, Window
from attnbench.reference.mods.prefix_lm import PrefixLM
from conformance import cases, long_cases
from conformance.strategies import problems

FUNCTION = "tests.plugins.functions:prefill_causal_only@bnhd"     # raises on causal=False
REASON = "non-causal problems not supported (causal only"


class CausalOnlyEager(TorchEager):
    """torch_eager declaring causal only: a class backend with the field."""

    name = "causal_only_eager"
    caps = TorchEager.caps.replace(non_causal=False)


# Non-causal problems a causal-only kernel must skip (dense, GQA, a mask, a window, a prefix-LM, a ragged layout)
# and causal ones it must pass.
SPREAD = [Problem(B=1, H=4, Hkv=2, N=33, M=47, D=16, dtype="float32", seed=1),
          Problem(B=2, H=2, N=17, M=17, D=8, dtype="float16", mask="bool", seed=2),
          Problem(B=1, H=2, N=20, M=31, D=16, dtype="float32", mods=(Window(8, 0), Softcap(5.0)), seed=3),
          Problem(B=1, H=2, N=24, M=24, D=16, dtype="float32", mods=(PrefixLM(7),), seed=4),
          Problem(B=2, H=2, N=9, M=40, D=16, dtype="float32", kv="ragged", seed=5),
          Problem(B=1, H=4, Hkv=2, N=33, M=47, D=16, dtype="float32", causal="bottom_right", seed=6),
          Problem(B=1, H=2, N=20, M=31, D=16, dtype="float16", causal="bottom_right", mods=(Window(8, 0),), seed=7),
          Problem(B=1, H=2, N=19, M=19, D=16, dtype="float32", causal="top_left", seed=8)]


@pytest.mark.parametrize("backend", [get_backend(FUNCTION), CausalOnlyEager()], ids=["function", "class"])
def test_a_causal_only_kernel_has_no_failure_and_skips_every_non_causal_problem_saying_why(backend):
    both_ways = backend.capabilities("cpu").replace(non_causal=True)
    for problem in SPREAD:
        result = evaluate(backend, problem, "cpu")
        assert result.passed is not False, result.message()
        if problem.causal is None:          # the reason, unless an earlier one (the function takes no masks)
            assert result.skipped and (REASON in result.skipped or both_ways.why_not(problem)), result.message()
    reasons = [evaluate(backend, p, "cpu").skipped for p in SPREAD if both_ways.why_not(p) is None]
    assert sum(r is None for r in reasons) >= 2 and sum(REASON in (r or "") for r in reasons) >= 2, reasons


CAUSAL_ONLY = [Capabilities(non_causal=False), Capabilities(non_causal=False, causal=("top_left",),
                                                            mask_with_causal=False, mods=("window", "prefix_lm"))]


@settings(max_examples=30, deadline=None)
@given(problems(CAUSAL_ONLY[0]), problems(CAUSAL_ONLY[1]))
def test_drawn_problems_are_causal_for_a_causal_only_backend(wide, narrow):
    # narrow: top_left only (no layout problem can be causal) and no mask with causal: still always drawable
    assert CAUSAL_ONLY[0].why_not(wide) is None and CAUSAL_ONLY[1].why_not(narrow) is None, (wide, narrow)


def test_fixed_and_long_cases_without_causal_are_skips_with_the_reason():
    caps = Capabilities(non_causal=False)
    fixed = (cases.FORWARD_PROBLEMS + cases.BACKWARD_PROBLEMS + long_cases.FORWARD + long_cases.BACKWARD
             + long_cases.LONG_FORWARD + long_cases.LONG_BACKWARD)
    non_causal = [p for p in fixed if p.causal is None and Capabilities().why_not(p) is None]
    assert non_causal and all(REASON in caps.why_not(p) for p in non_causal)
    assert all(caps.why_not(p) is None for p in fixed if p.causal is not None and Capabilities().why_not(p) is None)


def test_perf_points_without_causal_are_skips_with_the_reason(tmp_path):
    spec = SweepSpec(seq_lens=(64, 128), dtypes=("float32",), causal=(None, "bottom_right"), backends=(FUNCTION,))
    measured, skipped = expand(spec)
    assert [c.problem.causal for c in measured] == ["bottom_right"] * 2
    assert len(skipped) == 2 and all(REASON in reason and c.problem.causal is None for c, reason in skipped)
    log = []          # perf's default (--causal none): nothing to time, and the console says why
    path = run_sweep(SweepSpec(seq_lens=(64,), backends=(FUNCTION,)), tmp_path, MeasureOptions(), log=log.append)
    assert any("every point is a skip" in line and REASON in line for line in log), log
    assert [(r.status, r.message[:len(REASON)]) for r in records.read(path)] == [("skipped", REASON)]


def test_check_says_skip_and_backends_shows_causal_only(capsys):
    assert main(["check", FUNCTION, "--problem", "B=1,H=2,N=16,M=24,D=16,dtype=float32"]) == 2
    assert REASON in capsys.readouterr().out
    row = backend_row(get_backend(FUNCTION), "cpu")
    assert row["non_causal"] is False and "bottom_right(only)" in format_table([row])
    assert "(only)" not in format_table([backend_row(TorchEager(), "cpu")]).splitlines()[1]


def test_a_causal_only_declaration_without_a_causal_keyword_is_one_line():
    from attnbench.implementations._function import declared_capabilities

    def attention(q, k, v):
        raise AssertionError("never called")

    attention.attnbench_capabilities = dict(non_causal=False)
    with pytest.raises(AttentionInputError, match="non_causal=False .* but no causal alignment"):
        declared_capabilities(attention, Capabilities(causal=()), "m:attention")
