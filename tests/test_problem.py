"""One Problem for both suites: readable ids, a spec that round-trips, inputs exact in their dtype."""
import numpy as np
import pytest

from attnbench.problem import Problem, make_inputs, round_to_dtype
from attnbench.reference import AttentionInputError


def test_spec_round_trips_and_id_reads_well():
    p = Problem(B=2, H=4, Hkv=2, N=97, M=113, D=80, dtype="float16", causal="bottom_right", mask="padding",
                scale=0.25, seed=3)
    assert Problem.parse(p.spec()) == p
    assert p.id == "float16-B2-H4-Hkv2-N97-M113-D80-bottom_right-padding-scale0.25-seed3"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_inputs_are_exactly_representable_in_their_dtype(dtype):
    inputs = make_inputs(Problem(dtype=dtype, mask="bias"))
    for x in (inputs.q, inputs.k, inputs.v, inputs.mask):
        np.testing.assert_array_equal(round_to_dtype(x, dtype), x)


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
