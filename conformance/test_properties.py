"""Property-based agreement: on any drawn problem a backend declares, its output (and dQ, dK, dV) match the
float64 reference within the derived budget.

The fixed cases in `cases.py` cover what we thought of; these draw shapes, masks, causal alignments,
scales, dtypes and layouts we did not. A failure shrinks to a small problem and prints the one-line repro.
Example counts come from the hypothesis profile (see `attnbench/pytest_plugin.py`); backward runs a quarter of them.
"""
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from attnbench.check import repro_command
from attnbench.evaluate import evaluate

from ._hypothesis import examples
from .strategies import problems


def _check(backend, device, problem, *, backward: bool) -> None:
    assume(backend.why_not(problem, device, need_grad=backward) is None)
    note(repro_command(backend.name, problem, device, backward=backward))
    result = evaluate(backend, problem, device, backward=backward, forward=not backward)   # deviations judged
    assert result.passed, result.message()


@given(data=st.data())
def test_forward_matches_reference_on_drawn_problems(backend, device, data):
    _check(backend, device, data.draw(problems(backend.capabilities(device)), label="problem"), backward=False)


@settings(max_examples=examples(0.25))
@given(data=st.data())
def test_backward_matches_reference_on_drawn_problems(backend, device, data):
    caps = backend.capabilities(device)
    if not caps.grad:
        import pytest

        pytest.skip(f"{backend.name}: no backward (grad) support")
    # Backward costs ~3x forward and float64 work grows with N*M: shorter sequences keep CI bounded.
    _check(backend, device, data.draw(problems(caps, max_len=96), label="problem"), backward=True)
