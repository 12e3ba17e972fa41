"""Modifications on torch tensors, for the torch backends (torch_eager, torch_blockwise): their own code, not the
reference's, so a backend is never its own yardstick. Conventions as in `attnbench.reference.mods` (cited there):

    window (left, right)  key j visible from query i iff -right <= i + M - N - j <= left (-1: unbounded)
    softcap cap           cap * tanh(s / cap) on the scaled scores
    alibi slopes          s - slope_h |i + M - N - j|, slopes (H,) or (B, H) float32, applied in the scores' dtype
    sinks logits          one more term exp(sink_h) in each row's denominator
    document ids          key j visible from query i iff ids[b, clip(i + M - N, 0)] == ids[b, j]
    prefix_lm P           key j visible from query i iff j < P or j <= i + M - N

`convert` turns a problem's bound modifications into `TorchMods` once (in `prepare`, outside the timed call);
`scores` applies them to a block of grouped scores (B, Hkv, G, R, C) given its query rows and key columns.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

SUPPORTED = ("window", "softcap", "alibi", "sinks", "document", "prefix_lm")


@dataclass(frozen=True)
class TorchMods:
    """What the torch backends need of a problem's modifications (None: absent)."""

    window: tuple[int, int] | None = None
    softcap: float | None = None
    alibi: torch.Tensor | None = None      # (H,) or (B, H) float32
    sinks: torch.Tensor | None = None      # (H,) float32
    document: torch.Tensor | None = None   # (B, M) int64: the document of each key position
    prefix_lm: int | None = None           # P: keys before it bidirectional, causal after
    order: tuple[str, ...] = ()            # score modifications in the problem's order

    @property
    def empty(self) -> bool:
        return all(x is None for x in (self.window, self.softcap, self.alibi, self.sinks, self.document,
                                             self.prefix_lm))


def convert(mods, device) -> TorchMods:
    """The reference modifications `mods` (bound) as a `TorchMods` on `device`."""
    fields, order = {}, []
    for m in mods:
        if m.key == "window":
            fields["window"] = (m.left, m.right)
        elif m.key == "softcap":
            fields["softcap"], _ = float(m.cap), order.append("softcap")
        elif m.key == "alibi":
            fields["alibi"], _ = torch.as_tensor(m.slopes, dtype=torch.float32, device=device), order.append("alibi")
        elif m.key == "sinks":
            fields["sinks"] = torch.as_tensor(m.logits, dtype=torch.float32, device=device)
        elif m.key == "document":
            fields["document"] = torch.as_tensor(m.ids, dtype=torch.int64, device=device)
        elif m.key == "prefix_lm":
            fields["prefix_lm"] = int(m.length)
        else:
            raise ValueError(f"torch backends: modification {m.key!r} not implemented")
    return TorchMods(**fields, order=tuple(order))


def _per_head(values: torch.Tensor, hkv: int) -> torch.Tensor:
    """(H,) or (B, H) -> (B|1, Hkv, G, 1, 1), query head h at [h // G, h % G]."""
    v = values if values.ndim == 2 else values[None]
    return v.reshape(v.shape[0], hkv, v.shape[1] // hkv, 1, 1)


def distance(rows: torch.Tensor, cols: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """(R, C) i + M - N - j."""
    return rows[:, None] + (m - n) - cols[None, :]


def window_keep(rows: torch.Tensor, cols: torch.Tensor, n: int, m: int, window) -> torch.Tensor | None:
    if window is None:
        return None
    left, right = window
    d = distance(rows, cols, n, m)
    keep = torch.ones_like(d, dtype=torch.bool)
    if left >= 0:
        keep &= d <= left
    if right >= 0:
        keep &= d >= -right
    return keep


def scores(s: torch.Tensor, mods: TorchMods, rows: torch.Tensor, cols: torch.Tensor, n: int, m: int, *,
           with_grad: bool = False):
    """Grouped scaled scores s (B, Hkv, G, R, C) after softcap / ALiBi (in order) and the window (last); with_grad
    also d(result) / d s (None: 1), for a hand-written backward: the softcap's 1 - tanh^2 at its own input."""
    factor = None
    for key in mods.order:
        if key == "softcap":
            t = torch.tanh(s / mods.softcap)
            factor = 1 - t * t if with_grad else None
            s = mods.softcap * t
        else:       # slope x distance in float32 (float64 for float64) and rounded once to the scores' dtype, as
            # FlashAttention's float32 slopes: slope and product each rounded to float16 (torch_eager's half scores)
            # put 3x the naive formula's error on softcapped scores (a thorough drawn problem, scale 2, M 117)
            work = torch.promote_types(s.dtype, torch.float32)
            bias = _per_head(mods.alibi, s.shape[1]).to(work) * distance(rows, cols, n, m).abs().to(work)
            s = s - bias.to(s.dtype)
    keep = window_keep(rows, cols, n, m, mods.window)
    if mods.document is not None:                 # (B, 1, 1, R, C): same document as the query's key position
        ids = mods.document
        same = (ids[:, (rows + (m - n)).clamp(0, m - 1)][:, :, None] == ids[:, cols][:, None, :])[:, None, None]
        keep = same if keep is None else keep & same
    if mods.prefix_lm is not None:                # (R, C): in the prefix, or at or before the query's position
        prefix = (cols[None, :] < mods.prefix_lm) | (distance(rows, cols, n, m) >= 0)
        keep = prefix if keep is None else keep & prefix
    s = s if keep is None else s.masked_fill(~keep, float("-inf"))
    return (s, factor) if with_grad else s


def sink_logits(mods: TorchMods, hkv: int, dtype) -> torch.Tensor | None:
    """(1, Hkv, G, 1) sink logits in `dtype`, or None."""
    return None if mods.sinks is None else _per_head(mods.sinks, hkv)[..., 0].to(dtype)


def key_range(mods: TorchMods, lo: int, hi: int, n: int, m: int) -> tuple[int, int]:
    """Inclusive key columns queries lo..hi can see under the window and the prefix-LM's causal half (tile
    skipping)."""
    first, last = 0, m - 1
    if mods.window is not None:
        left, right = mods.window
        first = 0 if left < 0 else max(0, lo + m - n - left)
        last = m - 1 if right < 0 else min(m - 1, hi + m - n + right)
    if mods.prefix_lm is not None:
        last = min(last, max(mods.prefix_lm - 1, hi + m - n))
    return first, last


def for_tile(mods: TorchMods, rows: slice, cols: slice, n: int, m: int) -> TorchMods:
    """`mods` for the tile of query rows x key cols: without the window or the prefix-LM where every pair of the
    tile is inside it (the interior tiles of a long window need no mask: only the two edge tiles of each query
    tile do; under a prefix-LM, the tiles inside the prefix or below the diagonal)."""
    if mods.prefix_lm is not None and (cols.stop - 1 < mods.prefix_lm or cols.stop - 1 <= rows.start + m - n):
        mods = replace(mods, prefix_lm=None)
    if mods.window is None:
        return mods
    left, right = mods.window
    # pair (i, j) is inside iff -right <= i + M - N - j <= left; over the tile, the extremes are at the corners
    largest, smallest = rows.stop - 1 + m - n - cols.start, rows.start + m - n - (cols.stop - 1)
    inside = (left < 0 or largest <= left) and (right < 0 or smallest >= -right)
    return replace(mods, window=None) if inside else mods
