"""Known deviations (attnbench/deviations.py) stay true: each still shows on its witness problem, no larger than
declared, and its evidence still holds; `judge` re-labels only what is declared.

A failure here means the entry is out of date: delete it when the deviation has disappeared (the kernel was
fixed), or investigate when it grew. Never raise `ratio_by_length` without new evidence in the entry.
"""
import numpy as np
import pytest

from attnbench.budget import NAIVE_MULTIPLE, Verdict
from attnbench.check import check_backward, check_forward
from attnbench.deviations import KNOWN_DEVIATIONS, all_declared, judge
from attnbench.implementations import get_backend
from attnbench.problem import Inputs, Problem, make_inputs


def _ratios(deviation, problem, inputs=None):
    """max error / naive error of the deviation's tensors, unjudged (backward when they are gradients)."""
    backend = get_backend(deviation.backend)
    reason = backend.unavailable_reason() or backend.device_unavailable_reason(deviation.device)
    if reason:
        pytest.skip(f"{deviation.backend}: {reason}")
    check = check_backward if set(deviation.tensors) <= {"dq", "dk", "dv"} else check_forward
    verdicts = check(backend, problem, deviation.device, inputs=inputs)
    return {v.name: v.max_error / v.naive_error for v in verdicts if v.name in deviation.tensors}


@pytest.mark.parametrize("deviation", all_declared(), ids=lambda d: d.name)   # a --plugin's entries included
def test_known_deviation_still_shows_on_its_witness_and_has_not_grown(deviation):
    ratios = _ratios(deviation, Problem.parse(deviation.witness))
    worst, declared = max(ratios.values()), deviation.declared_ratio(Problem.parse(deviation.witness))
    assert worst > NAIVE_MULTIPLE, (f"{deviation.name} disappeared: {ratios} on its witness, within "
                                    f"{NAIVE_MULTIPLE:g}x naive; delete the entry")
    assert worst <= declared, f"{deviation.name} grew: {ratios} > {declared}x"


def test_sdpa_flash_deviation_is_worse_on_the_gqa_path():
    """Evidence of sdpa_flash_cpu_half_backward: on the witness the same kernel on K/V heads repeated by hand is
    within 2x (the grouped path's reduction over a group's heads adds to what the length costs)."""
    deviation = next(d for d in KNOWN_DEVIATIONS if d.name == "sdpa_flash_cpu_half_backward")
    problem = Problem.parse(deviation.witness)
    inputs, group = make_inputs(problem), problem.H // problem.Hkv
    expanded = Inputs(inputs.q, np.repeat(inputs.k, group, axis=1), np.repeat(inputs.v, group, axis=1), inputs.mask)
    ratios = _ratios(deviation, problem.replace(Hkv=problem.H), inputs=expanded)
    assert max(ratios.values()) <= NAIVE_MULTIPLE, ratios


def _verdict(name, error, naive, passed=False):
    reason = "within budget" if passed else "worse than 2x the naive float16 formula"
    return Verdict(name, passed, error, (0,), 0.0, 0.0, None, naive, 2 * naive, reason)


def test_judge_relabels_only_declared_failures_within_the_ratio():
    deviation = next(d for d in KNOWN_DEVIATIONS if d.name == "sdpa_flash_cpu_half_backward")
    inside = Problem(B=1, H=6, Hkv=2, N=16, M=16, D=32, dtype="float16")
    declared = deviation.declared_ratio(inside)
    within, beyond = 0.9 * declared, 1.1 * declared
    verdicts = [_verdict("dq", 3.0, 1.0), _verdict("dk", within, 1.0), _verdict("dv", beyond, 1.0)]
    judged, notes = judge("torch_sdpa_flash", "cpu", inside, verdicts, backward=True)
    assert [v.passed for v in judged] == [False, True, False]         # dq is not declared; dv grew
    assert "known deviation" in judged[1].reason and "exceeds known deviation" in judged[2].reason
    assert len(notes) == 1 and "dk" in notes[0]
    passed_by_the_floor = [_verdict("dk", 30.0, 1.0, passed=True)]     # a tiny naive error, within the floor
    assert judge("torch_sdpa_flash", "cpu", inside, passed_by_the_floor, backward=True) == (passed_by_the_floor, [])
    longest = deviation.ratio_by_length[-1][0]
    too_long = judge("torch_sdpa_flash", "cpu", inside.replace(N=longest + 1, M=longest + 1), verdicts, backward=True)
    assert [v.passed for v in too_long[0]] == [False, False, False] and "longer than" in too_long[0][1].reason
    for other in (dict(backend="torch_sdpa_math"), dict(problem=inside.replace(dtype="float32")),
                  dict(backward=False)):
        args = dict(backend="torch_sdpa_flash", problem=inside, backward=True) | other
        judged, notes = judge(args["backend"], "cpu", args["problem"], verdicts, backward=args["backward"])
        assert judged == verdicts and not notes



def test_every_check_judges_known_deviations_and_its_message_names_them(monkeypatch):
    """check_forward / check_backward (so `attnbench check`, every conformance test and perf) go through
    `judge`: a verdict the judge re-labels comes back re-labelled, with its note in the failure message."""
    from dataclasses import replace

    import attnbench.deviations as deviations
    from attnbench.check import failure_message

    def relabel(backend, device, problem, verdicts, *, backward):
        return [v if v.name == "contract" else replace(v, reason="known deviation x") for v in verdicts], ["note x"]

    monkeypatch.setattr(deviations, "judge", relabel)
    problem = Problem(B=1, H=2, N=8, M=8, D=8)
    for check in (check_forward, check_backward):
        verdicts = check(get_backend("torch_eager"), problem)
        assert verdicts.notes == ["note x"] and all("known deviation" in v.reason for v in verdicts[1:])
        assert "known deviation: note x" in failure_message("torch_eager", problem, verdicts)


def test_a_plugin_declares_its_own_known_deviation_and_the_judge_uses_it(monkeypatch):
    from dataclasses import replace

    from attnbench.implementations import registry

    ours = next(d for d in KNOWN_DEVIATIONS if d.name == "sdpa_flash_cpu_half_backward")
    theirs = replace(ours, name="plugin_dk_growth", backend="my_plugin_attention")
    plugin = type(get_backend("torch_eager"))()
    plugin.name, plugin.known_deviations = "my_plugin_attention", (theirs,)
    monkeypatch.setitem(registry._BACKENDS, plugin.name, plugin)
    assert theirs in all_declared()
    inside = Problem(B=1, H=6, Hkv=2, N=16, M=16, D=32, dtype="float16")
    judged, notes = judge("my_plugin_attention", "cpu", inside, [_verdict("dk", 2.5, 1.0)],
                          backward=True)
    assert judged[0].passed and "plugin_dk_growth" in notes[0]
