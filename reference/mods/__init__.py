"""Modifications of attention, one module each, and the few functions every path applies them with.

    Window(left, right)   sliding window, bottom-right aligned (window.py)
    Softcap(cap)          cap · tanh(s / cap) on the scaled scores (softcap.py)
    Alibi(per)            -slope_h |i + M - N - j| (alibi.py)
    Sinks()               a per-head logit in every row's denominator (sinks.py)
    Document(count), PrefixLM(length)   packed documents, a bidirectional prefix (document.py, prefix_lm.py)
    Causal(align)         top_left (torch) or bottom_right (FlashAttention) causal (causal.py); a problem's own
                          field (`Problem.causal`), joined to the others by `with_causal` for the reference side
    InputMask(values)     the input's bool mask or float bias (mask.py); a problem's own field (`Problem.mask`,
                          values in `Inputs.mask`), appended by `with_mask` for the reference side

`MODS` maps a spec key to its class, found by looking through this package's modules: adding a modification is
its module (a `Modification` subclass with a `key`), nothing here. Causal and InputMask are left out of `MODS`:
the spec keeps `causal=top_left|bottom_right` and `mask=KIND` as the problem's fields, as every backend API keeps
causal a flag and the mask an argument of its own. The
reference's block function (`attnbench.reference.block`) is the only place scores meet them.
"""
from __future__ import annotations

import numpy as np

from attnbench.reference._checks import AttentionInputError, normalize_causal
from attnbench.reference._discover import subclasses_by_key

from .alibi import Alibi
from .base import Block, Modification, edges
from .causal import Causal
from .mask import InputMask
from .sinks import Sinks
from .softcap import Softcap
from .window import Window


MODS: dict[str, type[Modification]] = {key: cls for key, cls in
                                       subclasses_by_key(__name__, __path__, Modification).items()
                                       if cls not in (Causal, InputMask)}

__all__ = ["MODS", "Alibi", "Block", "Causal", "InputMask", "Modification", "Sinks", "Softcap", "Window", "apply",
           "edges", "magnitude", "mask_bias", "parse", "sink_logits", "visible_range", "with_causal", "with_mask"]


def parse(key: str, raw: str) -> Modification:
    """The modification a spec item `key=raw` names ("window", "256:0" -> Window(256, 0))."""
    return MODS[key].parse(raw)


def check(mods) -> tuple[Modification, ...]:
    """`mods` as a tuple of modifications, each kind at most once (two windows are one narrower window)."""
    mods = tuple(mods or ())
    for m in mods:
        if not isinstance(m, Modification):
            raise AttentionInputError(f"mods: expected modifications ({', '.join(MODS)}), got {m!r}")
    keys = [m.key for m in mods]
    if len(set(keys)) != len(keys):
        raise AttentionInputError(f"mods: each modification at most once, got {', '.join(keys)}")
    return mods


def with_causal(causal, mods) -> tuple[Modification, ...]:
    """The modifications the reference computes: `Causal(alignment)` first where `causal` names one (None, False,
    True = "top_left", "top_left", "bottom_right"), then `mods`. Masks intersect, so the place is immaterial."""
    alignment = normalize_causal(causal)
    return tuple(mods or ()) if alignment is None else (Causal(alignment), *(mods or ()))


def with_mask(mods, mask) -> tuple[Modification, ...]:
    """The modifications the reference computes with an input mask: `mods`, then `InputMask(mask)` where `mask`
    is not None (bool, True = attend, or a float bias broadcastable to (B, H, N, M)). Last, so a bias adds after
    every score modification (softcap, ALiBi), as the hand-threaded bias it replaced did."""
    return tuple(mods or ()) if mask is None else (*(mods or ()), InputMask(mask))


def apply(s, mods, block: Block, xp=np, *, with_grad: bool = False):
    """Scores after `mods` (scores in order, then every mask), and with_grad: also d(result)/d s (None where it
    is 1 everywhere). s: the scaled scores (..., R, C) of `block`, NumPy or torch (xp). A masking
    modification's score is the identity unless it also adds (an input bias: `InputMask`)."""
    factor = None
    for m in mods:
        if with_grad:
            g = m.score_grad(s, block, xp)
            factor = g if factor is None else (factor * g if g is not None else factor)
        s = m.score(s, block, xp)
    keep = visible(mods, block)
    if keep is not None:
        keep = keep if xp is np else xp.as_tensor(keep, device=s.device)
        s = xp.where(keep, s, -np.inf if xp is np else float("-inf"))
    return (s, factor) if with_grad else s


def visible(mods, block: Block):
    """Bool (R, C) of the pairs every masking modification keeps, or None (all): also where the masks keep every
    pair of this block (most blocks of a causal or windowed row), so the callers skip their passes over it."""
    keep = None
    for m in mods:
        k = m.keep(block) if m.masks else None
        if k is not None:
            keep = k if keep is None else keep & k
    return None if keep is None or np.all(keep) else keep


def mask_bias(mods, block: Block):
    """The float64 additive bias the masking modifications put on the scores of `block`, (B|1, Hkv|1, G|1, R|1, C)
    or (R, C) as their masks broadcast: what their scores add (an input float bias), -inf wherever one hides the
    key; 0.0 where none masks. Score modifications (softcap, ALiBi) are not in it (their share of a score's size:
    `magnitude`)."""
    masking = [m for m in mods if m.masks]
    if not masking:
        return 0.0
    s = np.float64(0.0)                                 # broadcast: the result keeps the masks' own shapes
    for m in masking:
        s = m.score(s, block)
    keep = visible(masking, block)
    return s if keep is None else np.where(keep, s, -np.inf)


def sink_logits(mods, block: Block):
    """(B|1, Hkv, G, 1) float64 sink logits joining each row's denominator, or None."""
    sinks = [m.sink(block) for m in mods]
    sinks = [x for x in sinks if x is not None]
    return sinks[0] if sinks else None


def magnitude(t, mods, block: Block):
    """The score magnitude the error budget is relative to, after every modification."""
    for m in mods:
        t = m.magnitude(t, block)
    return t


def extra_roundings(mods) -> int:
    """Roundings the modifications add to each score in a kernel (budget)."""
    return sum(m.extra_roundings for m in mods)


def visible_range(mods, lo, hi, N: int, M: int):
    """Inclusive key columns that queries lo..hi may see at most under every masking modification (ints, or
    int arrays of as many ranges)."""
    first, last = 0, M - 1
    for m in mods:
        a, b = m.visible_range(lo, hi, N, M)
        first, last = np.maximum(first, a), np.minimum(last, b)
    return first, last


def bind(mods, problem, rng: np.random.Generator) -> tuple[Modification, ...]:
    """Each modification with its own inputs drawn for `problem`, in order (one rng: deterministic)."""
    return tuple(m.bind(problem, rng) for m in mods)
