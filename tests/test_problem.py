"""One Problem for both suites: readable ids, a spec that round-trips, inputs exact in their dtype."""
import numpy as np
import pytest

from attnbench.problem import Problem, make_inputs
from attnbench.reference import AttentionInputError


def test_spec_round_trips_and_id_reads_well():
    p = Problem(B=2, H=4, Hkv=2, N=97, M=113, D=80, dtype="float16", causal="bottom_right", mask="padding",
                scale=0.25, seed=3)
    assert Problem.parse(p.spec()) == p
    assert p.id == "float16-B2-H4-Hkv2-N97-M113-D80-bottom_right-padding-scale0.25-seed3"


SIGNIFICAND_BITS = {"float16": 11, "bfloat16": 8, "float32": 24}
SMALLEST_NORMAL_EXPONENT = {"float16": -14, "bfloat16": -126, "float32": -126}   # x = f * 2^e, 1 <= f < 2


def fits_in(x: np.ndarray, dtype: str) -> np.ndarray:
    """Whether each float64 value is exactly a `dtype` value, from its bits alone (no cast, no torch).

    A finite x = m * 2^e (0.5 <= m < 1, np.frexp) is representable with p significand bits iff m * 2^p is an
    integer, or, below the smallest normal, iff x is a multiple of the smallest subnormal.
    """
    p, emin = SIGNIFICAND_BITS[dtype], SMALLEST_NORMAL_EXPONENT[dtype]
    m, e = np.frexp(x)
    normal = np.floor(m * 2.0**p) == m * 2.0**p
    subnormal_step = 2.0 ** (emin - p + 1)
    return np.where(e - 1 >= emin, normal, np.floor(x / subnormal_step) == x / subnormal_step)


def test_the_representability_check_can_fail():
    assert fits_in(np.array([1 + 2.0**-10]), "float16").all() and not fits_in(np.array([1 + 2.0**-11]), "float16").any()
    assert fits_in(np.array([1 + 2.0**-7]), "bfloat16").all() and not fits_in(np.array([1 + 2.0**-8]), "bfloat16").any()
    assert not fits_in(np.array([0.1]), "float32").any()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_inputs_are_exactly_representable_in_their_dtype_and_rounded_to_nearest(dtype):
    problem = Problem(dtype=dtype, mask="bias")
    inputs = make_inputs(problem)
    raw = make_inputs(problem.replace(dtype="float64"))         # the same draw, unrounded
    u = 2.0 ** -SIGNIFICAND_BITS[dtype]
    half_subnormal_step = 2.0 ** (SMALLEST_NORMAL_EXPONENT[dtype] - SIGNIFICAND_BITS[dtype])   # below the normals
    for x, x64 in zip((inputs.q, inputs.k, inputs.v, inputs.mask), (raw.q, raw.k, raw.v, raw.mask)):
        assert fits_in(x, dtype).all()
        assert not np.array_equal(x, x64)                        # rounding happened...
        assert np.all(np.abs(x - x64) <= np.maximum(u * np.abs(x64), half_subnormal_step))  # ...to nearest


def test_same_seed_same_inputs_other_seed_other_inputs():
    a, b, c = (make_inputs(Problem(seed=s)) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.q, b.q)
    assert not np.array_equal(a.q, c.q)


@pytest.mark.parametrize("kwargs, message", [(dict(H=3, Hkv=2), "multiple"), (dict(N=0), "sizes"),
                                             (dict(dtype="int8"), "dtype"), (dict(causal="diag"), "causal"),
                                             (dict(mask="checkerboard"), "mask")])
def test_bad_problem_is_refused(kwargs, message):
    with pytest.raises(AttentionInputError, match=message):
        Problem(**kwargs)


def test_bad_spec_is_refused():
    with pytest.raises(AttentionInputError, match="key=value"):
        Problem.parse("B=2,heads=4")
    with pytest.raises(AttentionInputError, match="number"):
        Problem.parse("N=lots")


def test_grad_out_is_standard_normal_except_where_the_inputs_choose_one_binade():
    """make_grad_out stays the seed's standard normal for every distribution but one_binade_do (existing verdicts
    read it), whose dO is positive in one binade, with q, k, v those of `normal` (conformance/cases.py, GQA_GRAD_SUM)."""
    from attnbench.problem import make_grad_out, round_to_dtype

    p = Problem(B=1, H=4, Hkv=2, N=9, M=7, D=8, Dv=6, dtype="float16", seed=5)
    normal = round_to_dtype(np.random.default_rng(5 + 7919).standard_normal((1, 4, 9, 6)), "float16")
    for inputs in ("normal", "peaked", "one_binade_v"):
        assert np.array_equal(make_grad_out(p.replace(inputs=inputs)), normal)
    binade = p.replace(inputs="one_binade_do")
    g = make_grad_out(binade)
    assert g.shape == normal.shape and np.all(g >= 1) and np.all(g < 2) and np.all(fits_in(g, "float16"))
    ours, theirs = make_inputs(binade), make_inputs(p)
    assert all(np.array_equal(getattr(ours, x), getattr(theirs, x)) for x in "qkv")
