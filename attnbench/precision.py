"""Declared precision: how a backend computes for one input dtype, and the error bound that follows from it.

The 2x-naive rule (`budget`, condition 2) holds a float16/bfloat16 kernel to twice the error of the plain
formula computed in the half dtype, which rounds S, P and O to the half type: several output ulps of room.
A kernel that computes its scores and accumulates in float32 (every FlashAttention-style kernel) errs far
less, and one that claims so is held to what its claim implies:

    Precision(scores="float32", p_rounded=True, accumulate="float32")    # FlashAttention's forward

Per output element (b, h, n, e) of such a kernel, with inputs exactly representable in the input dtype
(`problem.make_inputs`), the terms of `budget`'s condition 1, each at the precision where it happens:

    scores and statistics   LAMBDA u_s (sqrt(D) + 2) T_n  x  spread_ne              (u_s: `scores`)
    exp, P V sum, 1/l       LAMBDA u_a (sqrt(M) + 2) S_ne                             (u_a: `accumulate`)
    P rounded for P V       LAMBDA u_p sqrt(max(sum_m P_nm^2 v_me^2, sum_m P_nm^2 (v_me - O_ne)^2))
                            + LAMBDA eta_p sqrt(sum_{m visible} (|v_me| + |O_ne|)^2)  (p_rounded: u_p = u_in)
    one output rounding     u_in (|O_ne| + the terms above) + eta_in

T, S, spread as in `budget` (T the largest |scale q k| + |bias| the row sees, S = sum_m P |v|). P rounding:
FlashAttention rounds p = exp(s - m_running) in [0, 1] to the input dtype for the tensor-core GEMM, a
relative error |delta_m| <= u_p, independent and mean-zero per element (round to nearest), so by Hoeffding
(the probabilistic model of Higham & Mary 2019) the error it leaves, sum_m delta_m P_nm v_me where the
denominator sums the unrounded p (FlashAttention 2) or sum_m delta_m P_nm (v_me - O_ne) where it sums the
rounded ones (torch's CPU flash kernel), stays within LAMBDA u_p sqrt(sum of the squared terms) with the
probability of condition 1; the larger of the two covers either kernel. Below the dtype's smallest
normal the rounding is absolute, at most eta_p = half the smallest subnormal (2^-25 in float16; negligible in
bfloat16); the later rescaling by exp(m_running - m) / l <= 1 only shrinks it. eta_in is the same for the
output's own rounding of a subnormal result.

lse: LAMBDA u_s (sqrt(D) + 2) T + LAMBDA u_a (sqrt(M) + 2) + u_lse |lse|, u_lse the unit roundoff of the
dtype the lse comes back in (float32 for every kernel here).

Backward (dQ, dK, dV), first order, as `budget.backward_floor` with u_s for the three score terms and
u_g = `grad_accumulate` for dP = dO V^T, delta and the GEMMs, plus, where `ds_rounded` (FlashAttention 2
rounds P for dV = P^T dO and dS for dQ = scale dS K, dK = scale dS^T Q to the input dtype), one independent
rounding per GEMM operand: LAMBDA u_in R_g with R_g the largest root-sum-of-squares of the rounded terms
behind one element (`check.backward_magnitudes`), plus the subnormal term, plus delta formed from the
stored (rounded) output (`budget.stored_output_floor`) and one rounding of the gradient. One scalar per
gradient, at least each element's own bound (on sampled rows: `row_bound.backward_row_scales`).

The lean test (`budget.lean`) leaves out an element whose exact value lies within the kernel's possible error
before its final rounding of a rounding boundary: each element's own share of the bound above
(`backward_before_rounding` on its terms), and for dQ and dK the smaller of that and a second bound, each
element's own first-order error with the independent roundings behind it added by Hoeffding and delta formed
from the stored output as the one-sided move it makes (`check.lean_gradient_terms`,
`backward_lean_before_rounding`): the first is several float16 ulps of dQ and dK (no element was tested), the
second about a tenth to a third of one for dQ, a few percent of dK's elements inside.

A backend that declares nothing for a dtype keeps `budget`'s two conditions alone. The declaration is
measured, not assumed (`scripts/precision_units.py`, `reports/precision/`), every conformance check holds
a backend to its claim, `tests/test_precision.py` pins the rules on synthetic kernels, and a
kernel that cannot meet a float32 backward (torch's CPU flash kernel, `attnbench.deviations`) declares the
accumulation it has.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys, D, Dv head dims, R rows.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

INPUT = "input"          # "the input dtype", in a declaration that holds for several dtypes


@dataclass(frozen=True)
class Precision:
    """How a kernel computes for one input dtype (see the module docstring for the bound each implies).

    scores: dtype of S = scale Q K^T + bias and of the softmax statistics (m, l).
    p_rounded: P rounded to the input dtype before the P V product (FlashAttention's tensor-core GEMM).
    accumulate: dtype P V (and exp, 1/l) accumulates in; the output is rounded once to the input dtype.
    grad_accumulate: dtype of dP = dO V^T, delta and the dQ, dK, dV sums; None: no backward claim.
    ds_rounded: backward rounds P (for dV) and dS (for dQ, dK) to the input dtype before those GEMMs.
    """

    name: str
    scores: str = "float32"
    p_rounded: bool = False
    accumulate: str = "float32"
    grad_accumulate: str | None = "float32"
    ds_rounded: bool = False

    def resolved(self, field: str, dtype: str) -> str:
        """The dtype a field names for input `dtype` ("input" means the input dtype itself)."""
        value = getattr(self, field)
        return dtype if value == INPUT else value

    def describe(self, dtype: str) -> str:
        p = f"P rounded to {dtype} for P·V" if self.p_rounded else "P kept"
        grad = ("no backward claim" if self.grad_accumulate is None else
                f"backward accumulates in {self.resolved('grad_accumulate', dtype)}"
                + (f", P and dS rounded to {dtype}" if self.ds_rounded else ""))
        return (f"{self.name}: scores in {self.resolved('scores', dtype)}, {p}, accumulation in "
                f"{self.resolved('accumulate', dtype)}, output rounded once; {grad}")


# The models our backends declare (each measured: `scripts/precision_units.py`, `reports/precision/`).
FLOAT32_INTERNAL = Precision("float32 internally")
FLASH = Precision("FlashAttention", p_rounded=True, ds_rounded=True)
HALF_DTYPES = ("float16", "bfloat16")


def for_half(precision: Precision) -> tuple[tuple[str, Precision], ...]:
    """A `Capabilities.precision` declaring `precision` for float16 and bfloat16 inputs."""
    return tuple((dtype, precision) for dtype in HALF_DTYPES)


# Half the smallest subnormal: the absolute rounding error below the smallest normal (float16 2^-24 / 2).
HALF_SUBNORMAL = {"float16": 2.0**-25, "bfloat16": 2.0**-134, "float32": 2.0**-150, "float64": 0.0}


@dataclass(frozen=True)
class RowStats:
    """Per query row sums the forward bounds are built from (grouped (B, Hkv, G, R[, Dv])).

    t_seen: largest |scale q k| + |bias| over keys with P > 0;  t_finite: over unmasked keys.
    mass: sum_m P |v|;  p_sum: sum_m P.
    flushed: sum_m min(P, tiny) |v|: what weights that underflow to 0 can lose (`budget.FLUSH_THRESHOLD`).
    subnormal_v: sum of |v| over the keys whose weight 0 < P < the dtype's smallest normal (row_stats'
        `min_normal`): a P held in the dtype there is off by up to half the subnormal spacing, not u P.
    Only a declared P rounded to the input dtype needs the rest (None until computed: `rounded_p`):
    p2_v2, p2_vs, p2: sum_m P^2 v^2, P^2 v (signed), P^2;  vis_v2, vis_v, visible: sum over unmasked keys of
    v^2, |v|, 1.
    """

    t_seen: np.ndarray
    t_finite: np.ndarray
    mass: np.ndarray
    p_sum: np.ndarray
    flushed: np.ndarray | float = 0.0
    subnormal_v: np.ndarray | float = 0.0
    p2_v2: np.ndarray | None = None
    p2_vs: np.ndarray | None = None
    p2: np.ndarray | None = None
    vis_v2: np.ndarray | None = None
    vis_v: np.ndarray | None = None
    visible: np.ndarray | None = None

    @property
    def rounded_p(self) -> bool:
        """Whether the sums a declared P rounded to the input dtype needs are here."""
        return self.p2_v2 is not None

    def with_rounded_p(self, **sums) -> "RowStats":
        """These stats with the rounded-P sums (`row_bound.rounded_p_sums`) added."""
        return replace(self, **sums)


def _sum_sq_shifted(sq: np.ndarray, lin: np.ndarray, count: np.ndarray, o: np.ndarray) -> np.ndarray:
    """sum_m w_m (v_m + o)^2 from sum w v^2, sum w v and sum w (w = P^2, or 1 over visible keys), >= 0 (NaN
    where a row holds NaN: its bound is then NaN, and `budget.compare` fails any mismatch there)."""
    with np.errstate(invalid="ignore"):
        return np.maximum(sq + 2 * o * lin + count[..., None] * o * o, 0.0)


def model_bounds(stats: RowStats, out: np.ndarray, lse: np.ndarray, *, precision: Precision, dtype: str,
                 D: int, M: int, lse_dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(bound on |O - O_ref| (.., R, Dv), bound on |lse - lse_ref| (.., R)) under the declared `precision`.

    out, lse: the reference at the rows (grouped like `stats`); lse_dtype: the dtype the lse is returned in.
    """
    from attnbench.budget import LAMBDA, UNIT_ROUNDOFF

    u_in = UNIT_ROUNDOFF[dtype]
    u_s = UNIT_ROUNDOFF[precision.resolved("scores", dtype)]
    u_a = UNIT_ROUNDOFF[precision.resolved("accumulate", dtype)]
    o = np.abs(out)
    score = LAMBDA * u_s * (np.sqrt(D) + 2) * stats.t_seen
    inner = score[..., None] * (stats.mass + stats.p_sum[..., None] * o) + LAMBDA * u_a * (np.sqrt(M) + 2) * stats.mass
    inner = inner + stats.flushed                                  # weights below the flush threshold become 0
    if precision.p_rounded:
        if not stats.rounded_p:
            raise ValueError("model_bounds: P rounded to the input dtype is declared but the row statistics were "
                             "made without its sums (row_stats(rounded_p=True) or RowStats.with_rounded_p)")
        shifted = _sum_sq_shifted(stats.p2_v2, stats.p2_vs, stats.p2, -np.where(np.isfinite(out), out, 0.0))
        inner = inner + LAMBDA * u_in * np.sqrt(np.maximum(stats.p2_v2, shifted))
        inner = inner + LAMBDA * HALF_SUBNORMAL[dtype] * np.sqrt(
            _sum_sq_shifted(stats.vis_v2, stats.vis_v, stats.visible, o))
    empty = stats.p_sum == 0                                       # a row that sees no key: O must be exactly 0
    bound = np.where(empty[..., None], 0.0, inner + u_in * (o + inner) + HALF_SUBNORMAL[dtype])
    finite = np.isfinite(lse)
    lse_bound = np.where(finite, LAMBDA * u_s * (np.sqrt(D) + 2) * stats.t_finite + LAMBDA * u_a * (np.sqrt(M) + 2)
                         + UNIT_ROUNDOFF[lse_dtype] * np.abs(np.where(finite, lse, 0.0)), 0.0)
    return bound, lse_bound


