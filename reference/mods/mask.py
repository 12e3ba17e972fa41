"""The input mask: a bool keep (True = attend) or an additive float bias, broadcastable to (B, H, N, M).

    bool   keep(block) = mask[b, h, i, j]           a masking modification: -inf where False, applied after every
                                                    score modification like every mask (`mods.apply`)
    float  score(s, block) = s + bias[b, h, i, j]   a score modification, the last one: after softcap and ALiBi
                                                    (`mods.with_mask` appends it), as torch's
                                                    `scaled_dot_product_attention(attn_mask=float)` and
                                                    FlexAttention's score_mod add a bias to the final score;
                                                    -inf entries also hide the key (`keep`)

`InputMask(values)` is bound from the inputs (`Inputs.mask`: the problem's mask kind drawn by `make_inputs`, or a
layout's logical-view mask, which keeps each sequence's own rows and keys). A problem names only the kind
(`Problem.mask`, spec item `mask=padding|bool|bias|...`), because every backend's API takes the mask as an
argument of its own (`mask=`, `attn_mask=`); the reference side reads the values only as this modification
(`Inputs.reference_mods`: `Causal` first, the problem's mods, then this one), so scores, the error budget, the
naive yardstick and the row sampling ask it the same questions as a window. It is not in `MODS` (the spec keeps
`mask=` a field).

Against the additive 0 / -inf bias this replaced, a bool mask's hidden score is now replaced by -inf, not -inf
added (as `Causal`): only a row that sees no key and holds a NaN query differs (O = 0 now, NaN then). A float
bias adds exactly as before; its -inf entries hide the key likewise, and NaN or +inf entries still propagate.

Visible range: no limit (a bool mask's kept keys are arbitrary; no tile-skipping claim). Rows worth sampling:
the rows that see no key (fully masked) and, for a mask shared by every query (key padding, (B|1, H|1, 1, M)),
both sides of each key where it changes (the padding edge: the last real key and the first pad).

Shape letters: B batch, H query heads, Hkv key/value heads, G = H / Hkv, N queries, M keys, R rows, C columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Block, Modification

EMPTY_ROWS = 8        # fully masked rows sampled at most (the first ones: they are all alike)
KEY_EDGES = 16        # key padding edges sampled at most


def _at(mask, rows, cols) -> np.ndarray:
    """`mask` (rank <= 4) as (B|1, H|1, R|1, C|1) at query rows `rows` and key columns `cols` (broadcast axes
    stay size 1)."""
    m = np.asarray(mask)
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    if m.shape[2] != 1:
        m = np.take(m, np.asarray(rows), axis=2)
    return m if m.shape[3] == 1 else np.take(m, np.asarray(cols), axis=3)


def _grouped(x: np.ndarray, Hkv: int, G: int) -> np.ndarray:
    """(b, h, R, C) with h in {1, H} as (b, Hkv|1, G|1, R, C), matching grouped scores (query head h at
    [h // G, h % G])."""
    b, h = x.shape[:2]
    return x.reshape(b, Hkv, G, *x.shape[2:]) if h != 1 else x[:, :, None]


@dataclass(frozen=True)
class InputMask(Modification):
    values: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)   # (B|1, H|1, N|1, M)

    key = "mask"

    @property
    def masks(self) -> bool:
        """Both forms hide keys: a bool mask where False, a float bias where -inf."""
        return True

    @property
    def is_bias(self) -> bool:
        return np.asarray(self._values()).dtype != np.bool_

    def spec_value(self) -> str:
        return "bias" if self.values is not None and self.is_bias else "bool"

    def _values(self) -> np.ndarray:
        if self.values is None:
            from attnbench.reference._checks import AttentionInputError

            raise AttentionInputError("mask: values not bound (pass InputMask(values=array) to the reference)")
        return self.values

    def _block(self, block: Block) -> np.ndarray:
        """The mask at the block, grouped: (B|1, Hkv|1, G|1, R|1, C|1)."""
        return _grouped(_at(self._values(), block.rows, block.cols), block.Hkv, block.H // block.Hkv)

    def score(self, s, block: Block, xp=np):
        """s + the bias (float), after every score modification before it; a bool mask leaves s to `keep`."""
        if not self.is_bias:
            return s
        bias = self._block(block).astype(np.float64)
        if xp is np:
            return s + bias
        return s + xp.as_tensor(np.ascontiguousarray(bias), device=s.device).to(s.dtype)

    def keep(self, block: Block):
        """(B|1, Hkv|1, G|1, R, C): the bool mask, or where the bias is not -inf."""
        m = self._block(block)
        return m if m.dtype == np.bool_ else ~np.isneginf(m)

    def magnitude(self, t, block: Block):
        """t + |bias| where the bias is finite (a bool mask adds nothing)."""
        if not self.is_bias:
            return t
        bias = self._block(block).astype(np.float64)
        return t + np.where(np.isfinite(bias), np.abs(bias), 0.0)

    def empty_rows(self, N: int) -> np.ndarray:
        """Query rows (ascending) that see no key in some batch and head under this mask alone."""
        m = np.asarray(self._values())
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)
        if m.shape[2] != N:
            return np.zeros(0, dtype=np.int64)
        empty = ~np.any(m, axis=-1) if m.dtype == np.bool_ else np.all(np.isneginf(m), axis=-1)
        return np.flatnonzero(empty.reshape(-1, N).any(axis=0))

    def query_rows(self, problem) -> set[int]:
        """The first EMPTY_ROWS rows that see no key (a kernel must give them O = 0, lse = -inf)."""
        if self.values is None:
            return set()
        return set(self.empty_rows(problem.N)[:EMPTY_ROWS].tolist())

    def key_rows(self, problem) -> set[int]:
        """Both sides of the first KEY_EDGES keys where a mask shared by every query changes (key padding: the
        last real key and the first pad of each batch)."""
        if self.values is None:
            return set()
        m = np.asarray(self._values())
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)
        if m.shape[2] != 1 or m.shape[3] != problem.M:
            return set()
        hidden = (~m if m.dtype == np.bool_ else np.isneginf(m)).reshape(-1, problem.M)
        changes = np.flatnonzero((hidden[:, 1:] != hidden[:, :-1]).any(axis=0))    # key j differs from j + 1
        return {int(j) + d for j in changes[:KEY_EDGES] for d in (0, 1)}
