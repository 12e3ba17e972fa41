"""KV layouts, one module each (dense.py, ragged.py, paged.py; conventions in base.py), and the functions every
path asks them through: the storage `make_inputs` builds, the logical dense view the reference reads, the
physical shapes of a backend's results and their logical view, the rows worth sampling, the bad-input check.

A problem's layout is its spec item `kv=dense|ragged|paged:PAGE_SIZE`, with `append=K` new keys per sequence
(`Problem.kv`, `Problem.append`). Shape letters as in base.py.
"""
from __future__ import annotations

import functools

import numpy as np

from attnbench.reference._checks import AttentionInputError
from attnbench.reference._discover import subclasses_by_key

from .base import Geometry, KvLayout, Storage


LAYOUTS: dict[str, type[KvLayout]] = subclasses_by_key(__name__, __path__, KvLayout)

__all__ = ["Geometry", "KvLayout", "LAYOUTS", "Storage", "parse"]


@functools.lru_cache(maxsize=64)
def parse(raw: str) -> KvLayout:
    """The layout a spec value names: "dense", "ragged", "paged:16"."""
    key, _, arg = str(raw).partition(":")
    if key not in LAYOUTS:
        raise AttentionInputError(f"kv: expected one of {', '.join(LAYOUTS)} (paged:PAGE_SIZE), got {raw!r}")
    return LAYOUTS[key].parse(arg or None)


def needs_storage(problem) -> bool:
    """Whether `problem` has physical storage of its own (any layout but plain dense without appended keys)."""
    return problem.kv != "dense" or problem.append > 0


def check(problem) -> str | None:
    """Why `problem`'s layout and append cannot go together with the rest of it (one line), or None."""
    layout = parse(problem.kv)
    if problem.append and not 0 <= problem.append <= problem.M:
        return f"append={problem.append}: 0..M={problem.M} new keys per sequence"
    if problem.mask is not None and needs_storage(problem):   # the storage holds no mask: it would be dropped
        return (f"kv={problem.kv}{f', append={problem.append}' if problem.append else ''}: the layout is its own "
                f"mask; mask={problem.mask} cannot be added")
    if problem.kv == "dense":
        return layout.check(problem)
    if problem.causal == "top_left":
        return f"kv={problem.kv}: causal is bottom_right in each sequence (FlashAttention's varlen and kvcache)"
    if problem.mod("document") is not None:
        return f"kv={problem.kv}: documents are packed sequences already; use kv=ragged alone"
    if problem.mod("prefix_lm") is not None:   # the logical view right-aligns sequences: key j is not key j of each
        return f"kv={problem.kv}: prefix_lm counts keys from each sequence's start; only with kv=dense"
    return layout.check(problem)


@functools.lru_cache(maxsize=32)
def geometry(problem) -> Geometry:
    """Lengths, offsets and block table of `problem`, drawn from its seed alone (so row sampling and the
    physical-to-logical views need no inputs)."""
    layout = parse(problem.kv)
    rng = np.random.default_rng([problem.seed, 6151])
    seq_q, seq_k = layout.lengths(problem, rng)
    place = layout.place(problem, seq_k, rng)
    cu_q = np.concatenate([[0], np.cumsum(seq_q)]) if layout.ragged_queries else None
    return Geometry(seq_q=seq_q, seq_k=seq_k, cache=seq_k - problem.append, cu_q=cu_q, **place)


def valid(problem) -> tuple[np.ndarray, np.ndarray]:
    """Bool (B, N) query rows and (B, M) key columns of the logical view that belong to a sequence."""
    g = geometry(problem)
    return (np.arange(problem.N)[None, :] >= problem.N - g.seq_q[:, None],
            np.arange(problem.M)[None, :] >= problem.M - g.seq_k[:, None])


def view_mask(problem) -> np.ndarray | None:
    """Bool (B, 1, N, M) of the logical view: a sequence's queries against its keys (None: every pair)."""
    rows, cols = valid(problem)
    if rows.all() and cols.all():
        return None
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _query_index(problem) -> tuple[np.ndarray, np.ndarray]:
    """(batch, row) of each packed query (total_q,): its place in the logical view."""
    g = geometry(problem)
    b = np.repeat(np.arange(problem.B), g.seq_q)
    return b, problem.N - g.seq_q[b] + (np.arange(len(b)) - g.cu_q[b])


