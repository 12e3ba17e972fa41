"""Budget condition 1 and the declared-precision bound on chosen rows, blockwise over keys.

`condition_one` gives the rows of `budget.forward_bound` / `budget.lse_bound`, `precision.model_bounds` the
bound a backend's declared `Precision` implies; both from one pass over the keys (`row_stats`).

The bound of a query row depends on that row alone (its scores, P, O), so it is computed for chosen rows
against every key in blocks, with BLAS matmuls and O(rows · block) memory, from the row-sampled reference's
O and lse (P = exp(S - lse)). Same formula as `budget.forward_bound` (see there for the derivation);
`tests/test_check_rows.py` holds the two equal on small problems, so they cannot drift apart.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims, R rows.
"""
from __future__ import annotations

import numpy as np

from attnbench.budget import FLUSH_THRESHOLD, LAMBDA, LEAN_DTYPES, UNIT_ROUNDOFF
from attnbench.precision import HALF_SUBNORMAL, LeanTerms, Precision, RowStats, model_bounds
from attnbench.reference import block, mods as modifications
from attnbench.reference.block import block_of
from attnbench.problem import round_to_dtype
from attnbench.reference.rows import BLOCK_M, float64_reads, key_slice, score_blocks


# The smallest `tiny` for which tiny |v| is normal for every nonzero |v| >= 2^-149 (float32's smallest subnormal,
# hence every float16, bfloat16 and float32 input): float64's 2^-1022 is not, float32's 2^-126 is.
NORMAL_SCALING = 2.0 ** -800


def min_normal(dtype: str) -> float:
    """The dtype's smallest normal number (HALF_SUBNORMAL / u: float16 2^-14, bfloat16 and float32 2^-126)."""
    return HALF_SUBNORMAL[dtype] / UNIT_ROUNDOFF[dtype]


