"""Check one backend on one problem against the float64 reference: the one compare every suite uses.

    verdicts = check_forward(backend, problem)                 # output (+ lse if the backend returns it)
    verdicts = check_backward(backend, problem)                # dQ, dK, dV (+ d sink where declared, full checks)
    verdicts = check_forward(backend, problem, rows=[0, 63, 64, 8191])   # a verdict on chosen query rows
    verdicts = verify_forward(backend, problem, out, rows=sampled_rows(problem))   # an output already computed
    all(v.passed for v in verdicts)

The reference side is a parameter. At small sizes (N * M <= FULL_CHECK_PAIRS) every row is checked; above
that a `RowSample` of query rows (and, for dK and dV, key rows) chosen where bugs hide (`choose_rows`) is
checked against the row-sampled float64 reference (`attnbench.reference.rows`), with the same rows of the
elementwise bound and of the naive same-dtype yardstick (`attnbench.naive`): O(rows · M · D) instead of
O(N · M · D), so a check runs at the sizes kernels run at.

The call's contract is part of the compare: the output's dtype, shape and device are what the inputs imply,
and the inputs are bitwise unchanged after the call (the harness keeps pristine copies and computes the
reference, the bound and the yardstick from them). Each `Verdict` carries the worst element, its index, the
error in budget units; `failure_message` ends with the one line that reproduces it, naming the rows.
"""
from __future__ import annotations

import collections
import functools
from dataclasses import dataclass, replace

import numpy as np

from attnbench import reference
from attnbench.budget import (ACCUMULATION_DTYPE, FLUSH_THRESHOLD, UNIT_ROUNDOFF, SinkGradTerms, Verdict,
                              backward_floor, compare, finite_max, forward_floor, score_magnitude, sink_grad_bound,
                              sink_grad_terms, stored_output_terms)
from attnbench.precision import (HALF_SUBNORMAL, LeanTerms, Precision, backward_before_rounding,
                                 backward_lean_before_rounding, backward_model_bound, model_bounds)
from attnbench.naive import naive_backward, naive_forward, naive_sink_grad
from attnbench.problem import Inputs, Problem, drawn_in_dtype, make_grad_out, make_inputs
from attnbench.reference import layouts as kv_layouts
from attnbench.reference.mods.base import TILE_MAX, TILE_STEP, tile_edges as _tile_edges  # noqa: F401
from attnbench.reference.rows import sdpa_rows_with_scores
from attnbench.row_bound import (DqLeanSums, RowStats, backward_row_scales, condition_one, delta_accumulation,
                                 lse_roundings, min_normal, rounded_p_sums, row_stats, score_roundings,
                                 stored_output_squares)

# Full check up to this many (query, key) pairs per head (512 x 512): every fixed and drawn small problem.
FULL_CHECK_PAIRS = 512 * 512
RANDOM_ROWS = 16
# Inputs past this many bytes are not copied before a call (a problem past 2^31 elements: 4-8 GiB a tensor);
# a digest of their bytes shows whether the call wrote them (`inputs_contract`).
PRISTINE_COPY_BYTES = 1 << 30


@dataclass(frozen=True)
class RowSample:
    """Which rows a verdict covers: query rows (O, lse, dQ) and key rows (dK, dV); None means all."""

    query: tuple[int, ...] | None = None
    key: tuple[int, ...] | None = None

    @property
    def full(self) -> bool:
        return self.query is None and self.key is None

    def cli_args(self, backward: bool) -> str:
        """The `attnbench check` options that select these rows ("" for a full check)."""
        out = "" if self.query is None else " --rows " + ",".join(map(str, self.query))
        return out + ("" if self.key is None or not backward else " --key-rows " + ",".join(map(str, self.key)))


class Verdicts(list):
    """A list of `Verdict`s that remembers the rows it covers (for the repro line), the declared known
    deviations it was judged inside (`attnbench.deviations`: one line each, empty when none applied) and what
    the backend returned that no verdict judged (`unjudged`: one line each, with the reason)."""

    def __init__(self, items, rows: RowSample, notes: list[str] | None = None, unjudged: list[str] | None = None):
        super().__init__(items)
        self.rows = rows
        self.notes = notes or []
        self.unjudged = unjudged or []


def _judged(backend, problem: Problem, device: str, verdicts: list[Verdict], sample: RowSample, *,
            backward: bool, unjudged: list[str] | None = None) -> Verdicts:
    """The verdicts with declared known deviations re-labelled (`deviations.judge`), so `attnbench check`,
    every conformance test and perf give one problem the same verdict."""
    from attnbench.deviations import judge

    judged, notes = judge(backend.name, device, problem, verdicts, backward=backward)
    return Verdicts(judged, sample, notes, unjudged)


def one_per_tile(length: int, rng: np.random.Generator) -> set[int]:
    """One random index in every TILE_STEP-long tile of 0..length: every tile of every size 16..256 holds one.

    The rows are shared by every (batch, head), so each (batch, head, tile) block of any launch grid has a
    checked row: a kernel that loses one block anywhere (a persistent scheduler's off-by-one) fails. Cost:
    length / 16 more rows, so the row-sampled reference does 1/16 of the full O(N M D) work at length.
    """
    starts = np.arange(0, length, TILE_STEP)
    return set((starts + rng.integers(0, np.minimum(TILE_STEP, length - starts))).tolist())


def sequence_spans(problem: Problem, side: str) -> set[tuple[int, int]]:
    """(start, length) in the logical view of each sequence's own query rows (side "query": ragged queries
    only) or key rows ("key": any layout with storage); empty for a dense problem, whose tiles are the view's."""
    if not kv_layouts.needs_storage(problem):
        return set()
    g = kv_layouts.geometry(problem)
    if side == "query":
        if not kv_layouts.parse(problem.kv).ragged_queries:
            return set()
        return {(problem.N - int(n), int(n)) for n in g.seq_q}
    return {(problem.M - int(m), int(m)) for m in g.seq_k}


def _per_sequence_tiles(spans: set[tuple[int, int]], rng: np.random.Generator) -> set[int]:
    """Tile edges and one row in every 16-row tile of each sequence, in its own coordinates: a kernel reading
    a layout tiles every sequence from its own first row (FlashAttention varlen, a block table's first page), so
    the logical view's tiles, which `one_per_tile` covers, are not its tiles. Cost: up to B / 16 of each
    sequence's rows more."""
    rows = set()
    for start, length in sorted(spans):
        if length > 0:
            rows |= {start + i for i in _tile_edges(length) | one_per_tile(length, rng) if 0 <= i < length}
    return rows


def _mods(problem: Problem, inputs: Inputs | None) -> tuple:
    """The modifications whose edges the row sampling asks for: bound, with the input mask, where inputs are
    given (`Inputs.reference_mods`), else the problem's (`Problem.reference_mods`)."""
    return problem.reference_mods if inputs is None else inputs.reference_mods(problem)


def choose_rows(problem: Problem, inputs: Inputs | None = None, *, seed: int = 0) -> np.ndarray:
    """Query rows where bugs hide: first and last, both sides of every tile boundary a kernel might use (in N),
    where each modification's edges fall (`query_rows`; causal: the rows whose last visible key sits on a key-tile
    boundary, around the diagonal and the first query that sees a key under bottom_right; the input mask: its
    fully masked rows), each sequence's first rows, one row in every 16-row tile (`one_per_tile`), and
    RANDOM_ROWS random rows."""
    N = problem.N
    rows = {0, 1, N - 2, N - 1} | _tile_edges(N) | one_per_tile(N, np.random.default_rng(seed + 7))
    for mod in _mods(problem, inputs):                                        # where each one's edges fall (causal:
        rows |= mod.query_rows(problem)                                       # its diagonal; a mask: empty rows)
    rows |= kv_layouts.query_rows(problem)                                    # each sequence's first rows
    rows |= _per_sequence_tiles(sequence_spans(problem, "query"), np.random.default_rng(seed + 11))
    rows |= set(np.random.default_rng(seed).integers(0, N, RANDOM_ROWS).tolist())
    return np.array(sorted(r for r in rows if 0 <= r < N))