def _key_index(problem) -> tuple[np.ndarray, np.ndarray]:
    """(batch, column) of each packed key row (total_k,): ragged key storage in the logical view."""
    g = geometry(problem)
    b = np.repeat(np.arange(problem.B), g.seq_k)
    return b, problem.M - g.seq_k[b] + (np.arange(len(b)) - g.cu_k[b])


# --- storage and the logical view --------------------------------------------------------------------------------

def make_storage(problem, q, k, v, rng: np.random.Generator) -> tuple[Storage, tuple]:
    """Physical storage of `problem` whose logical view is q (B, H, N, D), k, v (B, Hkv, M, .) outside the padding,
    and that view: (storage, (q, k, v, mask)) with zeros in the padding. Cache slots no sequence holds get
    standard-normal garbage from `rng` (as FlashAttention's kvcache test leaves them), so reading one is seen."""
    p, g, layout = problem, geometry(problem), parse(problem.kv)
    rows, cols = valid(p)
    q, k, v = (np.where(ok[:, None, :, None], x, 0.0) for ok, x in ((rows, q), (cols, k), (cols, v)))
    flat_k = rng.standard_normal((g.slots, p.Hkv, p.D))
    flat_v = rng.standard_normal((g.slots, p.Hkv, p.Dv))
    for b in range(p.B):
        held = np.arange(g.cache[b])
        logical = p.M - g.seq_k[b] + held
        flat_k[layout.slots(g, b, held)] = k[b, :, logical].reshape(len(held), p.Hkv, p.D)
        flat_v[layout.slots(g, b, held)] = v[b, :, logical].reshape(len(held), p.Hkv, p.Dv)
    new = p.M - p.append + np.arange(p.append)                      # appended keys: the last K of every sequence
    storage = Storage(
        q=q[_query_index(p)[0], :, _query_index(p)[1]] if layout.ragged_queries else q,
        k=layout.unflat(flat_k, p), v=layout.unflat(flat_v, p), cache_seqlens=g.cache.astype(np.int32),
        k_new=k[:, :, new].swapaxes(1, 2).copy() if p.append else None,
        v_new=v[:, :, new].swapaxes(1, 2).copy() if p.append else None,
        cu_seqlens_q=None if g.cu_q is None else g.cu_q.astype(np.int32),
        cu_seqlens_k=None if g.cu_k is None else g.cu_k.astype(np.int32),
        block_table=None if g.block_table is None else g.block_table.astype(np.int32))
    return storage, (q, k, v, view_mask(p))


def logical_view(storage: Storage, problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) read from `storage` the way the layout defines it:
    sequence b's cache slots, then its appended keys, right-aligned, zeros elsewhere. The one definition the
    harness's inputs and the pad-and-mask adapter both come from."""
    p, g, layout = problem, geometry(problem), parse(problem.kv)
    if layout.ragged_queries:
        q = np.zeros((p.B, p.H, p.N, p.D))
        q[_query_index(p)[0], :, _query_index(p)[1]] = storage.q
    else:
        q = np.array(storage.q, dtype=np.float64)
    flat_k, flat_v = layout.flat(np.asarray(storage.k)), layout.flat(np.asarray(storage.v))
    k, v = np.zeros((p.B, p.Hkv, p.M, p.D)), np.zeros((p.B, p.Hkv, p.M, p.Dv))
    for b in range(p.B):
        held = np.arange(g.cache[b])
        start = p.M - g.seq_k[b]
        k[b, :, start:start + len(held)] = flat_k[layout.slots(g, b, held)].swapaxes(0, 1)
        v[b, :, start:start + len(held)] = flat_v[layout.slots(g, b, held)].swapaxes(0, 1)
        if p.append:
            k[b, :, p.M - p.append:] = np.asarray(storage.k_new)[b].swapaxes(0, 1)
            v[b, :, p.M - p.append:] = np.asarray(storage.v_new)[b].swapaxes(0, 1)
    return q, k, v