def row_stats(q, k, v, lse, rows, *, scale: float, mods=(), block_m: int = BLOCK_M,
              tiny: float = 0.0, min_normal: float = 0.0, blocks=None, rounded_p: bool = True) -> RowStats:
    """The per-row sums both bounds are built from (`precision.RowStats`, grouped (B, Hkv, G, R[, Dv])).

    q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) float64; lse (B, H, R): the reference at `rows`
    (P = exp(S - lse)); mods: bound modifications, causal and the input mask among them (`Inputs.reference_mods`);
    tiny: the weight below which a kernel's exp flushes to 0 (`budget.FLUSH_THRESHOLD`). Scores and their
    magnitude T come from the reference's block function; blocks: the scores of these rows already computed
    (`reference.rows.sdpa_rows_with_scores`; None: computed here). rounded_p: also the sums only a declared
    P rounded to the input dtype needs (`RowStats.rounded_p`: two more products of every row with V, a third of
    the time at N 16, M 131,073); without them condition 1 is complete and `with_rounded_p` adds them later.

    A modification that adds roundings to each score (softcap: `extra_roundings`, each within u |s| <= u T)
    raises the score error from LAMBDA u (sqrt(D) + 2) T to at most LAMBDA u (sqrt(D) + 2 + extra) T: T is
    scaled by (sqrt(D) + 2 + extra) / (sqrt(D) + 2), so every bound built on it carries the extra terms.
    """
    B, H, N, D = q.shape
    Hkv, M, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    R = len(rows)
    k, v = float64_reads("k", k), float64_reads("v", v)          # held in the dtype past 2^31: a block at a time
    qg = float64_reads("q", q)[:, :, rows].reshape(B, Hkv, G, R, D)
    shift = _lse_shift(lse, (B, Hkv, G, R))
    per_row, per_elem = (B, Hkv, G, R), (B, Hkv, G, R, Dv)
    t_seen, t_finite, p_sum = (np.zeros(per_row) for _ in range(3))
    mass, flushed, subnormal_v = (np.zeros(per_elem) for _ in range(3))
    rounded = _RoundedP(per_row, per_elem) if rounded_p else None
    kwargs = dict(mods=mods, N=N, M=M, scale=scale)
    widen = (np.sqrt(D) + 2 + modifications.extra_roundings(mods)) / (np.sqrt(D) + 2)
    if blocks is None:
        blocks = score_blocks(qg, k, rows, block_m=block_m, **kwargs)
    for kj, s in blocks:
        p = np.exp(s - shift)
        t, finite = block.magnitude(qg, k, rows, kj, **kwargs)               # t is 0 where finite is False
        t = t if widen == 1.0 else widen * t
        t_max, p_min = np.max(t, axis=-1), p.min(axis=-1)
        t_finite = np.maximum(t_finite, t_max)
        # The largest T where P > 0: every key's where no weight of the block is 0 (no pass over P and T for it;
        # a NaN row takes the pass, whose NaN comparisons it had before).
        t_seen = np.maximum(t_seen, t_max if np.all(p_min > 0) else np.max(np.where(p > 0, t, 0.0), axis=-1))
        # v, |v| and |v|^2 (B, Hkv, C, Dv) are each the operand of two products (v a view of the input, no copy).
        # The visibility (0/1) is shared by the heads of a group unless a mask is per head, so its products are
        # taken once per distinct row (`_compact`), not G times.
        vt = v[:, :, key_slice(kj)]
        abs_v = np.abs(vt)
        vis = _compact(finite).astype(np.float64)                             # (B|1, Hkv|1, G|1, R, C)
        low_rows, flush_rows = _low_and_flushed(p, vis, abs_v, tiny, min_normal, p_min)
        mass_rows = block.group_matmul(np.concatenate([p, *flush_rows, *low_rows], axis=-2)
                                       if flush_rows or low_rows else p, abs_v)
        mass += mass_rows[..., :R, :]
        if flush_rows:
            flushed += mass_rows[..., R:2 * R, :]
        else:                       # min(P, tiny) = tiny where visible, 0 elsewhere: tiny sum_visible |v|
            flushed += tiny * (vis @ abs_v[:, :, None])
        if low_rows:
            subnormal_v += mass_rows[..., -R:, :]
        p_sum += p.sum(axis=-1)
        if rounded is not None:
            rounded.add(p, vis, vt, abs_v)
    stats = RowStats(t_seen, t_finite, mass, p_sum, flushed=flushed, subnormal_v=subnormal_v)
    return stats if rounded is None else stats.with_rounded_p(**rounded.sums())


def rounded_p_sums(q, k, v, lse, rows, *, scale: float, mods=(), block_m: int = BLOCK_M) -> dict:
    """`RowStats.rounded_p`'s sums alone (a pass of their own over the keys): for a reference made without them
    (`row_stats(rounded_p=False)`) that a backend declaring P rounded to its input dtype then needs. Arguments
    as `row_stats`'."""
    B, H, N, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    G, R = H // Hkv, len(rows)
    k, v = float64_reads("k", k), float64_reads("v", v)
    qg = float64_reads("q", q)[:, :, rows].reshape(B, Hkv, G, R, D)
    shift = _lse_shift(lse, (B, Hkv, G, R))
    rounded = _RoundedP((B, Hkv, G, R), (B, Hkv, G, R, Dv))
    for kj, s in score_blocks(qg, k, rows, block_m=block_m, mods=mods, N=N, M=k.shape[2], scale=scale):
        vt = v[:, :, key_slice(kj)]
        visible = block.visibility(s.shape, rows, kj, mods=mods, N=N, M=k.shape[2])    # as `block.magnitude`'s
        rounded.add(np.exp(s - shift), _compact(visible).astype(np.float64), vt, np.abs(vt))
    return rounded.sums()


def _lse_shift(lse, shape) -> np.ndarray:
    """lse (B, H, R) grouped to `shape` (B, Hkv, G, R) with a trailing axis: P = exp(S - shift), and +inf for
    rows with no key (P = 0 there, not NaN)."""
    lse_g = lse.reshape(shape)
    return np.where(np.isneginf(lse_g), np.inf, lse_g)[..., None]


