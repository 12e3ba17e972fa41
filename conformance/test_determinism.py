"""Determinism: a backend that declares `deterministic` returns bitwise-identical output for identical inputs.

Bitwise, not within a tolerance: run-to-run variation (atomics, split-K order chosen at run time) is what
this protects against, and any difference at all is it. Both the same prepared callable run again and a
fresh `prepare` are compared. A backend that does not declare it is reported (skip with what was seen).
"""
import numpy as np
import pytest

from attnbench.implementations import Backend, Capabilities
from attnbench.problem import Problem, make_inputs

PROBLEMS_TO_REPEAT = [
    Problem(B=2, H=4, Hkv=2, N=97, M=113, D=64, dtype="float32", mask="bias", seed=3),
    Problem(B=1, H=2, N=130, M=70, D=80, dtype="float16", causal="bottom_right", seed=4),
    Problem(B=1, H=2, N=97, M=257, D=80, dtype="float32", seed=5),    # many key tiles: where order can vary
]


def nondeterminism(backend, device, problem: Problem, runs: int = 3) -> str | None:
    """How the backend's outputs differ across repeated runs on the same inputs, or None if bitwise equal."""
    inputs = make_inputs(problem)
    first = backend.prepare(inputs, problem, device=device)
    outputs = [first(), first()] + [backend.prepare(inputs, problem, device=device)() for _ in range(runs - 2)]
    arrays = [backend.to_numpy(o) for o in outputs]
    for i, a in enumerate(arrays[1:], start=1):
        if not np.array_equal(a, arrays[0], equal_nan=True):
            differ = int(np.sum(~((a == arrays[0]) | (np.isnan(a) & np.isnan(arrays[0])))))
            return f"run {i} differs from run 0 in {differ} of {a.size} elements on {problem.id}"
    return None


def test_declared_deterministic_backends_are_bitwise_repeatable(backend, device):
    checked = [p for p in PROBLEMS_TO_REPEAT if backend.why_not(p, device) is None]
    if not checked:
        pytest.skip(f"{backend.name}: none of the repeat problems is supported")
    found = [d for d in (nondeterminism(backend, device, p) for p in checked) if d]
    if not backend.capabilities(device).deterministic:
        pytest.skip(f"{backend.name} does not declare deterministic; observed: {found or 'bitwise repeatable'}")
    assert not found, f"{backend.name} declares deterministic but: {found}"


class _Jittery(Backend):
    """Declares deterministic but adds run-to-run noise: the check must catch it."""

    name = "jittery"
    caps = Capabilities()

    def __init__(self):
        self.rng = np.random.default_rng()

    def prepare(self, inputs, problem, *, device="cpu", return_lse=False):
        return lambda: inputs.q[..., :problem.Dv] + self.rng.standard_normal() * 1e-7

    def to_numpy(self, value):
        return np.asarray(value)


def test_the_determinism_check_catches_a_nondeterministic_backend():
    assert nondeterminism(_Jittery(), "cpu", Problem(N=8, D=8)) is not None