def choose_key_rows(problem: Problem, inputs: Inputs | None = None, *, seed: int = 1) -> np.ndarray:
    """Key rows for dK, dV: first and last, both sides of every key-tile boundary, where each modification's edges
    fall (`key_rows`; causal: the keys on the diagonal of the first and last query; key padding: its edges),
    sequence and page edges, one key in every 16-key tile, and RANDOM_ROWS random keys."""
    M = problem.M
    keys = {0, 1, M - 2, M - 1} | _tile_edges(M) | one_per_tile(M, np.random.default_rng(seed + 7))
    for mod in _mods(problem, inputs):
        keys |= mod.key_rows(problem)
    keys |= kv_layouts.key_rows(problem)                                      # sequence, page and append edges
    keys |= _per_sequence_tiles(sequence_spans(problem, "key"), np.random.default_rng(seed + 11))
    keys |= set(np.random.default_rng(seed).integers(0, M, RANDOM_ROWS).tolist())
    return np.array(sorted(j for j in keys if 0 <= j < M))


def default_rows(problem: Problem, inputs: Inputs | None = None) -> RowSample:
    """All rows at small sizes; a `sampled_rows` sample above FULL_CHECK_PAIRS."""
    if problem.N * problem.M <= FULL_CHECK_PAIRS:
        return RowSample()
    return sampled_rows(problem, inputs)


def sampled_rows(problem: Problem, inputs: Inputs | None = None) -> RowSample:
    """The `choose_rows` query rows and `choose_key_rows` key rows of `problem`, whatever its size."""
    return RowSample(tuple(choose_rows(problem, inputs, seed=problem.seed).tolist()),
                     tuple(choose_key_rows(problem, inputs, seed=problem.seed + 1).tolist()))


def _as_rows(rows, problem: Problem, inputs: Inputs | None) -> RowSample:
    if rows is None:
        return default_rows(problem, inputs)
    if isinstance(rows, RowSample):
        return rows
    if isinstance(rows, str) and rows == "all":
        return RowSample()
    return RowSample(tuple(int(r) for r in rows), None)


def _indices(selected: tuple[int, ...] | None, length: int) -> np.ndarray:
    return np.arange(length) if selected is None else np.asarray(selected, dtype=np.int64)


def repro_command(backend_name: str, problem: Problem, device: str = "cpu", *, backward: bool = False,
                  rows: RowSample | None = None) -> str:
    """A shell line that re-runs this exact check (on the same rows)."""
    extra = " --backward" if backward else ""
    extra += rows.cli_args(backward) if rows is not None else ""
    return f'attnbench check {backend_name} --problem "{problem.spec()}" --device {device}{extra}'