# --- a backend's results: physical shapes and their logical view ---------------------------------------------------

def result_shapes(problem) -> dict[str, tuple]:
    """Shapes of a backend's results: out, lse (FlashAttention varlen: (H, total_q)), dq, dk, dv."""
    p, g, layout = problem, geometry(problem), parse(problem.kv)
    if not layout.ragged_queries:
        shapes = dict(out=(p.B, p.H, p.N, p.Dv), lse=(p.B, p.H, p.N), dq=(p.B, p.H, p.N, p.D))
    else:
        total = int(g.cu_q[-1])
        shapes = dict(out=(total, p.H, p.Dv), lse=(p.H, total), dq=(total, p.H, p.D))
    if layout.key == "ragged":
        total = int(g.cu_k[-1])
        return dict(shapes, dk=(total, p.Hkv, p.D), dv=(total, p.Hkv, p.Dv))
    return dict(shapes, dk=(p.B, p.Hkv, p.M, p.D), dv=(p.B, p.Hkv, p.M, p.Dv))


def to_logical(problem, name: str, x: np.ndarray) -> np.ndarray:
    """A result `name` (out, lse, dq, dk, dv) in its physical shape -> the logical view: zeros (lse: -inf) in the
    padding. Gradients are those of a layout with a backward (dense, ragged)."""
    layout = parse(problem.kv)
    if name in ("out", "lse", "dq") and layout.ragged_queries:
        b, i = _query_index(problem)
        width = {"out": problem.Dv, "dq": problem.D}.get(name)
        fill = -np.inf if name == "lse" else 0.0
        dense = np.full((problem.B, problem.H, problem.N) + ((width,) if width else ()), fill)
        dense[b, :, i] = x.T if name == "lse" else x
        return dense
    if name in ("dk", "dv") and layout.key == "ragged":
        b, j = _key_index(problem)
        dense = np.zeros((problem.B, problem.Hkv, problem.M, x.shape[-1]))
        dense[b, :, j] = x
        return dense
    return x


def to_physical(problem, name: str, x):
    """The logical (B, H, N, .) queries-side array `name` (out, lse, dq, grad_out) in its physical shape;
    NumPy arrays, torch tensors and JAX arrays alike (one advanced index keeps their type, dtype and device)."""
    if not parse(problem.kv).ragged_queries:
        return x
    b, i = _query_index(problem)
    return x[b, :, i].T if name == "lse" else x[b, :, i]


def keys_to_physical(problem, x):
    """Logical (B, Hkv, M, .) key-side gradients as the ragged key storage (total_k, Hkv, .)."""
    if parse(problem.kv).key != "ragged":
        return x
    b, j = _key_index(problem)
    return x[b, :, j]


# --- where to look, what is empty, what is wrong ------------------------------------------------------------------

def query_rows(problem) -> set[int]:
    """Logical query rows at sequence edges: each sequence's first two rows and the last (shared) rows."""
    if not needs_storage(problem):
        return set()
    start = problem.N - geometry(problem).seq_q
    return {int(r) + d for r in start for d in (-1, 0, 1)} | {problem.N - 2, problem.N - 1}


def key_rows(problem) -> set[int]:
    """Logical key columns at sequence edges, at the cache / appended boundary and both sides of every page edge."""
    if not needs_storage(problem):
        return set()
    g, layout, M = geometry(problem), parse(problem.kv), problem.M
    out = set()
    for b in range(problem.B):
        start = M - int(g.seq_k[b])
        out |= {start + d for d in (-1, 0, 1)} | {start + int(g.cache[b]) + d for d in (-1, 0)}
        step = getattr(layout, "page_size", 0)
        if step:
            out |= {start + t + d for t in range(step, int(g.seq_k[b]), step) for d in (-1, 0)}
    return {j for j in out if 0 <= j < M}