class _RoundedP:
    """Running sums over key blocks of P^2 v^2, P^2 v, P^2 and of v^2, |v|, 1 over visible keys (`RowStats`)."""

    def __init__(self, per_row: tuple, per_elem: tuple):
        self.p2, self.visible = np.zeros(per_row), np.zeros(per_row)
        self.p2_v2, self.p2_vs, self.vis_v2, self.vis_v = (np.zeros(per_elem) for _ in range(4))

    def add(self, p, vis, vt, abs_v) -> None:
        """p (B, Hkv, G, R, C), vis (B|1, Hkv|1, G|1, R, C) 0/1, vt and abs_v (B, Hkv, C, Dv) of one key block."""
        abs_v2 = abs_v * abs_v
        p2 = p * p
        self.p2 += p2.sum(axis=-1)
        self.p2_vs += block.group_matmul(p2, vt)
        self.p2_v2 += block.group_matmul(p2, abs_v2)
        self.vis_v2 += vis @ abs_v2[:, :, None]
        self.vis_v += vis @ abs_v[:, :, None]
        self.visible += vis.sum(axis=-1)

    def sums(self) -> dict:
        return dict(p2_v2=self.p2_v2, p2_vs=self.p2_vs, p2=self.p2, vis_v2=self.vis_v2, vis_v=self.vis_v,
                    visible=self.visible)


def _low_and_flushed(p, vis, abs_v, tiny: float, min_normal: float, p_min=None):
    """([the 0/1 rows of 0 < P < min_normal] or [], [the rows min(P, tiny)] or []) of P (B, Hkv, G, R, C), to
    multiply by |v| beside P. Both are left out where they follow from the visibility vis (B|1, Hkv|1, G|1, R, C)
    alone, the common case, saving one or two of the three products: min(P, tiny) is tiny exactly where a key is
    visible and 0 elsewhere (no weight in (0, tiny), none lost to underflow, no NaN), and then no weight is in
    (0, min_normal) either when min_normal <= tiny (bfloat16, float32). |v| must be finite (0 inf is NaN), and
    tiny a power of two (float32's tiny, not float64's) whose products with every nonzero |v| of a float32
    value stay normal, so tiny sum |v| has the bits of sum tiny |v|. p_min: P's row minima (R) where known:
    with every key visible, min(P, tiny) = tiny everywhere is min P >= tiny, no pass over P."""
    every_key = p_min is not None and np.all(vis == 1.0)
    if (tiny < NORMAL_SCALING or not np.all(np.isfinite(abs_v))
            or not (np.all(p_min >= tiny) if every_key else np.all(np.minimum(p, tiny) == tiny * vis))):
        return [((p > 0) & (p < min_normal)).astype(np.float64)], [np.minimum(p, tiny)]
    if min_normal <= tiny:
        return [], []
    return [((p > 0) & (p < min_normal)).astype(np.float64)], []


def _compact(x: np.ndarray) -> np.ndarray:
    """`x` (.., C) without the leading axes it is only broadcast along (stride 0): size 1 there, same values."""
    return x[tuple(slice(0, 1) if stride == 0 and n > 1 else slice(None) for stride, n in
                   zip(x.strides[:-1], x.shape[:-1]))]