def reference_bias(inputs: Inputs, problem: Problem):
    """The float64 additive bias the reference uses, broadcastable to (B, H, N, M): the input mask's bias, and -inf
    wherever a masking modification (causal, a window, a bool mask, a document boundary, ...) hides the key
    (`mods.mask_bias`). Forms (N, M): full checks."""
    from attnbench.reference import mods as modifications
    from attnbench.reference.block import block_of

    p = problem
    bias = modifications.mask_bias(inputs.reference_mods(p), block_of(np.arange(p.N), np.arange(p.M), p.N, p.M,
                                                                        p.H, p.Hkv))
    if np.ndim(bias) < 5:                              # 0.0, or (N, M) from masks that are the same on every head
        return bias
    if bias.shape[1] * bias.shape[2] not in (1, p.H):  # grouped (B|1, Hkv|1, G|1, N|1, M) -> (B|1, H|1, N|1, M)
        bias = np.broadcast_to(bias, (bias.shape[0], p.Hkv, p.H // p.Hkv, *bias.shape[3:]))
    return bias.reshape(bias.shape[0], bias.shape[1] * bias.shape[2], *bias.shape[3:])


def _with_modifications(score_max: float, inputs: Inputs, problem: Problem) -> float:
    """`budget.score_magnitude` with the modifications' share: the largest bias they add (ALiBi) and the widening
    of their extra roundings (as `row_bound.row_stats` does). Forms (N, M): full checks only."""
    if not inputs.mods:
        return score_max
    from attnbench.reference import mods as modifications
    from attnbench.reference.block import block_of

    p = problem
    whole = block_of(np.arange(p.N), np.arange(p.M), p.N, p.M, p.H, p.Hkv)
    added = np.asarray(modifications.magnitude(np.zeros((1, 1, 1, p.N, p.M)), inputs.mods, whole))
    widen = (np.sqrt(p.D) + 2 + modifications.extra_roundings(inputs.mods)) / (np.sqrt(p.D) + 2)
    return widen * (score_max + float(np.max(added, initial=0.0)))


def _effective_scale(problem: Problem) -> float:
    return 1.0 / np.sqrt(problem.D) if problem.scale is None else problem.scale


# --- the reference side: float64 reference, elementwise bound and naive yardstick on the chosen rows ----------

@dataclass(frozen=True)
class ForwardReference:
    """Rows R of: expected O (B, H, R, Dv) and lse (B, H, R), their bounds, the naive same-dtype O, and the
    per-row sums (`RowStats`, grouped (B, Hkv, G, R[, Dv])) a declared precision's bound is built from."""

    out: np.ndarray
    lse: np.ndarray
    out_bound: np.ndarray
    lse_bound: np.ndarray
    naive: np.ndarray
    stats: RowStats

    def model_bounds(self, precision: Precision, problem: Problem, lse_dtype: str):
        """(O bound (B, H, R, Dv), lse bound (B, H, R)) under `precision` (`attnbench.precision.model_bounds`)."""
        p, shape = problem, self.stats.p_sum.shape
        out, lse = model_bounds(self.stats, self.out.reshape(*shape, -1), self.lse.reshape(shape),
                                precision=precision, dtype=p.dtype, D=p.D, M=p.M, lse_dtype=lse_dtype)
        return out.reshape(self.out.shape), lse.reshape(self.lse.shape)

    def with_rounded_p(self, inputs: Inputs, problem: Problem, rows: RowSample) -> "ForwardReference":
        """This reference with the row sums a declared P rounded to the input dtype needs (`rounded_p_sums`, one
        more pass over the keys), for a reference made without them."""
        if self.stats.rounded_p:
            return self
        p, qr = problem, _indices(rows.query, problem.N)
        sums = rounded_p_sums(inputs.q, inputs.k, inputs.v, self.lse, qr, scale=_effective_scale(p),
                              mods=inputs.reference_mods(p))
        return replace(self, stats=self.stats.with_rounded_p(**sums))


def forward_reference(inputs: Inputs, problem: Problem, rows: RowSample, *, rounded_p: bool = False
                      ) -> ForwardReference:
    """The reference side of `check_forward` on query rows `rows.query` (pristine inputs). rounded_p: with the
    row sums only a backend declaring P rounded to its input dtype needs (two more products of every row with
    V; `ForwardReference.with_rounded_p` adds them later)."""
    p = problem
    qr = _indices(rows.query, p.N)
    # The row statistics read the scores the reference computed (where they fit: `KEEP_SCORES_ELEMENTS`).
    out, lse, blocks = sdpa_rows_with_scores(inputs.q, inputs.k, inputs.v, qr, **inputs.reference_kwargs(p))
    stats = row_stats(inputs.q, inputs.k, inputs.v, lse, qr, scale=_effective_scale(p), mods=inputs.reference_mods(p),
                      tiny=FLUSH_THRESHOLD[p.dtype], min_normal=min_normal(p.dtype), blocks=blocks,
                      rounded_p=rounded_p)
    shape = stats.p_sum.shape                                                    # (B, Hkv, G, R)
    out_bound, lse_bound_ = condition_one(stats, out.reshape(*shape, -1), lse.reshape(shape), dtype=p.dtype,
                                          D=p.D, M=p.M)
    return ForwardReference(out, lse, out_bound.reshape(out.shape), lse_bound_.reshape(lse.shape),
                            naive_forward(inputs, p, qr), stats)


# Every backend checked on one problem shares its reference side (make_inputs is deterministic): the last 16.
_FORWARD_REFERENCES: collections.OrderedDict = collections.OrderedDict()
FORWARD_REFERENCES_KEPT = 16


def _cached_forward_reference(problem: Problem, rows: RowSample, *, rounded_p: bool = False,
                              inputs: Inputs | None = None) -> ForwardReference:
    """`forward_reference` of `make_inputs(problem)`, made once per (problem, rows) and shared; a reference
    made without the rounded-P sums gets them added the first time a backend needs them. inputs: pristine
    copies of make_inputs(problem) where the caller has them (saves making them again), else None."""
    key = (problem, rows)
    ref = _FORWARD_REFERENCES.pop(key, None)
    if ref is None:
        ref = forward_reference(make_inputs(problem) if inputs is None else inputs, problem, rows,
                                rounded_p=rounded_p)
    elif rounded_p:
        ref = ref.with_rounded_p(make_inputs(problem) if inputs is None else inputs, problem, rows)
    _FORWARD_REFERENCES[key] = ref
    while len(_FORWARD_REFERENCES) > FORWARD_REFERENCES_KEPT:
        _FORWARD_REFERENCES.popitem(last=False)
    return ref


def _rounded_p(backend, problem: Problem, device: str) -> bool:
    """Whether the backend declares P rounded to the input dtype for this problem's dtype."""
    precision = backend.capabilities(device).precision_for(problem.dtype)
    return precision is not None and precision.p_rounded


def backward_magnitudes(inputs: Inputs, problem: Problem, grad_out: np.ndarray, forward) -> tuple[float, float, float]:
    """Largest sum of |terms| behind one element of dQ, dK and dV (`magnitude_terms`, maximised)."""
    return tuple(finite_max(m) for m in magnitude_terms(inputs, problem, grad_out, forward))


def magnitude_terms(inputs: Inputs, problem: Problem, grad_out: np.ndarray, forward) -> tuple[np.ndarray, ...]:
    """Sum of |terms| behind each element of dQ, dK and dV: the magnitude rounding is relative to.

    With P (B, H, N, M), dP = dO V^T and delta = rowsum(dO * O) (B, H, N):
        dQ = scale [P (dP - delta)] K      terms  scale P (|dO| |V|^T + |delta|) |K|
        dK = scale [P (dP - delta)]^T Q    terms  scale (...)^T |Q|, summed over the query heads of a KV head
        dV = P^T dO                        terms  P^T |dO|, likewise summed
    Full checks only: it forms (N, M). It matters where a gradient is identically zero (M = 1, ...; see
    `budget`), which only tiny problems are; a row-sampled check passes magnitude None (floor relative to
    max|gradient|, never looser). forward: (O, P) of the reference (`reference.sdpa(..., return_weights=True)`).
    """
    q, k, v = inputs.q, inputs.k, inputs.v
    out, p = forward
    group = problem.H // problem.Hkv
    kr, vr = (np.repeat(x, group, axis=1) for x in (k, v))                      # (B, H, M, .)
    delta = np.abs(np.sum(grad_out * out, axis=-1, keepdims=True))             # (B, H, N, 1)
    terms = p * (np.abs(grad_out) @ np.abs(vr).swapaxes(-1, -2) + delta)       # (B, H, N, M)
    scale = abs(_effective_scale(problem))

    def per_kv_head(x):                                                        # (B, H, M, .) -> (B, Hkv, M, .)
        return x.reshape(problem.B, problem.Hkv, group, *x.shape[2:]).sum(axis=2)

    mq = scale * (terms @ np.abs(kr))
    mk = scale * per_kv_head(terms.swapaxes(-1, -2) @ np.abs(q))
    mv = per_kv_head(p.swapaxes(-1, -2) @ np.abs(grad_out))
    return mq, mk, mv


@dataclass(frozen=True)
class GradientScale:
    """What a declared precision's backward bound needs of one gradient (full checks only; see
    `attnbench.precision.backward_model_bound`)."""

    terms_max: float          # largest sum of |terms| behind one element
    rounded_rms: float        # largest root-sum-of-squares of the rounded GEMM operand's terms behind one element
    rounded_count: int        # rounded terms per element
    operand_max: float        # largest |other GEMM operand|
    result_max: float         # max |gradient| of the reference
    stored_output: float      # `budget.stored_output_floor`'s share
    score_max: float          # `budget.score_magnitude`
    # (terms, rounded root-sum-of-squares, stored-output share) of each element, the gradient's shape (checked rows):
    # the lean test's slack per element (`BackwardReference.lean_slacks`); None: the scalars' (worst element's).
    elementwise: tuple | None = None
    # dQ, dK on full checks: the tighter per-element coefficients of `lean_gradient_terms`; None elsewhere.
    lean: "LeanTerms | None" = None


@dataclass(frozen=True)
class BackwardReference:
    """dQ at the query rows, dK and dV at the key rows: expected, naive same-dtype, and the floor magnitudes."""

    expected: tuple[np.ndarray, np.ndarray, np.ndarray]
    naive: tuple[np.ndarray, np.ndarray, np.ndarray]
    magnitudes: tuple[float | None, float | None, float | None]
    floors: tuple[float | None, float | None, float | None] = (None, None, None)   # budget floor (b), full only
    scales: tuple[GradientScale, ...] | None = None                 # on the checked rows
    sink: SinkGradTerms | None = None     # d sink (H,) and its bound's terms: full checks with sinks only
    sink_naive: np.ndarray | None = None  # d sink (H,) of the plain formula in the dtype (condition 2): likewise

    def lean_slacks(self, precision: Precision | None, problem: Problem) -> tuple:
        """Per element of dQ, dK, dV (full checks), the declared model's error before the gradient's own rounding
        (`precision.backward_before_rounding` on each element's terms): the lean test leaves out an element only
        when its exact value lies that close to a rounding boundary. None each where nothing is declared or the
        check is row-sampled (the scalar bound's share then, the worst element's)."""
        if precision is None or precision.grad_accumulate is None or self.scales is None:
            return (None, None, None)
        p, u = problem, UNIT_ROUNDOFF[problem.dtype]
        slacks = []
        for g in self.scales:
            if g.elementwise is None:
                slacks.append(None)
                continue
            terms, rms, stored = g.elementwise
            inner = backward_before_rounding(precision, p.dtype, D=p.D, Dv=p.Dv, length=max(p.N, p.M),
                                             score_max=g.score_max, terms=terms, rounded_rms=rms,
                                             rounded_count=g.rounded_count, operand_max=g.operand_max,
                                             stored_output=stored)
            if g.lean is None:
                slacks.append(inner * (1 + u) + HALF_SUBNORMAL[p.dtype])
                continue
            # Two bounds of one error, each side: the smaller holds (NaN, a non-finite row: the other's).
            below, above = backward_lean_before_rounding(precision, p.dtype, g.lean, rounded_rms=rms,
                                                         rounded_count=g.rounded_count, operand_max=g.operand_max)
            slacks.append(tuple(np.fmin(inner, side) * (1 + u) + HALF_SUBNORMAL[p.dtype] for side in (below, above)))
        return tuple(slacks)

    def model_bounds(self, precision: Precision | None, problem: Problem) -> tuple:
        """The declared-precision bound of dQ, dK, dV (None each where nothing is declared)."""
        if precision is None or precision.grad_accumulate is None or self.scales is None:
            return (None, None, None)
        p = problem
        return tuple(backward_model_bound(precision, p.dtype, D=p.D, Dv=p.Dv, length=max(p.N, p.M),
                                          score_max=g.score_max, terms_max=g.terms_max, rounded_rms=g.rounded_rms,
                                          rounded_count=g.rounded_count, operand_max=g.operand_max,
                                          result_max=g.result_max, stored_output=g.stored_output)
                     for g in self.scales)


def backward_reference(inputs: Inputs, problem: Problem, grad_out: np.ndarray, rows: RowSample) -> BackwardReference:
    """The reference side of `check_backward` (pristine inputs)."""
    p = problem
    qr, kr = _indices(rows.query, p.N), _indices(rows.key, p.M)
    kwargs = inputs.reference_kwargs(p)
    floors, scales = (None, None, None), None
    sink = sink_naive = None
    if rows.full:
        *expected, dsink = reference.sdpa_backward(inputs.q, inputs.k, inputs.v, grad_out, return_sink_grad=True,
                                                   **kwargs)
        out, weights, lse = reference.sdpa(inputs.q, inputs.k, inputs.v, return_weights=True, return_lse=True,
                                           **kwargs)                                   # the forward, once
        forward = (out, weights)
        terms = magnitude_terms(inputs, p, grad_out, forward)
        magnitudes = tuple(finite_max(m) for m in terms)
        floors, scales = backward_floors(inputs, p, grad_out, expected, magnitudes, forward, lse, terms=terms)
        if p.mod("sinks") is not None:
            sink = sink_grad_reference(inputs, p, grad_out, forward, dsink)
            sink_naive = naive_sink_grad(inputs, p, grad_out)
    else:
        expected = reference.sdpa_backward_rows(inputs.q, inputs.k, inputs.v, grad_out, qr, kr, **kwargs)
        magnitudes = (None, None, None)
        scales = row_gradient_scales(inputs, p, grad_out, expected, qr, kr)
    return BackwardReference(tuple(expected), naive_backward(inputs, p, grad_out, qr, kr), magnitudes, floors,
                             scales, sink, sink_naive)


def sink_grad_reference(inputs: Inputs, problem: Problem, grad_out: np.ndarray, forward, dsink: np.ndarray):
    """`budget.SinkGradTerms` of the reference's d sink (full checks only: it sums over every row). Each row's
    score size is its largest visible score magnitude (`block.magnitude`: ALiBi's bias and the softcap's
    roundings included)."""
    from attnbench.reference import mods as modifications
    from attnbench.reference.block import magnitude
    from attnbench.reference.sdpa import group_queries, ungroup

    p = problem
    out, weights = forward
    _, lse = reference.sdpa(inputs.q, inputs.k, inputs.v, return_lse=True, **inputs.reference_kwargs(p))
    logits = np.asarray(next(m for m in inputs.mods if m.key == "sinks").logits, dtype=np.float64)   # (H,)
    t, visible = magnitude(group_queries(inputs.q, p.Hkv), inputs.k, np.arange(p.N), np.arange(p.M),
                           mods=inputs.reference_mods(p), N=p.N, M=p.M, scale=_effective_scale(p))
    roundings = np.sqrt(p.D) + 2 + modifications.extra_roundings(inputs.mods)
    size = ungroup(roundings * np.max(np.where(visible, t, 0.0), axis=-1, initial=0.0))      # (B, H, N)
    p_sink = np.exp(logits[None, :, None] - lse)
    return sink_grad_terms(weights, p_sink, inputs.v, grad_out, out, logits, dsink,
                           np.broadcast_to(size, p_sink.shape), p.dtype)


def row_gradient_scales(inputs: Inputs, problem: Problem, grad_out: np.ndarray, expected, query_rows,
                        key_rows) -> tuple[GradientScale, ...]:
    """`GradientScale` of dQ, dK, dV on the checked rows of a row-sampled check (`row_bound.backward_row_scales`):
    a declared precision holds its backward there too, not only at the full-check sizes; with each checked
    element's own terms, the lean test's slack per element there too."""
    p = problem
    per_gradient, score_max, each, lean_q = backward_row_scales(
        inputs.q, inputs.k, inputs.v, grad_out, query_rows, key_rows, scale=_effective_scale(p), dtype=p.dtype,
        mods=inputs.reference_mods(p), elementwise=True)

    def finite(x):
        return np.where(np.isfinite(x), x, 0.0)

    return tuple(GradientScale(terms, rms, count, operand, finite_max(e), stored, score_max,
                               elementwise=(finite(t), finite(r), finite(st)), lean=lean)
                 for (terms, rms, count, operand, stored), e, (t, r, st), lean in zip(per_gradient, expected, each,
                                                                                    (lean_q, None, None)))


def rounded_operands(inputs: Inputs, problem: Problem, grad_out: np.ndarray,
                     forward) -> tuple[tuple[float, int, float], ...]:
    """Per gradient (dQ, dK, dV): (largest root-sum-of-squares of the rounded operand's terms behind one element,
    terms per element, largest |other operand|) (`rounded_operand_terms`, maximised)."""
    return tuple((finite_max(rms), count, operand)
                 for rms, count, operand in rounded_operand_terms(inputs, problem, grad_out, forward))


def rounded_operand_terms(inputs: Inputs, problem: Problem, grad_out: np.ndarray, forward) -> tuple[tuple, ...]:
    """Per gradient (dQ, dK, dV): (root-sum-of-squares of the rounded operand's terms behind each element (finite;
    0 elsewhere), terms per element, largest |other operand|), for a backward that rounds dS (dQ = scale dS K,
    dK = scale dS^T Q) and P (dV = P^T dO) to the input dtype. Forms (B, H, N, M): full checks only. forward:
    (O, P)."""
    q, k, v = inputs.q, inputs.k, inputs.v
    out, p = forward
    group = problem.H // problem.Hkv
    kr, vr = (np.repeat(x, group, axis=1) for x in (k, v))                      # (B, H, M, .)
    delta = np.sum(grad_out * out, axis=-1, keepdims=True)                      # (B, H, N, 1)
    ds = p * (grad_out @ vr.swapaxes(-1, -2) - delta)                           # (B, H, N, M)
    scale = abs(_effective_scale(problem))

    def per_kv_head(x):                                                        # (B, H, M, .) -> (B, Hkv, M, .)
        return x.reshape(problem.B, problem.Hkv, group, *x.shape[2:]).sum(axis=2)

    def root(x) -> np.ndarray:
        return np.sqrt(np.where(np.isfinite(x), x, 0.0))

    def top(x) -> float:
        return float(np.max(np.abs(np.where(np.isfinite(x), x, 0.0)), initial=0.0))

    rq = scale * root((ds * ds) @ (kr * kr))
    rk = scale * root(per_kv_head((ds * ds).swapaxes(-1, -2) @ (q * q)))
    rv = root(per_kv_head((p * p).swapaxes(-1, -2) @ (grad_out * grad_out)))
    N, M = problem.N, problem.M
    return ((rq, M, scale * top(k)), (rk, N * group, scale * top(q)), (rv, N * group, top(grad_out)))


def lean_gradient_terms(inputs: Inputs, problem: Problem, grad_out: np.ndarray, forward,
                        lse: np.ndarray) -> tuple[LeanTerms | None, LeanTerms | None]:
    """(dQ, dK) `LeanTerms`: each element's own pre-rounding error under a declared precision, for the lean test.

    Why: the declared model's bound (`precision.backward_before_rounding`) takes every score's error as the
    largest, T_max (sqrt(D) + 2) for all, adds the errors behind an element as absolute values (the sum of |terms|,
    P (|dO| |V|^T + |delta|) |K|, ~50 times |dQ|), and delta from the stored O as u sum |dO| |O| moving every dS
    of a row the same way: 15 float16 ulps of dQ, 22 of dK at the median (B 1, H 4, Hkv 2, N = M = 128, D 64);
    no element of either was left to the lean test. The errors behind one element are many independent
    roundings (the probabilistic model of Higham & Mary, as `precision` takes P's rounding): their sum stays within
    LAMBDA u sqrt(sum of squared coefficients) (Hoeffding), with the coefficients of each one, first order, here.

    With P (B, H, N, M), dP = dO V^T, delta_n = rowsum(dO O) = sum_m P dP, d = dP - delta, dS = P d,
    dQ_n = scale sum_m dS_nm K_m, dK_m = scale sum_n dS_nm Q_n (summed over the group):

    scores: S_nm off by eps_nm = u_s sum_j delta_j x_j over its roundings, sum_j x_j^2 <= sigma_nm^2,
        sigma = (sqrt(D) + 2) T_nm (the dot's D roundings and the scale and bias, each within T) + 3 |S - lse|
        (the subtraction, the log2 e scaling of an exp2) + 5 (exp itself within two float32 ulps, a division by l).
        P_m moves by
        P_m (eps_m - eps_bar) with eps_bar = sum P eps (the normaliser), delta by sum_m P_m (eps_m - eps_bar) dP_m,
        so dQ_ne / scale by sum_m eps_m P_m (d_m K_me - a_e - b_e d_m), a_e = (P d K)_e = dQ_ne / scale,
        b_e = (P K)_e. A kernel that recomputes S in its backward and takes lse (eps_bar) and O (delta) from its
        forward has other, independent eps for the last two groups; the coefficient (|d_m K_me| + |a_e| +
        |b_e| |d_m|) bounds either: variance V_Q = sum_m sigma^2 P^2 (|d K| + |a| + |b| |d|)^2. dK_me: per query n
        (independent rows), the coefficient of eps_nm' is Q_ne P_nm ([m' = m] d_m - P_m' (d_m + d_m')) at most in
        size, so V_K = sum_n Q_ne^2 (sigma^2 P^2 d^2 (1 + 4 P) + P^2 (d^2 Z0 + 2 |d| Z1 + Z2)), Z_k =
        sum_m' sigma^2 P^2 |d|^k of row n. Both times LAMBDA scale sqrt(V).
    lse and the normaliser's own roundings (the row sum over M, its rescalings, log l <= log M, the add m +
        log l, a sink logit): one relative error of all of a row's P, coefficient r_n = sqrt(M) + 4 + log M +
        2 |lse_n| + |sink|: dQ by r_n (|a| + |delta| |b|),
        dK by its root-sum-of-squares over the rows, LAMBDA times.
    accumulation (u_g): dP_nm's sum over Dv, rho = (sqrt(Dv) + 2) sum_e |dO| |V|, enters dS directly and through
        delta = sum P dP: dQ LAMBDA scale sqrt(sum_m rho^2 P^2 (|K_me| + |b_e|)^2), dK LAMBDA scale
        sqrt(sum_n Q^2 P^2 (rho^2 + sum_m' rho^2 P^2)); delta from O instead: its sum over Dv and O's over M,
        kappa_n = (sqrt(Dv) + 2) sum |dO| |O| + (sqrt(M) + 2) sum_e |dO_e| (P |V|)_e, one per row; the GEMM over
        M (dQ) or the N G queries (dK), a recursive sum of L terms, (LAMBDA (sqrt(L) + 2) + 3) scale sum |dS| |K|
        (or |Q|) (Higham & Mary's sum of |terms|, the order unknown; 3: dS's product and difference, the scale).
    stored (u_in): delta formed from O as stored, rounded to the dtype (FlashAttention): e_n = sum_e dO_ne
        (round(O_ne) - O_ne), independent roundings of size u_in |O| (u_in the smallest normal below it), moves dQ_ne
        by -scale e_n (P K)_e: LAMBDA scale |b_e| sqrt(sum_e dO^2 O^2); dK_me by -scale sum_n e_n P_nm Q_ne,
        independent over n: LAMBDA scale sqrt(sum_n P^2 Q^2 sum_e dO^2 O^2). That is a bound on a move the
        reference can compute: where the forward is float32 (its error before O's rounding within
        f = LAMBDA u_32 ((sqrt(D) + 2) T_seen (P |V| + |O|) + (sqrt(M) + 2) P |V|), as `precision.model_bounds`),
        round(O) is the reference's O rounded to nearest except at elements within f of a rounding boundary,
        which may round to the value across it instead: e_n lies in e^_n + [lo_n, hi_n], the sums of those moves
        dO_ne (across - round(O_ne)) of either sign, and `shift_low`, `shift_high` are the least and the most
        the gradient moves then. The kernel's result before its rounding then lies
        between the exact value (delta from a float32 O or from P dP) and the exact value moved so, within the
        rest: a one-sided interval (`budget.lean`) where the bound was a symmetric one of about a float16 ulp.

    None each where a modification multiplies dS by its derivative (softcap, `extra_roundings`): not derived here,
    the declared model's own per-element share stands; and outside the lean test's dtypes (float16, bfloat16).
    Forms (B, H, N, M): full checks only. forward: (O, P) and lse (B, H, N) of the reference (one `sdpa` call).
    Non-finite rows leave NaN (the other bound then stands).
    """
    from attnbench.budget import LAMBDA, LEAN_DTYPES
    from attnbench.reference import mods as modifications
    from attnbench.reference.block import magnitude

    if modifications.extra_roundings(inputs.mods) or problem.dtype not in LEAN_DTYPES:   # no lean test elsewhere
        return None, None
    p = problem
    B, H, Hkv, N, M, D, Dv = p.B, p.H, p.Hkv, p.N, p.M, p.D, p.Dv
    G, scale = H // Hkv, abs(_effective_scale(p))
    q, k, v = inputs.q, inputs.k, inputs.v
    out, weights = forward
    t, _ = magnitude(q.reshape(B, Hkv, G, N, D), k, np.arange(N), np.arange(M), mods=inputs.reference_mods(p),
                     N=N, M=M, scale=_effective_scale(p))
    t = np.broadcast_to(t, (B, Hkv, G, N, M)).reshape(B, H, N, M)
    kr, vr = (np.repeat(x, G, axis=1) for x in (k, v))                         # (B, H, M, .)
    w = weights
    sigma_w2 = score_roundings(t, w, D) ** 2                                   # (sigma P)^2
    delta = np.sum(grad_out * out, axis=-1, keepdims=True)                     # (B, H, N, 1)
    d = grad_out @ vr.swapaxes(-1, -2) - delta
    ad, abs_q = np.abs(d), np.abs(q)

    def rowsum(x):
        return np.sum(x, axis=-1, keepdims=True)

    def per_kv_head(x):                                                       # (B, H, M, .) -> (B, Hkv, M, .)
        return x.reshape(B, Hkv, G, *x.shape[2:]).sum(axis=2)

    def over_queries(x, operand):                                             # sum_n x_nm operand_ne, over groups
        return per_kv_head(x.swapaxes(-1, -2) @ operand)

    sink = next((np.abs(np.asarray(m.logits, dtype=np.float64)) for m in inputs.mods if m.key == "sinks"), None)
    gv = np.abs(grad_out) @ np.abs(vr).swapaxes(-1, -2)                       # sum_e |dO| |V| (B, H, N, M)
    sums = DqLeanSums()
    sums.add(w, t, d, gv, kr, vr, D=D, Dv=Dv)
    lean_q = sums.terms(out=out, lse=lse, grad_out=grad_out, scale=scale, dtype=p.dtype, M=M, Dv=Dv,
                        sink=None if sink is None else sink[None, :, None])
    # dK (every query row: full checks only), the same way, per query row n summed over the rows
    x1, x2 = sigma_w2 * d * d, sigma_w2 * ad
    z0, z1, z2 = rowsum(sigma_w2), rowsum(x2), rowsum(x1)
    var_k = over_queries(x1 * (1 + 4 * w) + w * w * (d * d * z0 + 2 * ad * z1 + z2), q * q)
    r = lse_roundings(lse, M, sink=None if sink is None else sink[None, :, None])[..., None]   # (B, H, N, 1)
    scores_k = LAMBDA * scale * (np.sqrt(var_k) + np.sqrt(over_queries((r * w * (ad + np.abs(delta))) ** 2, q * q)))
    rho_w2 = ((np.sqrt(Dv) + 2) * gv * w) ** 2
    kappa = delta_accumulation(out, grad_out, sums.sums["mass"], M=M, Dv=Dv)
    acc_k = (LAMBDA * scale * (np.sqrt(over_queries(w * w * rowsum(rho_w2) + rho_w2, q * q))
                               + np.sqrt(over_queries((kappa * w) ** 2, q * q)))
             + (LAMBDA * (np.sqrt(N * G) + 2) + 3) * scale * over_queries(np.abs(w * d), abs_q))
    stored_k = LAMBDA * scale * np.sqrt(over_queries(w * w * stored_output_squares(out, grad_out, p.dtype), q * q))
    e_hat, lo, hi = sums.stored_output_move(out, grad_out, dtype=p.dtype, M=M)    # (B, H, N, 1) each
    up, down = np.maximum(q, 0.0), np.minimum(q, 0.0)                         # -scale sum_n e_n P_nm Q_ne, e_n in
    base = over_queries(e_hat * w, q)                                          # e^_n + [lo_n, hi_n]
    low_k = -scale * (base + over_queries(hi * w, up) + over_queries(lo * w, down))
    high_k = -scale * (base + over_queries(lo * w, up) + over_queries(hi * w, down))
    return lean_q, LeanTerms(scores_k, acc_k, stored_k, low_k, high_k)


def backward_floors(inputs: Inputs, problem: Problem, grad_out: np.ndarray, expected, magnitudes, forward,
                    lse: np.ndarray, *, terms=None) -> tuple:
    """Budget floor (b) of dQ, dK, dV (`budget.backward_floor` + `budget.stored_output_floor`) and what a declared
    precision's bound needs (`GradientScale` each); full checks only (it forms (N, M)); a row-sampled check keeps
    floor (a) alone, never looser. terms: `magnitude_terms` if already formed (else formed here)."""
    p, scale = problem, _effective_scale(problem)
    scores = score_magnitude(inputs.q, inputs.k, reference_bias(inputs, p), scale)
    scores = _with_modifications(scores, inputs, p)
    out, weights = forward
    stored_terms = stored_output_terms(weights, inputs.q, inputs.k, out, grad_out, scale, p.dtype)
    stored = tuple(finite_max(x) for x in stored_terms)
    terms = magnitude_terms(inputs, p, grad_out, forward) if terms is None else terms
    result_max = [finite_max(e) for e in expected]
    floors = tuple(s + backward_floor(p.dtype, D=p.D, Dv=p.Dv, length=max(p.N, p.M), score_max=scores, terms_max=m,
                                      result_max=r)
                   for s, m, r in zip(stored, magnitudes, result_max))

    def finite(x):
        return np.where(np.isfinite(x), x, 0.0)

    with np.errstate(invalid="ignore"):            # rows of non-finite inputs: NaN there, left out of the test
        lean = lean_gradient_terms(inputs, p, grad_out, forward, lse) + (None,)
    scales = tuple(GradientScale(m, finite_max(rms), count, operand, r, s, scores,
                                 elementwise=(finite(t), rms, finite(st)), lean=lt)
                   for (rms, count, operand), m, r, s, t, st, lt in zip(
                       rounded_operand_terms(inputs, p, grad_out, forward), magnitudes, result_max, stored, terms,
                       stored_terms, lean))
    return floors, scales


@functools.lru_cache(maxsize=8)
def _cached_backward_reference(problem: Problem, rows: RowSample) -> BackwardReference:
    return backward_reference(make_inputs(problem), problem, make_grad_out(problem), rows)


# --- the call's contract ------------------------------------------------------------------------------------------

class ContractVerdict(Verdict):
    """A `Verdict` on the call's contract: no numbers, only what is wrong."""

    def describe(self) -> str:
        return f"{self.name}: {'ok' if self.passed else 'FAIL'} {self.reason}"


def _contract(name: str, problems: list[str]) -> Verdict:
    ok = not problems
    return ContractVerdict(name, ok, 0.0 if ok else np.inf, (), np.nan, np.nan, None, None, None,
                           "output dtype, shape, device as the inputs imply; inputs unchanged" if ok
                           else "; ".join(problems))


def _dtype_name(value) -> str | None:
    dtype = getattr(value, "dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def output_contract(name: str, value, canonical: np.ndarray, shape: tuple, dtype: str, device: str, *,
                    check_dtype: bool = True) -> list[str]:
    """What is wrong with a native output `value` (canonical float64 view `canonical`): shape, dtype, device."""
    problems = []
    if canonical.shape != shape:
        problems.append(f"{name} shape {canonical.shape}, expected {shape}")
    got = _dtype_name(value)
    if check_dtype and got is not None and got != dtype:
        problems.append(f"{name} dtype {got}, expected {dtype} (the inputs' dtype)")
    where = getattr(getattr(value, "device", None), "type", None)              # torch tensors say where they are
    if where is not None and where != device:
        problems.append(f"{name} on device {where}, expected {device}")
    return problems


def _pristine(inputs: Inputs) -> Inputs:
    """Copies of the inputs, for the reference and the inputs contract; an input past PRISTINE_COPY_BYTES is
    itself (its `_digests` taken before the call stand in for the copy)."""
    return Inputs(*(None if x is None else x if _too_big_to_copy(x) else np.array(x, copy=True)
                    for x in (inputs.q, inputs.k, inputs.v, inputs.mask)), inputs.mods,
                  None if inputs.kv is None else inputs.kv.copy())


def _too_big_to_copy(x) -> bool:
    return np.asarray(x).nbytes > PRISTINE_COPY_BYTES


def _digests(inputs: Inputs) -> dict[str, str]:
    """{name: digest of the bytes} of q, k, v past PRISTINE_COPY_BYTES (not copied by `_pristine`)."""
    import hashlib

    return {n: hashlib.blake2b(memoryview(np.ascontiguousarray(x)).cast("B")).hexdigest()
            for n, x in (("q", inputs.q), ("k", inputs.k), ("v", inputs.v)) if _too_big_to_copy(x)}


def _native_equal(backend, native, expected: np.ndarray) -> bool:
    """A backend's converted input (B, H|Hkv, L, D) holds `expected`'s values: at once, or past
    PRISTINE_COPY_BYTES 2^23 elements (64 MiB in float64) at a time along L (its float64 view whole would be
    8-16 GiB)."""
    if not _too_big_to_copy(expected):
        values = backend.to_numpy(native)
        return values.shape == expected.shape and np.array_equal(values, expected, equal_nan=True)
    if tuple(native.shape) != expected.shape:
        return False
    B, H, L, D = expected.shape
    step = max(1, (1 << 23) // (B * H * D))
    return all(np.array_equal(backend.to_numpy(native[:, :, i:i + step]), expected[:, :, i:i + step],
                              equal_nan=True) for i in range(0, expected.shape[2], step))


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def inputs_contract(backend, run, inputs: Inputs, pristine: Inputs, digests: dict[str, str] | None = None
                    ) -> list[str]:
    """Inputs written by the call: the float64 arrays handed to `prepare` (a float64 tensor may share their
    memory) and, where the prepared callable exposes them, its converted inputs (`run.native_inputs`: q, k, v;
    `run.native_kv`: {name: tensor} of a layout's storage it read natively, named as `Storage.ARRAYS`).
    digests: `_digests` taken before the call, for the inputs too big to copy."""
    digests = digests or {}
    after = _digests(inputs) if digests else {}

    def written(n: str) -> bool:                # a digest where the input was too big to copy (no bytes copies)
        if n in digests:
            return after.get(n) != digests[n]
        return getattr(pristine, n) is not None and not _same_bits(getattr(inputs, n), getattr(pristine, n))

    problems = [f"input {n} was modified by the call" for n in ("q", "k", "v", "mask") if written(n)]
    if pristine.kv is not None:                 # the layout's storage (an appended key belongs in a copy)
        problems += [f"input {n} was modified by the call" for n, x in pristine.kv.arrays().items()
                     if not _same_bits(getattr(inputs.kv, n), x) and f"input {n} was modified by the call"
                     not in problems]
    converted = list(zip(("q", "k", "v"), getattr(run, "native_inputs", ()), (pristine.q, pristine.k, pristine.v)))
    if pristine.kv is not None:                 # a layout read natively: its converted storage (packed q, pages)
        stored = pristine.kv.arrays()
        converted += [(n, native, stored[n]) for n, native in getattr(run, "native_kv", {}).items() if n in stored]
    for n, native, before in converted:
        if f"input {n} was modified by the call" not in problems:
            if not _native_equal(backend, native, before):
                problems.append(f"input {n} was modified by the call (the backend's converted copy)")
    return problems


# --- the checks ---------------------------------------------------------------------------------------------------

def check_forward(backend, problem: Problem, device: str = "cpu", *, inputs: Inputs | None = None,
                  rows=None) -> Verdicts:
    """Compare the backend's output (and lse, where it declares one) with the reference on `rows`.

    rows: None (all rows at small sizes, a `choose_rows` sample at length), "all", a sequence of query rows,
    or a `RowSample`.
    """
    cached = inputs is None                     # make_inputs(problem)'s: the reference every backend shares
    inputs = make_inputs(problem) if inputs is None else inputs
    sample = _as_rows(rows, problem, inputs)
    pristine, digests = _pristine(inputs), _digests(inputs)
    want_lse = backend.capabilities(device).lse
    run = backend.prepare(inputs, problem, device=device, return_lse=want_lse)
    result = run()
    rounded_p = _rounded_p(backend, problem, device)
    broken = inputs_contract(backend, run, inputs, pristine, digests)
    # An input too big to copy (`_digests`) is its own pristine copy only if the call left it alone: then it
    # serves the shared reference too (past 2^31 elements, each backend made the reference again before: the
    # naive float16 Q K^T alone takes minutes there); a written one gets a reference of its own, never cached.
    intact = not any(f"input {n} was modified by the call" in broken for n in digests)
    ref = (_cached_forward_reference(problem, sample, rounded_p=rounded_p, inputs=pristine) if cached and intact
           else forward_reference(pristine, problem, sample, rounded_p=rounded_p))
    return _judge_forward(backend, problem, result, ref, sample, device, want_lse=want_lse, broken=broken,
                          physical=_physical(run))


def verify_forward(backend, problem: Problem, result, device: str = "cpu", *, rows: RowSample,
                   run=None) -> Verdicts:
    """`check_forward`'s verdicts on `result`, an output O (B, H, N, Dv) the backend already returned for
    `make_inputs(problem)` (a timed call's, in perf): the same compare and output contract, no call made. `run`:
    the prepared callable that returned it, whose results a route (pad-and-mask) maps to the layout's shapes."""
    ref = _cached_forward_reference(problem, rows, rounded_p=_rounded_p(backend, problem, device))
    return _judge_forward(backend, problem, result, ref, rows, device, want_lse=False, broken=[],
                          physical=_physical(run))


def _judge_forward(backend, problem: Problem, result, ref: ForwardReference, sample: RowSample, device: str, *,
                   want_lse: bool, broken: list[str], physical=None) -> Verdicts:
    """Verdicts of a forward `result` (O, or (O, lse) with want_lse) against `ref` on the rows of `sample`."""
    out, lse = result if want_lse else (result, None)
    p, physical = problem, physical or _as_is
    shapes = _result_shapes(p)
    actual = physical("out", backend.to_numpy(out))
    broken = output_contract("output", out, actual, shapes["out"], p.dtype, device) + broken
    verdicts = [_contract("contract", broken)]
    actual = _logical(p, "out", actual, shapes)
    qr = _indices(sample.query, p.N)
    precision = backend.capabilities(device).precision_for(p.dtype)
    lse_dtype = _dtype_name(lse) if lse is not None else None
    model_out, model_lse = (None, None) if precision is None else ref.model_bounds(
        precision, p, lse_dtype if lse_dtype in UNIT_ROUNDOFF else "float32")
    named = precision.describe(p.dtype) if precision is not None else None
    if actual.shape == (p.B, p.H, p.N, p.Dv):
        verdicts.append(compare("output", actual[:, :, qr], ref.out, dtype=p.dtype, bound=ref.out_bound,
                                naive=ref.naive, reduction_length=p.D + p.M,
                                analytic_floor=forward_floor(ref.out_bound, ref.out, p.dtype),
                                model_bound=model_out, model=named,
                                lean_slack=None if model_out is None else _before_rounding(model_out, ref.out,
                                                                                           p.dtype)))
    if want_lse:
        actual_lse = physical("lse", backend.to_numpy(lse))
        if actual_lse.shape == shapes["lse"]:
            rows_lse = _logical(p, "lse", actual_lse, shapes)[:, :, qr]
            if kv_layouts.needs_storage(p):       # padding rows are no part of the problem: the reference's value
                rows_lse = np.where(~kv_layouts.valid(p)[0][:, None, qr], ref.lse, rows_lse)
            verdicts.append(compare("lse", rows_lse, ref.lse, dtype=p.dtype, bound=ref.lse_bound,
                                    model_bound=model_lse, model=named))
        else:
            verdicts[0] = _contract("contract", broken + [f"lse shape {actual_lse.shape}, expected "
                                                          f"{shapes['lse']}"])
    return _judged(backend, problem, device, verdicts, sample, backward=False)


def check_backward(backend, problem: Problem, device: str = "cpu", *, inputs: Inputs | None = None,
                   rows=None) -> Verdicts:
    """Compare dQ (query rows), dK and dV (key rows) with the float64 reference backward, against the naive
    same-dtype one. rows: as in `check_forward` (a sequence names query rows; keys are then all checked)."""
    cached = inputs is None and not drawn_in_dtype(problem)
    inputs = make_inputs(problem) if inputs is None else inputs
    sample = _as_rows(rows, problem, inputs)
    pristine, digests = _pristine(inputs), _digests(inputs)
    grad_out = make_grad_out(problem)                   # logical (B, H, N, Dv): the reference's
    given = grad_out_for(problem, grad_out.copy())      # shaped like O; a copy: a call writing it spares the ref's
    run = backend.prepare_backward(inputs, problem, given, device=device)
    actual = run()
    ref = (_cached_backward_reference(problem, sample) if cached
           else backward_reference(pristine, problem, grad_out, sample))
    broken = inputs_contract(backend, run, inputs, pristine, digests) + grad_out_contract(backend, run, problem, given)
    return _judge_backward(backend, problem, actual, ref, sample, device, broken=broken, physical=_physical(run))


def grad_out_contract(backend, run, problem: Problem, given: np.ndarray) -> list[str]:
    """dO written by the backward call, an input of it as q, k and v are: the array `given` to `prepare_backward`
    (a float64 tensor may share its memory) and, where the prepared callable exposes it (`run.native_grad_out`),
    its converted copy (through pad-and-mask, the padded dense view of `given`)."""
    pristine = grad_out_for(problem)                    # deterministic: what `given` held before the call
    if not _same_bits(given, pristine):
        return ["input dO was modified by the call"]
    native = getattr(run, "native_grad_out", None)
    if native is None:
        return []
    values = backend.to_numpy(native)
    if values.shape != pristine.shape and kv_layouts.needs_storage(problem):
        pristine = kv_layouts.to_logical(problem, "out", pristine)
    if values.shape == pristine.shape and np.array_equal(values, pristine, equal_nan=True):
        return []
    return ["input dO was modified by the call (the backend's converted copy)"]


def verify_backward(backend, problem: Problem, result, device: str = "cpu", *, rows: RowSample,
                    run=None) -> Verdicts:
    """`check_backward`'s verdicts on `result`, (dQ, dK, dV) the backend already returned for `make_inputs(problem)`
    and `make_grad_out(problem)` (physical: `grad_out_for`) (a timed call's, in perf): the same compare and output
    contract, no call made. `run` as in `verify_forward`."""
    ref = _cached_backward_reference(problem, rows)
    return _judge_backward(backend, problem, result, ref, rows, device, broken=[], physical=_physical(run))


def _judge_backward(backend, problem: Problem, actual, ref: BackwardReference, sample: RowSample, device: str, *,
                    broken: list[str], physical=None) -> Verdicts:
    """Verdicts of dQ (B, H, N, D), dK (B, Hkv, M, D), dV (B, Hkv, M, Dv) against `ref` on the rows of `sample`."""
    p, physical = problem, physical or _as_is
    result_shapes = _result_shapes(p)
    shapes = {"dq": (p.B, p.H, p.N, p.D), "dk": (p.B, p.Hkv, p.M, p.D), "dv": (p.B, p.Hkv, p.M, p.Dv)}
    actual, dsink = tuple(actual[:3]), (actual[3] if len(actual) > 3 else None)
    arrays = [physical(name, backend.to_numpy(a)) for name, a in zip(("dq", "dk", "dv"), actual)]
    broken = [msg for name, a, arr in zip(shapes, actual, arrays)
              for msg in output_contract(name, a, arr, result_shapes[name], p.dtype, device)] + broken
    sink_grad = backend.capabilities(device).sink_grad and p.mod("sinks") is not None
    if sink_grad and dsink is None:
        broken.append("no d sink returned (declares sink_grad)")
    sink_array = None if dsink is None else backend.to_numpy(dsink)
    if dsink is not None:                        # the logits' own dtype: float32, as the kernels take them
        broken += output_contract("dsink", dsink, sink_array, (p.H,), "float32", device)
    verdicts = [_contract("contract", broken)]
    arrays = [_logical(p, name, a, result_shapes) for name, a in zip(shapes, arrays)]
    picks = (_indices(sample.query, p.N), _indices(sample.key, p.M), _indices(sample.key, p.M))
    precision = backend.capabilities(device).precision_for(p.dtype)
    named = precision.describe(p.dtype) if precision is not None else None
    for (name, shape), a, e, n, mag, floor, model, slack, rows_ in zip(
            shapes.items(), arrays, ref.expected, ref.naive, ref.magnitudes, ref.floors,
            ref.model_bounds(precision, p), ref.lean_slacks(precision, p), picks):
        if a.shape == shape:
            if model is not None and slack is None:       # row-sampled: the worst element's, for every element
                slack = _before_rounding(model, np.max(np.abs(e), initial=0.0), p.dtype)
            verdicts.append(compare(name, a[:, :, rows_], e, naive=n, dtype=p.dtype,
                                    reduction_length=p.D + p.Dv + max(p.N, p.M), magnitude=mag,
                                    analytic_floor=floor, model_bound=model, model=named if model is not None
                                    else None, lean_slack=slack))
    if sink_array is not None and sink_array.shape == (p.H,) and ref.sink is not None:
        work = None
        if precision is not None and precision.grad_accumulate is not None:       # the coarser of its two
            work = max(precision.resolved("scores", p.dtype), precision.resolved("grad_accumulate", p.dtype),
                       key=UNIT_ROUNDOFF.get)
        # Condition 2 as for dQ, dK, dV: no worse than twice the plain formula's in the dtype, floor (b) the
        # bound re-derived at the accumulation precision. Condition 1's bound alone, at the dtype's u where no
        # precision is declared, is of the order of d sink itself in float16/bfloat16: a sign slip passed it.
        verdicts.append(compare("dsink", sink_array, ref.sink.result, dtype=p.dtype,
                                bound=sink_grad_bound(ref.sink, p.dtype, work), naive=ref.sink_naive,
                                reduction_length=p.D + p.Dv + p.M + p.B * p.N,
                                analytic_floor=sink_grad_bound(ref.sink, p.dtype, ACCUMULATION_DTYPE[p.dtype])))
    # d sink sums over every query row of every batch: a row-sampled check has no reference for it (forming one is
    # the full O(N M) forward the sample avoids), and says so rather than pass in silence.
    unjudged = (["dsink: not judged on a row-sampled check (it sums over every query row; "
                 "evaluate(..., rows=\"all\") judges it)"] if sink_array is not None and ref.sink is None else [])
    return _judged(backend, problem, device, verdicts, sample, backward=True, unjudged=unjudged)


def grad_out_for(problem: Problem, grad_out: np.ndarray | None = None):
    """The dO every backward check and timed backward call gets: `make_grad_out` (or `grad_out`, that logical
    (B, H, N, Dv) array already made), shaped like the layout's O."""
    return kv_layouts.to_physical(problem, "out", make_grad_out(problem) if grad_out is None else grad_out)


def _physical(run):
    """How to map the prepared callable's results to the layout's physical shapes: `run.physical(name, array)`
    where a route hands back another view (the pad-and-mask adapter's dense results), else the identity."""
    return getattr(run, "physical", _as_is)


def _as_is(name: str, x: np.ndarray) -> np.ndarray:
    return x


def _result_shapes(p: Problem) -> dict[str, tuple]:
    """Shapes of out, lse, dq, dk, dv as a backend returns them: the layout's physical ones."""
    if kv_layouts.needs_storage(p):
        return kv_layouts.result_shapes(p)
    return dict(out=(p.B, p.H, p.N, p.Dv), lse=(p.B, p.H, p.N), dq=(p.B, p.H, p.N, p.D),
                dk=(p.B, p.Hkv, p.M, p.D), dv=(p.B, p.Hkv, p.M, p.Dv))


def _logical(p: Problem, name: str, actual: np.ndarray, shapes: dict) -> np.ndarray:
    """A result in its physical shape as the logical dense view the reference is in (itself when dense or when
    its shape is wrong: the contract has already said so)."""
    if not kv_layouts.needs_storage(p) or actual.shape != shapes[name]:
        return actual
    return kv_layouts.to_logical(p, name, actual)


def _before_rounding(bound, result, dtype: str):
    """The part of an error bound that comes before the final rounding to `dtype` (bound - u |result|, >= 0):
    what the lean test leaves kernels near a rounding boundary (`budget.lean`)."""
    with np.errstate(invalid="ignore"):        # inf - inf where a row holds non-finite inputs: NaN, left out
        return np.maximum(np.asarray(bound, dtype=np.float64) - UNIT_ROUNDOFF[dtype] * np.abs(result), 0.0)


def failure_message(backend_name: str, problem: Problem, verdicts: list[Verdict], device: str = "cpu", *,
                    backward: bool = False) -> str:
    """Every verdict on one line each, then the repro command (naming the rows when they were sampled)."""
    lines = [v.describe() for v in verdicts]
    lines += [f"known deviation: {note}" for note in getattr(verdicts, "notes", ())]
    lines += [f"not judged: {line}" for line in getattr(verdicts, "unjudged", ())]
    rows = getattr(verdicts, "rows", None)
    if rows is not None and not rows.full:
        lines.append(f"rows checked: {len(rows.query or ())} query rows"
                     + (f", {len(rows.key or ())} key rows" if backward else ""))
    lines.append("repro: " + repro_command(backend_name, problem, device, backward=backward, rows=rows))
    return "\n".join(lines)