def has_empty_rows(problem, rows_empty) -> bool:
    """Whether some query of some sequence sees no key; rows_empty(N_b, M_b) answers it for one sequence."""
    g = geometry(problem)
    return any(rows_empty(int(n), int(m)) for n, m in sorted(set(zip(g.seq_q.tolist(), g.seq_k.tolist()))))


def validate(storage: Storage | None, problem, who: str) -> None:
    """Raise `AttentionInputError` naming the argument where `storage` does not hold `problem`'s layout: offsets
    that do not start at 0, are not increasing or do not add up, a block table pointing past the pool, pages of
    another size, cache lengths past their room, K, V or the appended keys of another shape."""
    if storage is None:
        raise AttentionInputError(f"{who}: kv={problem.kv}, append={problem.append} needs Inputs.kv (the storage)")
    p, g, layout = problem, geometry(problem), parse(problem.kv)
    shapes = result_shapes(p)
    want_q = shapes["dq"]
    if tuple(np.shape(storage.q)) != want_q:
        raise AttentionInputError(f"{who}: q must be {want_q} for kv={p.kv}, got {np.shape(storage.q)}")
    for name, want in (("cu_seqlens_q", g.cu_q), ("cu_seqlens_k", g.cu_k)):
        got = getattr(storage, name)
        if want is None:
            continue
        got = np.asarray(got)
        if got.shape != want.shape or got[0] != 0 or np.any(np.diff(got) < 1):
            raise AttentionInputError(f"{who}: {name} must be (B + 1,) = ({p.B + 1},), start at 0 and increase, "
                                      f"got {got.tolist()}")
        if not np.array_equal(got, want):
            total = (np.shape(storage.q) if name.endswith("q") else np.shape(storage.k))[0]
            raise AttentionInputError(f"{who}: {name} {got.tolist()} do not add up to the lengths of this problem "
                                      f"(sum {int(got[-1])}, storage holds {total})")
    seqlens = np.asarray(storage.cache_seqlens)
    if seqlens.shape != (p.B,) or not np.array_equal(seqlens, g.cache):
        raise AttentionInputError(f"{who}: cache_seqlens must be {g.cache.tolist()}, got {seqlens.tolist()}")
    if layout.key == "paged":
        table = np.asarray(storage.block_table)
        pool = tuple(np.shape(storage.k))
        for name, width in (("k", p.D), ("v", p.Dv)):
            got = tuple(np.shape(getattr(storage, name)))
            if len(got) != 4 or got[1:] != (layout.page_size, p.Hkv, width) or got[0] != pool[0]:
                raise AttentionInputError(f"{who}: {name} must be pages (num_pages, {layout.page_size}, Hkv, "
                                          f"{'D' if name == 'k' else 'Dv'}) = (num_pages, {layout.page_size}, "
                                          f"{p.Hkv}, {width}) for kv={p.kv}, k and v alike, got {got}")
        need = -(-g.seq_k // layout.page_size)
        used = np.concatenate([table[b, :need[b]] for b in range(p.B)]) if table.ndim == 2 else table
        if table.ndim != 2 or table.shape[0] != p.B or table.shape[1] < need.max():
            raise AttentionInputError(f"{who}: block_table must be (B, >= {int(need.max())} pages), got "
                                      f"{table.shape}")
        outside = used[(used < 0) | (used >= pool[0])]
        if len(outside):
            raise AttentionInputError(f"{who}: block_table points at page {int(outside[0])}, outside the pool of "
                                      f"{pool[0]} pages")
    else:
        for name in ("k", "v"):
            want, got = shapes[f"d{name}"], tuple(np.shape(getattr(storage, name)))
            if got != want:
                raise AttentionInputError(f"{who}: {name} must be {want} for kv={p.kv}, got {got}")
    for name, width in (("k_new", p.D), ("v_new", p.Dv)) if p.append else ():
        want, got = (p.B, p.append, p.Hkv, width), getattr(storage, name)
        if got is None or tuple(np.shape(got)) != want:
            raise AttentionInputError(f"{who}: {name} must be (B, K, Hkv, {'D' if name == 'k_new' else 'Dv'}) = "
                                      f"{want}, got {None if got is None else tuple(np.shape(got))}")
