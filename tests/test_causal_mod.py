"""Causal on the modifications seam (`reference/mods/causal.py`): the same mask as the conventions it cites and as
the hand-threaded causal it replaced, alone, with a window, on a ragged layout; and the same answers to the seam's
other questions (visible ranges, pair counts, sampled rows). Cheap: small problems, well under a second."""
import numpy as np
import pytest
import torch

from attnbench import reference
from attnbench.check import choose_key_rows, choose_rows
from attnbench.implementations.base import has_empty_rows
from attnbench.problem import Problem, make_inputs
from attnbench.reference import AttentionInputError, layouts
from attnbench.reference.mods import MODS, Block, Causal, Window, with_causal
from attnbench.reference.mods.base import tile_edges

SHAPES = [(5, 9), (9, 5), (7, 7), (1, 6), (6, 1)]          # N < M, N > M, square, decode, one key


def _convention(align: str, n: int, m: int) -> np.ndarray:
    """The cited conventions themselves: torch's SDPA is_causal is `ones(L, S).tril(diagonal=0)`; FlashAttention's
    causal with seqlen_q != seqlen_k is the lower triangle aligned to the bottom-right corner (diagonal M - N)."""
    return torch.ones(n, m, dtype=torch.bool).tril(diagonal=0 if align == "top_left" else m - n).numpy()