def condition_one(stats: RowStats, out, lse, *, dtype: str, D: int, M: int):
    """Budget condition 1 (bound on |O - O_ref| (B, Hkv, G, R, Dv), on |lse - lse_ref| (B, Hkv, G, R)) from
    `row_stats`; out, lse: the reference at the rows, grouped alike."""
    u = UNIT_ROUNDOFF[dtype]
    out_g = np.abs(out)
    score_err = LAMBDA * u * (np.sqrt(D) + 2) * stats.t_seen
    spread = stats.mass + stats.p_sum[..., None] * out_g
    # The output's own rounding: u |O|, and half the subnormal spacing where O is that small (float16 below
    # 6.1e-5: a row whose every weight a sink dwarfs); a row that sees no key must still be exactly 0.
    subnormal = np.where(stats.p_sum[..., None] > 0, HALF_SUBNORMAL[dtype], 0.0)
    # Weights below the dtype's smallest normal, held in the dtype (the plain formula's P, FlashAttention's P for
    # P V), are off by up to half the subnormal spacing each, not u P: the plain float16 formula itself was 1.25x
    # condition 1 without this (a drawn problem: a sink dwarfing the one key, P ~ 3e-8).
    bound = (score_err[..., None] * spread + LAMBDA * u * (np.sqrt(M) + 2) * stats.mass + u * out_g + stats.flushed
             + subnormal + HALF_SUBNORMAL[dtype] * stats.subnormal_v)
    finite_lse = np.isfinite(lse)
    lse_err = np.where(finite_lse, LAMBDA * u * (np.sqrt(D) + 2) * stats.t_finite + LAMBDA * u * (np.sqrt(M) + 2)
                       + u * np.abs(np.where(finite_lse, lse, 0.0)), 0.0)
    return bound, lse_err


def row_bounds(q, k, v, out, lse, rows, *, scale: float, dtype: str, block_m: int = BLOCK_M,
               precision: Precision | None = None, lse_dtype: str = "float32", mods=()):
    """(bound on |O - O_ref| (B, H, R, Dv), bound on |lse - lse_ref| (B, H, R)) at query `rows` (R,): condition
    1, or with `precision` the declared-precision bounds (`attnbench.precision.model_bounds`).

    out (B, H, R, Dv), lse (B, H, R): the reference at those rows; other arguments as in `row_stats`.
    """
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G, R = H // Hkv, len(rows)
    stats = row_stats(q, k, v, lse, rows, scale=scale, mods=mods, block_m=block_m,
                      tiny=FLUSH_THRESHOLD[dtype], min_normal=min_normal(dtype))
    out_g, lse_g = out.reshape(B, Hkv, G, R, -1), lse.reshape(B, Hkv, G, R)
    if precision is None:
        bound, lse_err = condition_one(stats, out_g, lse_g, dtype=dtype, D=D, M=M)
    else:
        bound, lse_err = model_bounds(stats, out_g, lse_g, precision=precision, dtype=dtype, D=D, M=M,
                                      lse_dtype=lse_dtype)
    return bound.reshape(B, H, R, -1), lse_err.reshape(B, H, R)


