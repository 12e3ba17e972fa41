"""Determinism: a backend that declares `deterministic` returns bitwise-identical output for identical inputs.

Bitwise, not within a tolerance: run-to-run variation (atomics, split-K order chosen at run time) is what
this protects against, and any difference at all is it. Both the same prepared callable run again and a
fresh `prepare` are compared, for the forward and, where a backend declares gradients, for dQ, dK and dV
(a backward with atomic adds over query tiles is the classic run-to-run difference). A backend that does
not declare it is reported (skip with what was seen).
"""
import numpy as np
import pytest

from attnbench.implementations import Backend, Capabilities
from attnbench.problem import Problem, make_grad_out, make_inputs

PROBLEMS_TO_REPEAT = [
    Problem(B=2, H=4, Hkv=2, N=97, M=113, D=64, dtype="float32", mask="bias", seed=3),
    Problem(B=1, H=2, N=130, M=70, D=80, dtype="float16", causal="bottom_right", seed=4),
    Problem(B=1, H=2, N=97, M=257, D=80, dtype="float32", seed=5),    # many key tiles: where order can vary
]


def first_difference(outputs: list[list[np.ndarray]], what: str) -> str | None:
    """Where runs differ bitwise (NaN equal to NaN): "run i differs ... in <tensor>", or None if all equal.

    outputs: one list of arrays per run (the forward's output, or dQ, dK, dV).
    """
    names = ("output",) if len(outputs[0]) == 1 else ("dq", "dk", "dv")
    for i, run in enumerate(outputs[1:], start=1):
        for name, a, b in zip(names, run, outputs[0]):
            if not np.array_equal(a, b, equal_nan=True):
                differ = int(np.sum(~((a == b) | (np.isnan(a) & np.isnan(b)))))
                return f"run {i} differs from run 0 in {differ} of {a.size} elements of {name} on {what}"
    return None


def nondeterminism(backend, device, problem: Problem, runs: int = 3) -> str | None:
    """How the backend's outputs differ across repeated runs on the same inputs, or None if bitwise equal."""
    inputs = make_inputs(problem)
    first = backend.prepare(inputs, problem, device=device)
    outputs = [first(), first()] + [backend.prepare(inputs, problem, device=device)() for _ in range(runs - 2)]
    return first_difference([[backend.to_numpy(o)] for o in outputs], problem.id)


def backward_nondeterminism(backend, device, problem: Problem, runs: int = 3) -> str | None:
    """The same for dQ, dK, dV: the same prepared backward run twice, then fresh ones."""
    inputs, grad_out = make_inputs(problem), make_grad_out(problem)
    first = backend.prepare_backward(inputs, problem, grad_out, device=device)
    grads = [first(), first()] + [backend.prepare_backward(inputs, problem, grad_out, device=device)()
                                  for _ in range(runs - 2)]
    return first_difference([[backend.to_numpy(g) for g in run] for run in grads], problem.id + " (backward)")


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_declared_deterministic_backends_are_bitwise_repeatable(backend, device, backward):
    checked = [p for p in PROBLEMS_TO_REPEAT if backend.why_not(p, device, need_grad=backward) is None]
    if not checked:
        pytest.skip(f"{backend.name}: none of the repeat problems is supported"
                    f"{' with a backward (grad)' if backward else ''}")
    repeat = backward_nondeterminism if backward else nondeterminism
    found = [d for d in (repeat(backend, device, p) for p in checked) if d]
    if not backend.capabilities(device).deterministic:
        pytest.skip(f"{backend.name} does not declare deterministic; observed: {found or 'bitwise repeatable'}")
    assert not found, f"{backend.name} declares deterministic but: {found}"


class _Jittery(Backend):
    """Declares deterministic but adds run-to-run noise, forward and backward: the checks must catch it."""

    name = "jittery"
    caps = Capabilities(grad=True)
    noise = 1e-7

    def __init__(self):
        self.rng = np.random.default_rng()

    def prepare(self, inputs, problem, *, device="cpu", return_lse=False):
        return lambda: inputs.q[..., :problem.Dv] + self.rng.standard_normal() * self.noise

    def prepare_backward(self, inputs, problem, grad_out, *, device="cpu"):
        exact = (inputs.q, inputs.k, inputs.v)
        return lambda: tuple(x.copy() if i < 2 else x + self.rng.standard_normal() * self.noise
                             for i, x in enumerate(exact))     # only dV jitters: every gradient is compared

    def to_numpy(self, value):
        return np.asarray(value)


class _Steady(_Jittery):
    """Bitwise repeatable forward and backward: the checks must pass it."""

    noise = 0.0


def test_the_determinism_check_catches_a_nondeterministic_backend():
    assert nondeterminism(_Jittery(), "cpu", Problem(N=8, D=8)) is not None
    assert nondeterminism(_Steady(), "cpu", Problem(N=8, D=8)) is None


def test_the_backward_determinism_check_catches_a_nondeterministic_gradient():
    found = backward_nondeterminism(_Jittery(), "cpu", Problem(N=8, D=8))
    assert found is not None and "of dv on" in found
    assert backward_nondeterminism(_Steady(), "cpu", Problem(N=8, D=8)) is None