def _old_bias(align: str, n: int, m: int) -> np.ndarray:
    """The hand-threaded rule the seam replaced (`block.bias_rows` before): -inf where j > i + offset."""
    offset = 0 if align == "top_left" else m - n
    return np.where(np.arange(m)[None, :] <= np.arange(n)[:, None] + offset, 0.0, -np.inf)


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("n, m", SHAPES)
def test_the_mask_is_the_cited_convention_and_the_old_rule(align, n, m):
    keep = Causal(align).keep(Block(np.arange(n), np.arange(m), n, m, 1, 1))
    np.testing.assert_array_equal(keep, _convention(align, n, m))
    np.testing.assert_array_equal(np.where(keep, 0.0, -np.inf), _old_bias(align, n, m))
    if n != m:                                                 # the two alignments differ: the test can fail
        assert not np.array_equal(_convention("top_left", n, m), _convention("bottom_right", n, m))


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("n, m", SHAPES)
@pytest.mark.parametrize("window", [None, Window(2, 0), Window(3, 1)])
def test_every_reference_path_on_the_seam_equals_the_old_causal_bias(align, n, m, window):
    """sdpa, sdpa_rows, blockwise_sdpa and the backward with `causal=` (now `Causal` inside mods) equal the same
    call with the old causal bias passed as a float mask, a window composed; rows that see no key give 0."""
    rng = np.random.default_rng(n * 10 + m)
    q, k, v = rng.standard_normal((1, 2, n, 8)), rng.standard_normal((1, 2, m, 8)), rng.standard_normal((1, 2, m, 4))
    g = rng.standard_normal((1, 2, n, 4))
    mods = () if window is None else (window,)
    want = reference.sdpa(q, k, v, mask=_old_bias(align, n, m), mods=mods)
    for got in (reference.sdpa(q, k, v, causal=align, mods=mods),
                reference.sdpa(q, k, v, mods=(Causal(align), *mods)),
                reference.sdpa_rows(q, k, v, np.arange(n), causal=align, mods=mods, block_m=2)[0],
                reference.blockwise_sdpa(q, k, v, causal=align, mods=mods, block_n=2, block_m=3)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    for got, expect in zip(reference.sdpa_backward(q, k, v, g, causal=align, mods=mods),
                           reference.sdpa_backward(q, k, v, g, mask=_old_bias(align, n, m), mods=mods)):
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("n, m", SHAPES)
@pytest.mark.parametrize("window", [None, Window(2, 0), Window(3, 1)])
def test_visible_ranges_and_pair_counts_are_the_masks(align, n, m, window):
    """visible_range (tile skipping) is exact for a causal row range, and the pair count is the mask's."""
    mods = with_causal(align, () if window is None else (window,))
    block = Block(np.arange(n), np.arange(m), n, m, 1, 1)
    keep = reference.mods.visible(mods, block)
    keep = np.ones((n, m), bool) if keep is None else keep          # None: the masks keep every pair
    assert reference.attended_pairs(n, m, align, () if window is None else (window,)) == int(keep.sum())
    alone = _convention(align, n, m)
    for lo in range(n):
        for hi in range(lo, n):
            seen = np.flatnonzero(alone[lo:hi + 1].any(axis=0))           # causal alone: the range is exact
            first, last = Causal(align).visible_range(lo, hi, n, m)
            assert (first, last) == (0, seen.max()) if seen.size else last < first
            cols = np.flatnonzero(keep[lo:hi + 1].any(axis=0))
            first, last = reference.mods.visible_range(mods, lo, hi, n, m)
            assert cols.size == 0 or (first <= cols.min() and cols.max() <= last)   # never hides a visible key


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("n, m", [(700, 900), (900, 700), (33, 4097)])
def test_sampled_rows_are_the_old_causal_rows(align, n, m):
    """The rows the seam asks Causal for are the rows `choose_rows` / `choose_key_rows` added by hand before, so
    a row-sampled check and its repro line are unchanged."""
    p = Problem(B=1, H=1, N=n, M=m, D=8, causal=align)
    off = 0 if align == "top_left" else m - n
    old_q = ({j - off + d for j in tile_edges(m) for d in (-1, 0)} | {max(0, -off) + d for d in (-1, 0, 1)}
             | {m - 1 - off + d for d in (-1, 0, 1)})
    old_k = {off + d for d in (-1, 0, 1)} | {n - 1 + off + d for d in (-1, 0, 1)}
    assert Causal(align).query_rows(p) == old_q and Causal(align).key_rows(p) == old_k
    assert {r for r in old_q if 0 <= r < n} <= set(choose_rows(p).tolist())
    assert {j for j in old_k if 0 <= j < m} <= set(choose_key_rows(p).tolist())


def test_a_ragged_layout_keeps_each_sequence_bottom_right():
    """Right alignment of every sequence in the logical view makes the one Causal on the view each sequence's own
    FlashAttention causal (diagonal M_b - N_b), checked against the cited convention per sequence, N_b < M_b and
    N_b > M_b alike; empty rows are asked per sequence; top_left is refused for a layout."""
    p = Problem(B=4, H=2, N=12, M=9, D=8, causal="bottom_right", kv="ragged", seed=3)
    x = make_inputs(p)
    out = reference.sdpa(x.q, x.k, x.v, **x.reference_kwargs(p))
    g = layouts.geometry(p)
    assert np.any(g.seq_q > g.seq_k) and np.any(g.seq_q < g.seq_k)
    for b in range(p.B):
        n, m = int(g.seq_q[b]), int(g.seq_k[b])
        alone = reference.sdpa(x.q[b:b + 1, :, p.N - n:], x.k[b:b + 1, :, p.M - m:], x.v[b:b + 1, :, p.M - m:],
                               mask=_convention("bottom_right", n, m))
        np.testing.assert_allclose(out[b:b + 1, :, p.N - n:], alone, rtol=1e-12, atol=1e-14)
    assert has_empty_rows(p)
    with pytest.raises(AttentionInputError, match="bottom_right"):
        p.replace(causal="top_left")


def test_causal_stays_a_problem_field_in_the_spec():
    """`causal=` is the problem's field (backends read `problem.causal`), joined to the mods for the reference only."""
    p = Problem.parse("B=1,H=2,N=5,M=9,D=8,causal=bottom_right,window=3:0")
    assert p.causal == "bottom_right" and p.mods == (Window(3, 0),) and "causal" not in MODS
    assert p.spec() == "B=1,H=2,N=5,D=8,Hkv=2,M=9,Dv=8,dtype=float32,causal=bottom_right,window=3:0"
    assert Problem.parse(p.spec()) == p
    assert p.reference_mods == (Causal("bottom_right"), Window(3, 0))
    assert p.replace(causal=None).reference_mods == p.mods
    assert Causal("top_left").label() == "causal=top_left" and Causal.parse("bottom_right") == Causal("bottom_right")
    with pytest.raises(AttentionInputError, match="causal"):
        Causal("lower_right")
    with pytest.raises(AttentionInputError, match="field of its own"):
        Problem(N=5, mods=(Causal("top_left"),))
    with pytest.raises(AttentionInputError, match="at most once"):
        reference.sdpa(*(np.zeros((1, 1, 2, 2)),) * 3, causal="top_left", mods=(Causal("bottom_right"),))


def test_a_nan_query_reaches_its_row_only_through_visible_keys():
    """Hidden pairs are replaced by -inf, not added -inf (as a window, as FlashAttention masks): with N > M
    bottom-right, a NaN query in a row that sees no key gives O = 0 and lse = -inf; one that sees keys gives NaN."""
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 1, 5, 4)), rng.standard_normal((1, 1, 3, 4)), rng.standard_normal((1, 1, 3, 4))
    q[0, 0, 0, 0] = q[0, 0, 4, 1] = np.nan                      # row 0 sees no key, row 4 sees all three
    for out, lse in (reference.sdpa(q, k, v, causal="bottom_right", return_lse=True),
                     reference.sdpa_rows(q, k, v, np.arange(5), causal="bottom_right")):
        assert not out[0, 0, 0].any() and np.isneginf(lse[0, 0, 0])
        assert np.isnan(out[0, 0, 4]).all() and np.isfinite(out[0, 0, 1:4]).all()
