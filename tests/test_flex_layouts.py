"""torch_flex reads ragged and paged KV layouts itself (a per-sequence block mask over the packed batch,
FlexAttention's PagedAttention for pages), not through pad-and-mask, and its block mask keeps exactly each
sequence's own pairs."""
import pytest
import torch

from attnbench.implementations import flex_kv
from attnbench.implementations.registry import get_backend
from attnbench.problem import Problem

flex = get_backend("torch_flex")
pytestmark = pytest.mark.skipif(flex.unavailable_reason() is not None, reason=str(flex.unavailable_reason()))


@pytest.mark.parametrize("spec", ["B=3,H=4,Hkv=2,N=9,M=9,D=8,causal=bottom_right,kv=ragged,window=3:0",
                                  "B=3,H=2,N=2,M=40,D=8,causal=bottom_right,kv=paged:4,append=2,alibi=batch"])
def test_layouts_are_read_natively(spec):
    """Natively: `evaluate` records no pad-and-mask route (the agreement itself: conformance's KV_LAYOUTS)."""
    problem = Problem.parse(spec)
    assert flex.why_not(problem, "cpu") is None and flex.capabilities("cpu").reads_kv(problem)


def test_the_ragged_block_mask_keeps_each_sequences_own_pairs_only():
    """Sequences of 2 and 3 queries against 3 and 1 keys, packed: bottom-right causal inside each, nothing
    across (the second sequence's first two queries see no key: N_b > M_b)."""
    cu_q, cu_k = torch.tensor([0, 2, 5]), torch.tensor([0, 3, 4])
    pos = flex_kv.ragged_positions(cu_q, cu_k)
    q, kv = torch.arange(5)[:, None], torch.arange(4)[None, :]
    keep = pos.same(0, q, kv) & (pos.distance(0, q, kv) >= 0)
    assert keep.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_the_compiled_variant_leaves_pages_to_pad_and_mask():
    """PagedAttention needs a key block of one page; the fused kernel's tiles are 16 keys or more."""
    compiled = get_backend("torch_flex_compiled")
    assert compiled.capabilities("cuda").kv_layouts == ("dense", "ragged")
    assert "paged" in flex.capabilities("cpu").kv_layouts
