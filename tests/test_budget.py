"""The one compare can fail: errors just past the budget, NaN where zeros are due, wrong shapes."""
import numpy as np

from attnbench import reference
from attnbench.budget import compare, forward_bound
from attnbench.naive import naive_forward
from attnbench.problem import Problem, make_inputs


def _expected_and_bound(problem):
    inputs = make_inputs(problem)
    expected = reference.sdpa(inputs.q, inputs.k, inputs.v, **inputs.reference_kwargs(problem))
    bias = reference.mask_to_bias(inputs.mask, problem.causal, problem.N, problem.M)
    return inputs, expected, forward_bound(inputs.q, inputs.k, inputs.v, bias, problem.D ** -0.5, problem.dtype)


def test_error_just_over_the_analytic_bound_fails_and_just_under_passes():
    problem = Problem(dtype="float16", N=16, D=16)
    _, expected, bound = _expected_and_bound(problem)
    assert compare("o", expected + 0.99 * bound, expected, bound=bound, dtype="float16").passed
    over = expected.copy()
    over[0, 1, 3, 4] += 1.01 * bound[0, 1, 3, 4]
    verdict = compare("o", over, expected, bound=bound, dtype="float16")
    assert not verdict.passed and verdict.worst_index == (0, 1, 3, 4)


def test_three_times_the_naive_error_fails_in_bfloat16():
    problem = Problem(dtype="bfloat16", N=32, D=32)
    inputs, expected, _ = _expected_and_bound(problem)
    naive = naive_forward(inputs, problem)
    verdict = compare("o", naive, expected, naive=naive, dtype="bfloat16", reduction_length=32)
    assert verdict.passed and verdict.naive_error > 0
    sloppy = expected + 3 * (naive - expected)
    assert not compare("o", sloppy, expected, naive=naive, dtype="bfloat16", reduction_length=32).passed


def test_nan_where_a_fully_masked_row_must_be_zero_fails():
    problem = Problem(dtype="float32", N=8, D=8, mask="fully_masked")
    _, expected, bound = _expected_and_bound(problem)
    assert np.all(expected[:, :, 0] == 0) and np.all(bound[:, :, 0] == 0)
    nan_rows = expected.copy()
    nan_rows[:, :, 0] = np.nan
    assert not compare("o", nan_rows, expected, bound=bound, dtype="float32").passed
    tiny = expected.copy()
    tiny[:, :, 0] = 1e-30
    assert not compare("o", tiny, expected, bound=bound, dtype="float32").passed


def test_matching_nan_passes_and_shape_mismatch_fails():
    expected = np.array([1.0, np.nan])
    assert compare("o", np.array([1.0, np.nan]), expected, bound=1e-3, dtype="float32").passed
    assert not compare("o", np.array([1.0, 2.0]), expected, bound=1e-3, dtype="float32").passed
    assert not compare("o", np.ones(3), np.ones(2), bound=1.0, dtype="float32").passed
