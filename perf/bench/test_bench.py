"""attnbench in pytest-benchmark: `pytest perf --benchmark-only` (not part of the default `pytest`).

The same prepare and accuracy code as `attnbench perf` (attnbench.perf.measure),
timed by the `benchmark` fixture in this process: convenient for people who live
in pytest, but with no per-point isolation, memory figures or timeouts; use
`attnbench perf` for those. Every registered backend is parametrized; one that
does not declare a problem is a skip with the reason.
"""
import pytest

from attnbench.implementations import all_backends
from attnbench.perf import records
from attnbench.perf.measure import accuracy, prepare
from attnbench.perf.spec import Case
from attnbench.problem import Problem

PROBLEMS = [Problem(B=1, H=4, N=256, D=64), Problem(B=1, H=4, N=1024, D=64),
            Problem(B=1, H=4, N=1024, D=64, causal="top_left")]
PASSES = ["fwd", "fwd+bwd"]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.id)
@pytest.mark.parametrize("backend", all_backends(), ids=lambda b: b.name)
def test_attention(benchmark, backend, problem, pass_):
    reason = backend.why_not(problem, "cpu", need_grad=pass_ != "fwd")
    if reason:
        pytest.skip(reason)
    case = Case(backend.name, problem, pass_)
    error, passed = accuracy(backend, case)
    fn = prepare(backend, case)
    benchmark.extra_info.update(error_vs_ref=error, accurate=passed, flops=records.flops(problem, pass_))
    benchmark.pedantic(fn, setup=lambda: backend.synchronize("cpu"), rounds=5, warmup_rounds=1)
    assert passed, f"{backend.name} {problem.id}: max error {error:.3g} exceeds the budget"
