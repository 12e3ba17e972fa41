"""Hypothesis strategies that draw whole attention `Problem`s.

    problems(caps)  ->  Problem with B, H (a multiple of Hkv), N, M in 1..max_len (mostly not multiples
                        of 16), D and Dv (odd sizes included), causal alignment, mask kind, scale,
                        dtype, layout, input distribution, seed and KV layout (`kv_layouts`); within the
                        shape constraints
                        the capabilities declare (multiples, head dim choices, N = M, per-dtype maxima;
                        causal always where `non_causal` is False);
                        and a list of the modifications the capabilities declare (`modification_lists`)

Drawing within a backend's declared `Capabilities` keeps rejections rare (a
filter on `why_not` alone would throw most draws away for narrow backends);
the caller still `assume`s `backend.why_not(problem, device) is None` for
whatever the capabilities cannot express here.
"""
from __future__ import annotations

from hypothesis import strategies as st

from attnbench.implementations import Capabilities
from attnbench.problem import DTYPES, LAYOUTS, MASK_FORMS, Problem
from attnbench.reference.mods import Alibi, Sinks, Softcap, Window
from attnbench.reference.mods.document import Document
from attnbench.reference.mods.prefix_lm import PrefixLM

# Sizes kernel authors get wrong: 1, just around a tile (15, 17, 63, 65), odd (59, 111), plus any size.
_SPECIAL_LENGTHS = (1, 2, 15, 17, 31, 63, 65, 97, 113, 129, 200)
_SPECIAL_HEAD_DIMS = (1, 3, 8, 16, 24, 59, 64, 80, 111, 128)
# Finite, moderate distributions; large-logit, tiny and non-finite inputs have their own suite (fixed cases in
# test_adversarial.py). "peaked" (one key dominates a row) is drawn too: on tiny M the naive error is then a max
# over a few elements and can be lucky, which the budget's analytic floor (budget.naive_floor) covers soundly.
PROPERTY_INPUTS = ("normal", "near_ties", "peaked")


