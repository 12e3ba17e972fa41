"""Mask and causal helpers every backend shares (and plugins may import): one definition of each rule.

    causal_offset(alignment, N, M)       key j visible from query i iff j <= i + offset (from the reference)
    causal_keep(N, M, alignment, device) bool tensor (N, M) of that rule
    as_4d(mask)                          any mask broadcastable to (B, H, N, M) as rank 4 (b, h, n, m)
    grouped_mask(mask, Hkv, G)           rank-4 (b, h, n, m), h in {1, H}, as (b, Hkv|1, G|1, n, m), matching
                                         queries grouped (B, Hkv, G, N, D) for grouped-query attention

Masks are normalised to rank 4 once, where tensors are built (`_torch_common.to_tensors`, the public
`__call__`s), so a backend sees (B|1, H|1, N|1, M) and never guesses which axis is which: a (1, 1, N, M) mask
with B = 2, a per-head mask with Hkv = 1 and (B, 1, 1, M) key padding all take the same path.
"""
from __future__ import annotations

from attnbench.reference.masks import causal_offset

__all__ = ["as_4d", "causal_keep", "causal_offset", "grouped_mask"]


def causal_keep(n: int, m: int, alignment: str, device=None):
    """Bool tensor (N, M): True where query i may see key j under `alignment` (see `attnbench.reference.masks`)."""
    import torch

    offset = causal_offset(alignment, n, m)
    return torch.arange(m, device=device)[None, :] <= torch.arange(n, device=device)[:, None] + offset


def as_4d(mask):
    """A mask (NumPy array or tensor) of rank <= 4 reshaped to rank 4 by leading 1s; None stays None."""
    if mask is None or mask.ndim == 4:
        return mask
    return mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))


def grouped_mask(mask, hkv: int, group: int):
    """Rank-4 mask (b, h, n, m) with h in {1, Hkv * G} -> (b, Hkv|1, G|1, n, m), broadcasting like grouped
    queries (B, Hkv, G, N, D): query head h reads KV head h // G, so head h's mask row sits at [h // G, h % G]."""
    if mask is None:
        return None
    mask = as_4d(mask)
    b, h, n, m = mask.shape
    return mask.reshape(b, hkv, group, n, m) if h != 1 else mask.reshape(b, 1, 1, n, m)
