"""Metamorphic invariants: properties of attention that hold without any reference.

Each test runs a backend twice, on inputs and on transformed inputs whose exact answer is the same (or a
known rearrangement), and compares the backend with itself. Tolerance, derived rather than picked: both
runs are within `forward_bound` of the same exact output, so by the triangle inequality they differ by at
most the sum of the two bounds (the one `compare`, with bound = bound_a + bound_b and no naive term).
Inputs stay exactly representable in the dtype, so the exact answers really are equal.
"""
import numpy as np
import pytest

from attnbench.budget import compare, forward_bound
from attnbench.check import failure_message, reference_bias
from attnbench.problem import Inputs, Problem, make_inputs, round_to_dtype

DTYPES = ("float16", "float32")


def _run(backend, device, problem: Problem, inputs: Inputs) -> np.ndarray:
    return backend.to_numpy(backend.prepare(inputs, problem, device=device)())


def _bound(problem: Problem, inputs: Inputs) -> np.ndarray:
    """forward_bound (B, H, N, Dv) of this backend run on these inputs."""
    scale = 1.0 / np.sqrt(problem.D) if problem.scale is None else problem.scale
    return forward_bound(inputs.q, inputs.k, inputs.v, reference_bias(inputs, problem), scale, problem.dtype)


def _skip_unless_supported(backend, device, problem: Problem) -> None:
    reason = backend.why_not(problem, device)
    if reason:
        pytest.skip(f"{backend.name}: {reason}")


def _assert_same(backend, device, problem, name, a, b, bound) -> None:
    verdict = compare(name, a, b, bound=bound, dtype=problem.dtype)
    assert verdict.passed, failure_message(backend.name, problem, [verdict], device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_permuting_keys_and_values_together_leaves_output_unchanged(backend, device, dtype):
    problem = Problem(B=2, H=2, N=37, M=53, D=32, dtype=dtype, seed=11)
    _skip_unless_supported(backend, device, problem)
    x = make_inputs(problem)
    perm = np.random.default_rng(0).permutation(problem.M)
    shuffled = Inputs(x.q, x.k[:, :, perm], x.v[:, :, perm], None)
    _assert_same(backend, device, problem, "permuted keys", _run(backend, device, problem, shuffled),
                 _run(backend, device, problem, x), 2 * _bound(problem, x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adding_a_constant_per_row_to_the_bias_leaves_output_unchanged(backend, device, dtype):
    problem = Problem(B=2, H=2, N=29, M=41, D=32, dtype=dtype, mask="bias", seed=12)
    _skip_unless_supported(backend, device, problem)
    x = make_inputs(problem)
    rng = np.random.default_rng(1)
    # Quarter-integers in [-2, 2] plus integers in [-4, 4]: exact in every dtype, so softmax's shift
    # invariance makes the two exact outputs identical.
    bias = rng.integers(-8, 9, size=(problem.B, 1, problem.N, problem.M)) / 4.0
    shift = rng.integers(-4, 5, size=(problem.B, 1, problem.N, 1)).astype(np.float64)
    base, shifted = Inputs(x.q, x.k, x.v, bias), Inputs(x.q, x.k, x.v, bias + shift)
    _assert_same(backend, device, problem, "row-shifted bias", _run(backend, device, problem, shifted),
                 _run(backend, device, problem, base), _bound(problem, base) + _bound(problem, shifted))


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_output_ignores_future_keys_and_values(backend, device, dtype):
    problem = Problem(B=1, H=2, N=48, M=48, D=32, dtype=dtype, causal="top_left", seed=13)
    _skip_unless_supported(backend, device, problem)
    x = make_inputs(problem)
    cut = 20                                              # queries 0..cut may only see keys 0..cut
    noise = np.random.default_rng(2)
    k, v = x.k.copy(), x.v.copy()
    # Large replacements (x64) so a kernel that leaks any weight onto a future key shows it.
    k[:, :, cut + 1:] = round_to_dtype(64 * noise.standard_normal(k[:, :, cut + 1:].shape), dtype)
    v[:, :, cut + 1:] = round_to_dtype(64 * noise.standard_normal(v[:, :, cut + 1:].shape), dtype)
    perturbed = Inputs(x.q, k, v, None)
    rows = slice(0, cut + 1)
    _assert_same(backend, device, problem, "causal prefix", _run(backend, device, problem, perturbed)[:, :, rows],
                 _run(backend, device, problem, x)[:, :, rows], 2 * _bound(problem, x)[:, :, rows])


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_elements_are_independent(backend, device, dtype):
    problem = Problem(B=3, H=2, N=33, M=45, D=32, dtype=dtype, mask="padding", seed=14)
    _skip_unless_supported(backend, device, problem)
    x = make_inputs(problem)
    together = _run(backend, device, problem, x)
    one = problem.replace(B=1)
    for b in range(problem.B):
        alone = Inputs(x.q[b:b + 1], x.k[b:b + 1], x.v[b:b + 1], x.mask[b:b + 1])
        _assert_same(backend, device, one, f"batch element {b}", together[b:b + 1],
                     _run(backend, device, one, alone), 2 * _bound(one, alone))


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_query_attention_equals_repeated_kv_heads(backend, device, dtype):
    problem = Problem(B=2, H=6, Hkv=2, N=31, M=43, D=32, dtype=dtype, causal="bottom_right", seed=15)
    _skip_unless_supported(backend, device, problem)
    x = make_inputs(problem)
    full = problem.replace(Hkv=problem.H)
    group = problem.H // problem.Hkv
    repeated = Inputs(x.q, np.repeat(x.k, group, axis=1), np.repeat(x.v, group, axis=1), None)
    _assert_same(backend, device, problem, "GQA vs repeated heads", _run(backend, device, problem, x),
                 _run(backend, device, full, repeated), 2 * _bound(problem, x))