def backward_row_scales(q, k, v, grad_out, query_rows, key_rows, *, scale: float, dtype: str,
                        mods=(), block_n: int = 512, block_m: int = BLOCK_M, elementwise: bool = False):
    """What a declared precision's backward bound needs (`precision.backward_model_bound`) on the checked rows:
    per gradient (dQ at `query_rows`, dK and dV at `key_rows`) a tuple (terms_max, rounded_rms, rounded_count,
    operand_max, stored_output), and score_max; the sums of `check.backward_magnitudes`, `check.rounded_operands`
    and `budget.stored_output_floor`, blockwise and never (N, M), maximised over the checked elements only (the
    bound is one scalar at least each checked element's own). Equal to those on every row
    (`tests/test_check_rows.py`).

    q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv), grad_out (B, H, N, Dv) float64. A key row sums over every
    query, so every query's lse and O come first (one O(N M (D + Dv)) pass, as `reference.sdpa_backward_rows`).
    score_max: `budget.score_magnitude` with the largest bias the masking modifications add (an input bias, at
    visible keys: `mods.mask_bias`) and the largest the score modifications add (ALiBi) of the visited blocks,
    widened by the modifications' extra roundings (as `check._with_modifications`).

    elementwise: also each checked element's own (terms, rounded root-sum-of-squares, stored-output share) per
    gradient, the sums above before their maximum (dQ (B, H, R, D), dK (B, Hkv, R, D), dV (B, Hkv, R, Dv); dV's
    stored share 0.0), a third item: the lean test's slack per element (`check.GradientScale.elementwise`), so a
    one-sided rounding is held on sampled rows as on full checks, not to the worst element's slack; and a fourth,
    dQ's `precision.LeanTerms` at the query rows (`DqLeanSums`, None outside float16/bfloat16 or with a softcap).
    dK's own (`check.lean_gradient_terms`) need every query row's sums over every key: full checks only.
    """
    from attnbench.reference.rows import online
    from attnbench.reference.sdpa import prepare_qkv

    q, k, v, mods, scale, (B, H, Hkv, N, M, D, Dv) = prepare_qkv(q, k, v, None, None, scale, mods)
    G = H // Hkv
    qg, gg = q.reshape(B, Hkv, G, N, D), np.asarray(grad_out, dtype=np.float64).reshape(B, Hkv, G, N, Dv)
    qr, kr = np.asarray(query_rows, dtype=np.int64), np.asarray(key_rows, dtype=np.int64)
    kwargs = dict(mods=mods, N=N, M=M, scale=scale)
    scoring = [m for m in mods if not m.masks]                               # their magnitude: everywhere
    u = UNIT_ROUNDOFF[dtype] if UNIT_ROUNDOFF[dtype] > UNIT_ROUNDOFF["float32"] else 0.0   # stored O: half only
    lse, delta, eps = np.empty(qg.shape[:-1]), np.empty(qg.shape[:-1]), np.empty(qg.shape[:-1])
    outs = np.empty(gg.shape) if elementwise else None
    for start in range(0, N, block_n):
        qi = np.arange(start, min(start + block_n, N))
        out, lse[..., qi] = online(qg[..., qi, :], k, v, qi, block_m=block_m, **kwargs)
        if outs is not None:
            outs[..., qi, :] = out
        delta[..., qi] = np.sum(gg[..., qi, :] * out, axis=-1)
        eps[..., qi] = u * np.sum(np.abs(gg[..., qi, :]) * np.abs(out), axis=-1)
    largest_bias = largest_added = 0.0          # the largest finite |bias| and modification magnitude visited

    def visit(qi, kj):
        """P, the |terms| of dS (|P| (|dO| |V|^T + |delta|)), dS and P eps of rows qi against keys kj."""
        nonlocal largest_bias, largest_added
        s = block.scores(qg[..., qi, :], k, qi, kj, **kwargs)
        p = np.exp(s - np.where(np.isneginf(lse[..., qi]), np.inf, lse[..., qi])[..., None])
        p = np.where(np.isfinite(p), p, 0.0)
        vt = v[:, :, None, kj].swapaxes(-1, -2)
        terms = p * (np.abs(gg[..., qi, :]) @ np.abs(vt) + np.abs(delta[..., qi])[..., None])
        ds = p * (gg[..., qi, :] @ vt - delta[..., qi][..., None])
        blk = block_of(qi, kj, N, M, H, Hkv)
        bias = modifications.mask_bias(mods, blk)                         # a hidden pair's bias is never added
        extra = modifications.magnitude(np.zeros((1, 1, 1, len(qi), len(kj))), scoring, blk)
        largest_bias = max(largest_bias, float(np.max(np.where(np.isfinite(bias), np.abs(bias), 0.0), initial=0.0)))
        largest_added = max(largest_added, float(np.max(extra, initial=0.0)))
        return p, terms, np.where(np.isfinite(ds), ds, 0.0), p * eps[..., qi][..., None]

    mq, rq, sq = (np.zeros((B, Hkv, G, len(qr), D)) for _ in range(3))     # dQ_n = scale sum_m dS_nm K_m
    # dQ's per-element bound for the lean test: half dtypes, no score modification with a derivative
    lean = (DqLeanSums() if elementwise and dtype in LEAN_DTYPES and not modifications.extra_roundings(mods)
            else None)
    for start in range(0, M, block_m):
        kj = np.arange(start, min(start + block_m, M))
        p, terms, ds, stored = visit(qr, kj)
        kt = k[:, :, None, kj]
        mq, rq, sq = mq + terms @ np.abs(kt), rq + (ds * ds) @ (kt * kt), sq + stored @ np.abs(kt)
        if lean is not None:
            t, _ = block.magnitude(qg[..., qr, :], k, qr, kj, **kwargs)
            vt, rows_g = v[:, :, None, kj], gg[..., qr, :]
            with np.errstate(invalid="ignore"):     # rows of non-finite inputs: NaN there, left out of the test
                d = rows_g @ vt.swapaxes(-1, -2) - delta[..., qr][..., None]
                lean.add(p, t, d, np.abs(rows_g) @ np.abs(vt).swapaxes(-1, -2), kt, vt, D=D, Dv=Dv)
    mk, rk, sk = (np.zeros((B, Hkv, len(kr), D)) for _ in range(3))        # dK_m = scale sum_n dS_nm Q_n
    mv, rv = np.zeros((B, Hkv, len(kr), Dv)), np.zeros((B, Hkv, len(kr), Dv))   # dV_m = sum_n P_nm dO_n
    for start in range(0, N, block_n):
        qi = np.arange(start, min(start + block_n, N))
        p, terms, ds, stored = visit(qi, kr)
        qt, gt = qg[..., qi, :], gg[..., qi, :]
        mk += (terms.swapaxes(-1, -2) @ np.abs(qt)).sum(axis=2)             # GQA: summed over the group
        rk += ((ds * ds).swapaxes(-1, -2) @ (qt * qt)).sum(axis=2)
        sk += (stored.swapaxes(-1, -2) @ np.abs(qt)).sum(axis=2)
        mv += (p.swapaxes(-1, -2) @ np.abs(gt)).sum(axis=2)
        rv += ((p * p).swapaxes(-1, -2) @ (gt * gt)).sum(axis=2)

    def top(x) -> float:
        return float(np.max(np.where(np.isfinite(x), x, 0.0), initial=0.0))

    def largest_norm(x) -> float:                   # of the finite rows: one NaN input must not make it NaN
        return top(np.linalg.norm(x, axis=-1))

    s = abs(scale)
    widen = (np.sqrt(D) + 2 + modifications.extra_roundings(mods)) / (np.sqrt(D) + 2)
    score_max = widen * (s * largest_norm(q) * largest_norm(k) + largest_bias + largest_added)
    dq = (s * top(mq), s * np.sqrt(top(rq)), M, s * top(np.abs(k)), s * top(sq))
    dk = (s * top(mk), s * np.sqrt(top(rk)), N * G, s * top(np.abs(q)), s * top(sk))
    dv = (top(mv), np.sqrt(top(rv)), N * G, top(np.abs(gg)), 0.0)
    if not elementwise:
        return (dq, dk, dv), score_max
    ungrouped = (B, H, len(qr), D)                       # dQ's checked rows as the gradient (B, H, R, D)
    each = ((s * mq.reshape(ungrouped), s * np.sqrt(rq.reshape(ungrouped)), s * sq.reshape(ungrouped)),
            (s * mk, s * np.sqrt(rk), s * sk), (mv, np.sqrt(rv), 0.0))
    if lean is None:
        return (dq, dk, dv), score_max, each, None
    sink = modifications.sink_logits(mods, block_of(qr, np.arange(0), N, M, H, Hkv))      # (B|1, Hkv, G, 1)
    with np.errstate(invalid="ignore"):
        terms = lean.terms(out=outs[..., qr, :], lse=lse[..., qr], grad_out=gg[..., qr, :], scale=scale,
                           dtype=dtype, M=M, Dv=Dv, sink=None if sink is None else np.abs(sink))
    return (dq, dk, dv), score_max, each, LeanTerms(*(x.reshape(ungrouped) for x in (
        terms.scores, terms.accumulate, np.broadcast_to(terms.stored, mq.shape), terms.shift_low, terms.shift_high)))