def lengths(max_len: int, multiple: int = 1) -> st.SearchStrategy[int]:
    """A sequence length in 1..max_len, half the time one of the sizes that break tiling; with `multiple` > 1
    a multiple of it (at least one multiple, even past max_len: a backend that takes only multiples of 128
    is still checked)."""
    if multiple > 1:
        return st.integers(1, max(1, max_len // multiple)).map(lambda n: n * multiple)
    special = [n for n in _SPECIAL_LENGTHS if n <= max_len]
    return st.one_of(st.sampled_from(special), st.integers(1, max_len))


def head_dims(lo: int, hi: int, choices: tuple[int, ...] | None = None) -> st.SearchStrategy[int]:
    """A head dim in lo..hi, half the time an odd or common one; one of `choices` where the backend takes only
    those."""
    if choices is not None:
        return st.sampled_from(sorted(d for d in choices if lo <= d <= max(hi, min(choices))))
    special = [d for d in _SPECIAL_HEAD_DIMS if lo <= d <= hi] or [lo]
    return st.one_of(st.sampled_from(special), st.integers(lo, hi))


# Window sides: unbounded, 0 (causal-like), and both sides of tile edges (a window edge on a tile boundary is
# where tile-skipping kernels go wrong), plus any width.
_WINDOW_SIDES = (-1, 0, 1, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128)


def windows() -> st.SearchStrategy[Window]:
    side = st.one_of(st.sampled_from(_WINDOW_SIDES), st.integers(0, 200))
    return st.builds(Window, side, side)


def modification_lists(supported: tuple[str, ...], M: int = 1 << 30) -> st.SearchStrategy[tuple]:
    """An ordered tuple of distinct modifications among `supported` keys (often empty): softcap and ALiBi in
    either order (order matters for them), the window and sinks anywhere (they commute with everything)."""
    makers = {"window": windows(),
              "softcap": st.builds(Softcap, st.sampled_from((1.0, 5.0, 30.0))),
              "alibi": st.builds(Alibi, st.sampled_from(("head", "batch"))),
              "sinks": st.just(Sinks()),
              "document": st.builds(Document, st.integers(1, max(1, min(4, M)))),    # count <= M keys
              "prefix_lm": st.builds(PrefixLM, st.one_of(st.sampled_from(_WINDOW_SIDES[1:]), st.integers(0, 200)))}
    choices = [makers[k] for k in supported if k in makers]
    if not choices:
        return st.just(())
    some = st.lists(st.sampled_from(range(len(choices))), unique=True, max_size=len(choices)).flatmap(
        lambda picks: st.tuples(*(choices[i] for i in picks)))
    return st.one_of(st.just(()), some)


@st.composite
def problems(draw, caps: Capabilities | None = None, *, max_len: int = 200, max_head_dim: int = 160,
             inputs: tuple[str, ...] = PROPERTY_INPUTS, masks: tuple[str | None, ...] | None = None) -> Problem:
    """A Problem within `caps` (all features when None). masks: the mask kinds to draw (default: every kind)."""
    caps = caps or Capabilities()
    dtype = draw(st.sampled_from([d for d in DTYPES if d in caps.dtypes]))
    Hkv = draw(st.integers(1, 2))
    H = Hkv * (draw(st.integers(1, 3)) if caps.gqa else 1)
    longest = min(max_len, caps.longest(dtype) or max_len)
    N = draw(lengths(longest, caps.seq_multiple))
    M = draw(lengths(longest, caps.seq_multiple)) if caps.cross and not caps.same_length else N
    lo, hi = caps.head_dims[0], min(caps.head_dims[1], max_head_dim)
    D = draw(head_dims(lo, hi, caps.head_dim_choices))
    Dv = draw(st.one_of(st.just(D), head_dims(lo, hi, caps.head_dim_choices))) if caps.dv_differs else D
    kv, append = draw(kv_layouts(caps, M))
    dense = kv == "dense" and not append                   # a layout is its own mask, causal per sequence
    alignments = layout_alignments(caps, dense)
    causal = draw(st.sampled_from((None,) * caps.non_causal + alignments))
    maskable = caps.non_causal or caps.mask_with_causal               # a mask drops causal without mask_with_causal
    kinds = [m for m in (masks if masks is not None else (None, *MASK_FORMS))
             if m is None or (MASK_FORMS[m] in caps.masks and maskable)]
    mask = draw(st.sampled_from(kinds)) if dense else None
    if mask is not None and causal is not None and not caps.mask_with_causal:
        causal = None
    # Modifications that count keys from the sequence's start (documents, a prefix) need the dense view's indices;
    # a prefix-LM drops causal (below), which a causal-only backend does not run.
    mods = draw(modification_lists(tuple(k for k in caps.mods if (dense or k not in ("document", "prefix_lm"))
                                         and (caps.non_causal or k != "prefix_lm")), M))
    if any(m.key == "prefix_lm" for m in mods):
        causal = None                                             # a prefix-LM is causal past its prefix already
    return Problem(
        B=draw(st.integers(1, 2)), H=H, Hkv=Hkv, N=N, M=M, D=D, Dv=Dv, dtype=dtype, causal=causal, mask=mask,
        scale=draw(st.one_of(st.none(), st.sampled_from((0.05, 0.125, 0.3, 1.0, 2.0)))),
        inputs=draw(st.sampled_from(inputs)),
        layout=draw(st.sampled_from(LAYOUTS if caps.strided else ("contiguous",))),
        seed=draw(st.integers(0, 2**16)), mods=mods, kv=kv, append=append,
    )


def layout_alignments(caps: Capabilities, dense: bool) -> tuple[str, ...]:
    """The causal alignments to draw: a ragged or paged layout is causal per sequence, bottom_right only."""
    return caps.causal if dense else tuple(c for c in caps.causal if c != "top_left")


def kv_layouts(caps: Capabilities, M: int) -> st.SearchStrategy[tuple[str, int]]:
    """(kv, append): a quarter of the time a ragged or paged layout (page sizes 1, 16, 256), some with appended
    keys, where the backend reads layouts natively or through pad-and-mask (bool masks); else dense (always for a
    causal-only backend without the one alignment a layout takes)."""
    if (caps.kv_layouts == ("dense",) and "bool" not in caps.masks) or not (caps.non_causal
                                                                             or layout_alignments(caps, False)):
        return st.just(("dense", 0))
    layout = st.sampled_from(("ragged", "paged:1", "paged:16", "paged:256"))
    return st.one_of(st.just(("dense", 0)), st.just(("dense", 0)), st.just(("dense", 0)),
                     st.tuples(layout, st.sampled_from((0, 0, 1, min(M, 3)))))