def backward_model_bound(precision: Precision, dtype: str, *, D: int, Dv: int, length: int, score_max: float,
                         terms_max: float, rounded_rms: float, rounded_count: int, operand_max: float,
                         result_max: float, stored_output: float) -> float:
    """The declared-precision bound on one gradient (module docstring, "Backward"); the caller checks that
    `precision.grad_accumulate` is declared first.

    terms_max: largest sum of |terms| behind one element; rounded_rms: largest root-sum-of-squares of the rounded
    GEMM terms behind one element; rounded_count, operand_max: the number of rounded terms per element and the
    largest |other operand| (for the subnormal part); stored_output: `budget.stored_output_floor`'s share.
    """
    from attnbench.budget import UNIT_ROUNDOFF

    inner = backward_before_rounding(precision, dtype, D=D, Dv=Dv, length=length, score_max=score_max,
                                     terms=terms_max, rounded_rms=rounded_rms, rounded_count=rounded_count,
                                     operand_max=operand_max, stored_output=stored_output)
    return float(inner + UNIT_ROUNDOFF[dtype] * (result_max + inner) + HALF_SUBNORMAL[dtype])


def backward_before_rounding(precision: Precision, dtype: str, *, D: int, Dv: int, length: int, score_max: float,
                             terms, rounded_rms, rounded_count: int, operand_max: float, stored_output):
    """The part of `backward_model_bound` that comes before the gradient's own rounding: a scalar from the
    largest terms, or per element where `terms`, `rounded_rms` and `stored_output` are arrays of each element's
    own (what the lean test leaves a correct kernel near a rounding boundary, `budget.lean`)."""
    from attnbench.budget import LAMBDA, UNIT_ROUNDOFF

    u_in = UNIT_ROUNDOFF[dtype]
    u_s = UNIT_ROUNDOFF[precision.resolved("scores", dtype)]
    u_g = UNIT_ROUNDOFF[precision.resolved("grad_accumulate", dtype)]
    reach = LAMBDA * (3 * u_s * (np.sqrt(D) + 2) * score_max + u_g * (np.sqrt(Dv) + 2 + 2 * (np.sqrt(length) + 2)))
    inner = reach * np.asarray(terms, dtype=np.float64) + stored_output
    if precision.ds_rounded:
        inner = inner + LAMBDA * (u_in * np.asarray(rounded_rms, dtype=np.float64)
                                  + HALF_SUBNORMAL[dtype] * np.sqrt(rounded_count) * operand_max)
    return inner


