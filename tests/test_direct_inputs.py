"""Inputs drawn straight into the dtype past 2^31 elements a tensor (`make_inputs`, `draw_in_dtype`): the very
values of the float64 path, read by the row reference a block at a time, and still checked for writes by the call.
Cheap: the threshold is lowered so that small problems take the path."""
import dataclasses

import numpy as np
import pytest

import attnbench.problem as problem_module
from attnbench import check
from attnbench.check import default_rows, forward_reference
from attnbench.problem import HOLDER_DTYPES, Problem, draw_in_dtype, make_inputs, round_to_dtype
from attnbench.reference import AttentionInputError


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_drawn_in_the_dtype_chunk_by_chunk_are_the_float64_paths_values(dtype):
    shape = (2, 3, 37, 5)                                    # 1110 elements: chunks of 97 leave a partial last one
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    held = draw_in_dtype(a, shape, dtype, chunk=97)
    assert held.dtype == HOLDER_DTYPES[dtype] and held.shape == shape
    assert np.array_equal(held.astype(np.float64), round_to_dtype(b.standard_normal(shape), dtype))
    assert a.standard_normal() == b.standard_normal()        # the generator is left where the float64 path leaves it


def _direct(monkeypatch, spec: str):
    p = Problem.parse(spec)
    expected = make_inputs(p)
    monkeypatch.setattr(problem_module, "DIRECT_ELEMENTS", 1000)
    return p, expected, make_inputs(p)


def test_past_the_threshold_make_inputs_holds_the_same_values_in_the_dtype(monkeypatch):
    p, expected, held = _direct(monkeypatch, "B=1,H=2,Hkv=1,N=16,M=300,D=32,dtype=bfloat16,sinks=1")
    for name in "qkv":
        assert getattr(held, name).dtype == np.float32                             # bfloat16's holder
        assert np.array_equal(getattr(held, name), getattr(expected, name))
    assert np.array_equal(held.mods[0].logits, expected.mods[0].logits)


def test_the_row_reference_reads_held_inputs_to_the_same_bits(monkeypatch):
    p, expected, held = _direct(monkeypatch, "B=1,H=4,Hkv=2,N=16,M=2000,D=32,dtype=float16,causal=bottom_right")
    assert held.k.dtype == np.float16
    rows = default_rows(p, expected)
    a, b = forward_reference(expected, p, rows, rounded_p=True), forward_reference(held, p, rows, rounded_p=True)
    for name in ("out", "lse", "out_bound", "lse_bound", "naive"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    for x, y in zip(dataclasses.astuple(a.stats), dataclasses.astuple(b.stats)):
        assert np.array_equal(x, y, equal_nan=True)


def test_past_the_threshold_an_unsupported_problem_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(problem_module, "DIRECT_ELEMENTS", 1000)
    with pytest.raises(AttentionInputError, match="drawn in its dtype: inputs=normal, no mask"):
        make_inputs(Problem.parse("B=1,H=2,N=16,M=300,D=32,dtype=float16,mask=bool"))


def test_an_input_too_big_to_copy_is_checked_for_writes_by_its_digest(monkeypatch):
    monkeypatch.setattr(check, "PRISTINE_COPY_BYTES", 0)
    inputs = make_inputs(Problem.parse("B=1,H=2,N=16,M=40,D=16,dtype=float16"))
    pristine, digests = check._pristine(inputs), check._digests(inputs)
    assert pristine.k is inputs.k and set(digests) == {"q", "k", "v"}       # not copied
    assert check.inputs_contract(None, object(), inputs, pristine, digests) == []
    inputs.k[0, 1, 3, 2] += 1.0
    assert check.inputs_contract(None, object(), inputs, pristine, digests) == ["input k was modified by the call"]


def test_inputs_too_big_to_copy_share_one_reference_unless_the_call_wrote_them(monkeypatch):
    """Past PRISTINE_COPY_BYTES the inputs are their own pristine copy: the reference every backend shares is made
    once from them when the call left them alone (past 2^31 elements it took minutes per backend), and a call that
    wrote one gets a reference of its own, which is never kept for the next backend."""
    from attnbench.implementations import get_backend

    monkeypatch.setattr(check, "PRISTINE_COPY_BYTES", 0)
    monkeypatch.setattr(problem_module, "DIRECT_ELEMENTS", 100)             # drawn in the dtype, as past 2^31
    monkeypatch.setattr(check, "_FORWARD_REFERENCES", type(check._FORWARD_REFERENCES)())
    made = []
    real = check.forward_reference
    monkeypatch.setattr(check, "forward_reference", lambda *a, **kw: made.append(1) or real(*a, **kw))
    p = Problem.parse("B=1,H=2,N=16,M=40,D=16,dtype=float16")
    assert problem_module.drawn_in_dtype(p)
    assert all(v.passed for v in check.check_forward(get_backend("torch_eager"), p))
    assert all(v.passed for v in check.check_forward(get_backend("numpy"), p))
    assert len(made) == 1                                                   # shared

    class WritesK:
        """torch_eager, then a key of the caller's K scaled in place."""
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def prepare(self, inputs, problem, **kw):
            run = self.inner.prepare(inputs, problem, **kw)

            def call():
                out = run()
                inputs.k[0, 0, 3] *= 2.0
                return out
            return call

    verdicts = check.check_forward(WritesK(get_backend("torch_eager")), p)
    assert any("input k was modified" in v.reason for v in verdicts if not v.passed)
    assert len(made) == 2                                                   # its own reference, not the shared one
    assert all(v.passed for v in check.check_forward(get_backend("torch_eager"), p))
    assert len(made) == 2                                                   # the shared one is still the pristine one
