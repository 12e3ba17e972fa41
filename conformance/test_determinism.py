"""Determinism: a backend declaring `deterministic` returns bitwise-identical output for identical inputs.

Run-to-run differences hide inside any tolerance (a reduction order that changes
between calls is a few ulps off each time), so this compares bits, not budgets.
Sizes span several key tiles of any plausible tiling, where order can vary.
"""
import numpy as np
import pytest

from attnbench.problem import Problem, make_inputs

PROBLEMS = [Problem(**shape, dtype=dtype, seed=i)
            for dtype in ("float32", "float16")
            for i, shape in enumerate([dict(B=2, H=4, N=64, D=64), dict(B=1, H=2, N=97, M=257, D=80)])]


def test_repeated_calls_are_bitwise_identical(backend, device, problem):
    if not backend.capabilities(device).deterministic:
        pytest.skip(f"{backend.name}: declares deterministic=False")
    run = backend.prepare(make_inputs(problem), problem, device=device)
    first = np.array(backend.to_numpy(run()), copy=True)
    second = backend.to_numpy(run())
    differ = int(np.sum(~((first == second) | (np.isnan(first) & np.isnan(second)))))
    assert differ == 0, f"{backend.name}: {differ} of {first.size} output elements changed between two identical calls"