@dataclass(frozen=True)
class LeanTerms:
    """Per element of dQ or dK, the coefficients of its error before the final rounding (`check.lean_gradient_terms`):
    u_s scores + u_g accumulate + u_in stored, with u_s, u_g the declared scores' and accumulation's unit roundoffs
    and u_in the input dtype's (`precision.backward_lean_before_rounding`)."""

    scores: np.ndarray
    accumulate: np.ndarray
    stored: np.ndarray       # delta from the stored O, its share either way (Hoeffding over O's roundings)
    # ... or the move it makes, known where O's rounding is (a float32 forward): between these two
    shift_low: np.ndarray
    shift_high: np.ndarray


def backward_lean_before_rounding(precision: Precision, dtype: str, terms, *, rounded_rms, rounded_count: int,
                                  operand_max: float) -> tuple:
    """(below, above): a second bound on each dQ, dK element's error before its own rounding, the kernel's value
    within [exact - below, exact + above], from `check.lean_gradient_terms`'s per-element coefficients `terms`
    (u_s scores + u_g accumulate either way, and delta from the stored O: its exact move where the forward is
    float32, else u_in stored either way), where `backward_before_rounding` takes the largest score and sums of
    |terms|; the lean test takes the smaller of the two on each side. Where P is rounded to the input dtype for
    P V (`p_rounded`), the O that delta may be formed from errs by u_in, not u_s, which that derivation does not
    carry: inf there (the other bound stands; such a kernel's dQ and dK are several half-ulps off before their
    rounding anyway, through dS rounded to the dtype)."""
    from attnbench.budget import LAMBDA, UNIT_ROUNDOFF

    if precision.p_rounded:
        return np.inf, np.inf
    u_in, u32 = UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF["float32"]
    u_s = UNIT_ROUNDOFF[precision.resolved("scores", dtype)]
    u_g = UNIT_ROUNDOFF[precision.resolved("grad_accumulate", dtype)]
    either = u_s * terms.scores + u_g * terms.accumulate
    if precision.ds_rounded:
        either = either + LAMBDA * (u_in * np.asarray(rounded_rms, dtype=np.float64)
                                    + HALF_SUBNORMAL[dtype] * np.sqrt(rounded_count) * operand_max)
    if max(u_s, UNIT_ROUNDOFF[precision.resolved("accumulate", dtype)]) > u32:     # the move is known at float32
        return either + u_in * terms.stored, either + u_in * terms.stored
    return either + np.maximum(-terms.shift_low, 0.0), either + np.maximum(terms.shift_high, 0.0)