# --- the lean test's per-element bound on dQ (`check.lean_gradient_terms` derives it) -----------------------------

def score_roundings(t, w, D: int):
    """sigma_nm P_nm: the root-sum-of-squares of the roundings behind one score, times its weight (`check.
    lean_gradient_terms`): (sqrt(D) + 2) T (the dot, scale and bias) + 3 |S - lse| (the subtraction, an exp2's
    log2 e scaling) + 5 (exp within two float32 ulps, a division by l); |S - lse| = |log P| where P > 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_w = np.where(w > 0, np.abs(np.log(np.where(w > 0, w, 1.0))), 0.0)
    return ((np.sqrt(D) + 2) * t + 3 * log_w + 5) * w


def lse_roundings(lse, M: int, sink=None):
    """r_n: the root-sum-of-squares of the roundings of a row's normaliser, one relative error of all its P (the
    sum over M and its rescalings, log l <= log M, the add m + log l, a sink logit |sink|)."""
    r = np.sqrt(M) + 4 + np.log(M) + 2 * np.abs(np.where(np.isfinite(lse), lse, 0.0))
    return r if sink is None else r + sink


class DqLeanSums:
    """Running sums over key blocks, per query row, that `check.lean_gradient_terms` builds dQ's bound from; the
    same for a full check (one block, every row) and for a row-sampled one (`backward_row_scales`)."""

    def __init__(self):
        self.sums: dict = {}

    def add(self, w, t, d, gv, k, v, *, D: int, Dv: int) -> None:
        """w = P, t = T, d = dP - delta, gv = sum_e |dO| |V| (.., R, C) of the rows against a block of keys; k
        (.., C, D), v (.., C, Dv) that block (broadcast against the rows' leading axes)."""
        sigma_w2 = score_roundings(t, w, D) ** 2
        x1, x2 = sigma_w2 * d * d, sigma_w2 * np.abs(d)
        rho_w2 = ((np.sqrt(Dv) + 2) * gv * w) ** 2
        abs_k, k2 = np.abs(k), k * k
        parts = dict(x1_k2=x1 @ k2, x2_k=x2 @ abs_k, x1_k=x1 @ abs_k, rho_k2=rho_w2 @ k2, rho_k=rho_w2 @ abs_k,
                     ds_k=np.abs(w * d) @ abs_k, pdk=(w * d) @ k, pk=w @ k, mass=w @ np.abs(v), s_v2=sigma_w2 @ (v * v),
                     s_v=sigma_w2 @ v, v_abs=np.sum(np.abs(v), axis=-2, keepdims=True), **{name: np.sum(x, axis=-1, keepdims=True) for name, x in
                                          (("z0", sigma_w2), ("z1", x2), ("z2", x1), ("rho", rho_w2))})
        for name, x in parts.items():
            self.sums[name] = x if name not in self.sums else self.sums[name] + x

    def stored_output_move(self, out, grad_out, *, dtype: str, M: int):
        """`stored_output_move` at the rows (out, grad_out (.., R, Dv)) from these sums."""
        s = self.sums
        spread = np.maximum(s["s_v2"] - 2 * out * s["s_v"] + out * out * s["z0"], 0.0)   # sum sigma^2 P^2 (V - O)^2
        return stored_output_move(out, grad_out, s["mass"], spread, FLUSH_THRESHOLD[dtype] * s["v_abs"],
                                  dtype=dtype, M=M)

    def terms(self, *, out, lse, grad_out, scale: float, dtype: str, M: int, Dv: int, sink=None):
        """dQ's `precision.LeanTerms` at the rows: out, grad_out (.., R, Dv), lse (.., R) the reference's there, sink
        broadcastable to lse or None."""
        from attnbench.budget import LAMBDA
        from attnbench.precision import LeanTerms

        s, scale = self.sums, abs(scale)
        a, b = np.abs(s["pdk"]), np.abs(s["pk"])                          # |(P d K)_e| = |dQ| / scale, |(P K)_e|
        var = (s["x1_k2"] + a * a * s["z0"] + b * b * s["z2"] + 2 * a * s["x2_k"] + 2 * b * s["x1_k"]
               + 2 * a * b * s["z1"])
        delta = np.sum(grad_out * out, axis=-1, keepdims=True)
        r = lse_roundings(lse, M, sink)[..., None]
        scores = LAMBDA * scale * (np.sqrt(var) + r * (a + np.abs(delta) * b))
        kappa = delta_accumulation(out, grad_out, s["mass"], M=M, Dv=Dv)
        accumulate = (LAMBDA * scale * (np.sqrt(s["rho_k2"] + 2 * b * s["rho_k"] + b * b * s["rho"]) + kappa * b)
                      + (LAMBDA * (np.sqrt(M) + 2) + 3) * scale * s["ds_k"])
        stored = LAMBDA * scale * b * np.sqrt(stored_output_squares(out, grad_out, dtype))
        e_hat, lo, hi = self.stored_output_move(out, grad_out, dtype=dtype, M=M)
        ends = (-scale * (e_hat + lo) * s["pk"], -scale * (e_hat + hi) * s["pk"])
        return LeanTerms(scores, accumulate, stored, np.minimum(*ends), np.maximum(*ends))


def delta_accumulation(out, grad_out, mass, *, M: int, Dv: int):
    """kappa (.., R, 1): delta formed from O instead of P dP, its sum over Dv and O's over M, one per row
    (`check.lean_gradient_terms`); mass: P |V| (.., R, Dv)."""
    return ((np.sqrt(Dv) + 2) * np.sum(np.abs(grad_out) * np.abs(out), axis=-1, keepdims=True)
            + (np.sqrt(M) + 2) * np.sum(np.abs(grad_out) * mass, axis=-1, keepdims=True))


def stored_output_squares(out, grad_out, dtype: str):
    """sum_e dO^2 O^2 (.., R, 1), O no smaller than the dtype's smallest normal: the stored O's roundings,
    squared (`check.lean_gradient_terms`)."""
    return np.sum((grad_out * np.maximum(np.abs(out), min_normal(dtype))) ** 2, axis=-1, keepdims=True)


def stored_output_move(out, grad_out, mass, spread, flushed, *, dtype: str, M: int):
    """(e^, lo, hi) (.., R, 1): delta_n formed from O as stored minus from O exact, sum_e dO_ne (round(O_ne) - O_ne),
    where a float32 forward's O rounds as the reference's does, and where it may not (within f of a boundary) the
    least and most rounding across it adds (each element's move dO (across - round(O)), by sign). f, the float32
    forward's error before O's rounding, per element as `check.lean_gradient_terms` takes the backward's: the
    scores move O_e by sum_m eps_m P_m (V_me - O_e) (spread: sum sigma^2 P^2 (V - O)^2), LAMBDA u sqrt(spread);
    the P V sum and the normaliser (its sum, the division), LAMBDA u ((sqrt(M) + 2) (P |V| + |O|) + |O|); weights a
    float32 exp flushes, `flushed` = tiny sum_m |V_me| (mass: P |V|, out, grad_out (.., R, Dv))."""
    from attnbench.budget import LAMBDA, rounding_interval

    u = UNIT_ROUNDOFF["float32"]
    f = LAMBDA * u * (np.sqrt(spread) + (np.sqrt(M) + 2) * (mass + np.abs(out)) + np.abs(out)) + flushed
    stored = round_to_dtype(np.where(np.isfinite(out), out, 0.0), dtype)
    lower, upper = rounding_interval(stored, dtype)
    moves = [np.where(out - lower <= f, grad_out * 2 * (lower - stored), 0.0),     # to the value below, or
             np.where(upper - out <= f, grad_out * 2 * (upper - stored), 0.0)]     # above (half a gap each way)
    e_hat = np.sum(grad_out * (stored - out), axis=-1, keepdims=True)
    lo = sum(np.sum(np.minimum(m, 0.0), axis=-1, keepdims=True) for m in moves)
    hi = sum(np.sum(np.maximum(m, 0.0), axis=-1, keepdims=True) for m in moves)
    return e_hat, lo, hi
