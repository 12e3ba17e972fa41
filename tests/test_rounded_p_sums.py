"""The row sums only a declared P rounded to the input dtype needs are made on demand (`row_stats(rounded_p=...)`,
`ForwardReference.with_rounded_p`): made later in a pass of their own they are the very bits of the one-pass
sums, a reference made without them refuses a P-rounded model instead of bounding it with nothing, and a
check that finds the shared reference without them gets the same verdict as one that made it with them."""
import dataclasses

import numpy as np
import pytest

from attnbench import check
from attnbench.check import check_forward, default_rows, forward_reference
from attnbench.implementations import get_backend
from attnbench.precision import FLASH, for_half
from attnbench.problem import Problem, make_inputs
from conformance.mutants import make_backend

PROBLEMS = [
    "B=2,H=6,Hkv=2,N=37,M=300,D=24,dtype=float16,causal=bottom_right,softcap=20,alibi=batch,sinks=1",
    "B=1,H=4,Hkv=1,N=16,M=5000,D=64,dtype=bfloat16,window=100:0",      # row-sampled, blocks past BLOCK_M
    "B=2,H=3,Hkv=3,N=20,M=70,D=16,dtype=float16,mask=bool",             # a per-head mask: visibility per head
    "B=1,H=2,N=9,M=40,D=16,dtype=float16,inputs=nonfinite",
    "B=2,H=2,N=64,M=64,D=16,dtype=bfloat16,document=3,causal=top_left",
]
ROUNDED = ("p2_v2", "p2_vs", "p2", "vis_v2", "vis_v", "visible")


@pytest.mark.parametrize("spec", PROBLEMS)
def test_the_rounded_p_sums_made_later_are_the_bits_of_the_one_pass_sums(spec):
    p = Problem.parse(spec)
    inputs = make_inputs(p)
    rows = default_rows(p, inputs)
    together = forward_reference(inputs, p, rows, rounded_p=True)
    without = forward_reference(inputs, p, rows)
    assert together.stats.rounded_p and not without.stats.rounded_p
    assert all(getattr(without.stats, name) is None for name in ROUNDED)
    later = without.with_rounded_p(inputs, p, rows)
    for field in dataclasses.fields(together.stats):
        assert np.array_equal(getattr(together.stats, field.name), getattr(later.stats, field.name),
                              equal_nan=True), field.name
    for name in ("out", "lse", "out_bound", "lse_bound", "naive"):     # the rest is the same reference
        assert np.array_equal(getattr(together, name), getattr(without, name), equal_nan=True), name


def test_a_p_rounded_model_is_refused_without_its_sums():
    p = Problem.parse(PROBLEMS[0])
    inputs = make_inputs(p)
    without = forward_reference(inputs, p, default_rows(p, inputs))
    with pytest.raises(ValueError, match="P rounded to the input dtype"):
        without.model_bounds(FLASH, p, "float32")


def test_a_p_rounding_kernel_after_a_plain_one_gets_the_verdict_it_gets_alone(monkeypatch):
    """The shared reference made for torch_eager (no declared precision) lacks the sums; twin_flash (FlashAttention's
    model) then gets them added: its verdicts equal those of a cache it fills itself."""
    p = Problem.parse("B=1,H=4,Hkv=2,N=16,M=3000,D=32,dtype=float16,causal=bottom_right")
    flash = make_backend("twin_flash")
    assert flash.capabilities("cpu").precision_for(p.dtype).p_rounded
    monkeypatch.setattr(check, "_FORWARD_REFERENCES", type(check._FORWARD_REFERENCES)())
    alone = check_forward(flash, p)
    monkeypatch.setattr(check, "_FORWARD_REFERENCES", type(check._FORWARD_REFERENCES)())
    check_forward(get_backend("torch_eager"), p)
    assert not next(iter(check._FORWARD_REFERENCES.values())).stats.rounded_p
    after = check_forward(flash, p)
    assert [dataclasses.astuple(v) for v in after] == [dataclasses.astuple(v) for v in alone]
    assert next(v for v in after if v.name == "output").model_units is not None
