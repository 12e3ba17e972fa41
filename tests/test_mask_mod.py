"""The input mask on the modifications seam (`reference/mods/mask.py`): a bool keep or a float bias, added after
every score modification, read by the reference side only as `Inputs.reference_mods`; the same scores as the
hand-threaded bias it replaced, the fully masked rows and key padding edges sampled, the spec unchanged."""
import numpy as np
import pytest

from attnbench import reference
from attnbench.check import choose_key_rows, choose_rows, reference_bias
from attnbench.problem import MASK_FORMS, Problem, make_inputs
from attnbench.reference import AttentionInputError
from attnbench.reference import block, mods as modifications
from attnbench.reference.mods import Alibi, InputMask, Softcap
from attnbench.reference.sdpa import group_queries


def _old_bias(mask, rows, cols, Hkv: int, G: int):
    """The additive bias the seam replaced (`block.bias_rows` + `block.grouped` before): 0 / -inf for a bool
    mask, the values for a float bias, (b, Hkv|1, G|1, R|1, C) as grouped scores."""
    m = np.asarray(mask)
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    m = m if m.shape[2] == 1 else m[:, :, rows]
    m = m if m.shape[3] == 1 else m[..., cols]
    bias = np.where(m, 0.0, -np.inf) if m.dtype == np.bool_ else m.astype(np.float64)
    return bias.reshape(bias.shape[0], Hkv, G, *bias.shape[2:]) if bias.shape[1] != 1 else bias[:, :, None]


@pytest.mark.parametrize("kind", sorted(MASK_FORMS))
def test_the_seam_gives_the_bits_of_the_old_bias_after_softcap_and_alibi(kind):
    """Scores (and the softmax of every path) equal mods(scale Q K^T) + bias exactly: the bias adds after softcap
    and ALiBi, a bool mask's hidden keys are -inf."""
    p = Problem(B=2, H=4, Hkv=2, N=9, M=13, D=8, dtype="float16", mask=kind, causal="bottom_right",
                mods=(Softcap(2.0), Alibi("head")))
    x = make_inputs(p)
    rows, cols = np.array([0, 3, 4, 8]), np.arange(2, 13)
    qg, scale = group_queries(x.q, p.Hkv)[..., rows, :], p.D ** -0.5
    raw = scale * block.group_matmul(qg, x.k[:, :, cols].swapaxes(-1, -2))
    before = modifications.with_causal(p.causal, x.mods)
    want = (modifications.apply(raw, before, block.block_of(rows, cols, p.N, p.M, p.H, p.Hkv))
            + _old_bias(x.mask, rows, cols, p.Hkv, p.H // p.Hkv))
    got = block.scores(qg, x.k, rows, cols, mods=x.reference_mods(p), N=p.N, M=p.M, scale=scale)
    assert isinstance(x.reference_mods(p)[-1], InputMask)
    assert np.array_equal(got, np.broadcast_to(want, got.shape), equal_nan=True)
    out, lse = reference.sdpa(x.q, x.k, x.v, return_lse=True, **x.reference_kwargs(p))
    rows_out, rows_lse = reference.sdpa_rows(x.q, x.k, x.v, np.arange(p.N), block_m=5, **x.reference_kwargs(p))
    tiled = reference.blockwise_sdpa(x.q, x.k, x.v, block_n=4, block_m=5, **x.reference_kwargs(p))
    np.testing.assert_allclose(rows_out, out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tiled, out, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.isneginf(rows_lse), np.isneginf(lse))


def test_a_bias_adds_after_the_softcap_not_inside_it():
    """One key: lse is the final score, cap tanh(s / cap) + bias (torch's attn_mask, FlexAttention's score_mod
    add to the final score), not cap tanh((s + bias) / cap)."""
    q, k, v = np.full((1, 1, 1, 1), 3.0), np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
    _, lse = reference.sdpa(q, k, v, mask=np.full((1, 1, 1, 1), 5.0), scale=1.0, mods=(Softcap(1.0),),
                            return_lse=True)
    assert lse[0, 0, 0] == np.tanh(3.0) + 5.0


def test_hidden_keys_are_replaced_so_only_rows_that_see_a_key_carry_a_nan_query():
    """A NaN query row that sees no key gets O = 0 (its scores are replaced by -inf, as under causal), one that
    sees a key stays NaN; a NaN bias entry still reaches its row. Every path alike."""
    B, H, N, M, D = 1, 1, 3, 4, 2
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((B, H, N, D)), rng.standard_normal((B, H, M, D)), rng.standard_normal((B, H, M, D))
    q[..., :2, 0] = np.nan                                                    # rows 0 and 1 hold a NaN
    keep = np.ones((1, 1, N, M), dtype=bool)
    keep[..., 0, :] = False                                                   # row 0 sees no key
    bias = np.zeros((1, 1, N, M))
    bias[..., 2, 1] = np.nan
    for mask, empty, nan_rows in ((keep, [0], [1]), (np.where(keep, bias, -np.inf), [0], [1, 2])):
        for out in (reference.sdpa(q, k, v, mask=mask), reference.sdpa_rows(q, k, v, np.arange(N), mask=mask)[0],
                    reference.blockwise_sdpa(q, k, v, mask=mask, block_n=2, block_m=3)):
            assert np.all(out[..., empty, :] == 0.0)
            assert np.all(np.isnan(out[..., nan_rows, :]))


def test_fully_masked_rows_and_key_padding_edges_are_sampled():
    p = Problem(B=2, H=2, N=40, M=50, D=8, mask="fully_masked")
    x = make_inputs(p)
    mask = x.reference_mods(p)[-1]
    assert mask.query_rows(p) == {0, 20} and mask.key_rows(p) == set()
    assert {0, 20} <= set(choose_rows(p, x).tolist())
    assert mask.visible_range(5, 7, p.N, p.M) == (0, p.M - 1)               # no tile-skipping claim

    p = Problem(B=3, H=2, N=40, M=50, D=8, mask="padding", seed=2)
    x = make_inputs(p)
    lengths = x.mask.reshape(p.B, p.M).sum(axis=1)                           # keys 0 .. length - 1 are real
    edges = {int(n) + d for n in lengths if n < p.M for d in (-1, 0)}
    assert edges and x.reference_mods(p)[-1].key_rows(p) == edges
    assert edges <= set(choose_key_rows(p, x).tolist())


def test_reference_bias_is_the_dense_mask_and_masks_through_the_seam():
    for kind in ("padding", "per_head", "bias_extreme", "head_bias"):
        p = Problem(B=2, H=4, Hkv=2, N=9, M=13, D=8, mask=kind, causal="top_left")
        x = make_inputs(p)
        want = reference.mask_to_bias(x.mask, p.causal, p.N, p.M)
        got = reference_bias(x, p)
        np.testing.assert_array_equal(np.broadcast_to(got, np.broadcast_shapes(got.shape, want.shape)),
                                      np.broadcast_to(want, np.broadcast_shapes(got.shape, want.shape)))


def test_the_mask_stays_a_problem_field():
    assert "mask" not in modifications.MODS
    spec = "B=1,H=2,N=5,D=8,Hkv=2,M=7,Dv=8,dtype=float32,causal=bottom_right,mask=padding,softcap=30"
    assert Problem.parse(spec).spec() == spec
    with pytest.raises(AttentionInputError, match="mask is a field of its own"):
        Problem(mods=(InputMask(),))
    with pytest.raises(AttentionInputError, match="not bound"):
        InputMask().keep(block.block_of(np.arange(2), np.arange(2), 2, 2, 1, 1))
