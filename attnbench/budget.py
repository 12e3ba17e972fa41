"""Error budgets and the one compare used by every suite.

A backend's output in a given dtype is held to two conditions:

1. An analytic, elementwise bound from rounding-error analysis. Inputs are
   exactly representable (see `problem.make_inputs`), so all error comes from
   the arithmetic. With u the dtype's unit roundoff and the probabilistic model
   of Higham & Mary (2019), a length-L sum of products is off by at most
   LAMBDA * sqrt(L) * u * sum|terms| (LAMBDA = 6 fails with probability about
   exp(-LAMBDA^2 / 2) ~ 1.5e-8 per element). Per output element (b, h, n, e):

       score error     ds_nm <= LAMBDA u (sqrt(D) + 2) T_nm,
                       T_nm = scale sum_d |q_nd k_md| + |bias_nm|   (dot, scaling, bias add)
       softmax/PV      dO_ne = sum_m P_nm ds_nm (v_me - O_ne)       (first-order, exact)
                       so |dO| <= max_m ds_nm * R_ne,  R_ne = sum_m P_nm |v_me - O_ne|
                       <= S_ne + |O_ne| (triangle inequality; avoids an (N, M, Dv) array)
       PV sum, P and exp rounding:  LAMBDA u (sqrt(M) + 2) S_ne,  S_ne = sum_m P_nm |v_me|
       final rounding: u |O_ne|

   Rows with every key masked have P = 0, so their bound is exactly 0: the
   output must be exactly zero there.

2. Not much worse than the plain formula in the backend's own dtype (the
   FlashAttention test rule): |error| <= NAIVE_MULTIPLE * (max error of
   torch matmul-softmax-matmul in that dtype) + floor, elementwise in the floor.

   The floor is what any correct kernel may err without being sloppier than
   the naive one, and it must hold with the same confidence as condition 1
   (a false alarm is a bug). It is the larger of two terms:

   a. reordering: (u + sqrt(L) * u_acc) * max|O|, one rounding of the largest
      output plus what summing the reductions behind it (total length L, see
      `compare`) in another order may cost in the accumulation precision
      u_acc (float32 for float16/bfloat16, as every sane kernel and torch's
      own naive path accumulate; the dtype itself otherwise). A tiled kernel
      rescales its accumulator once per key tile, so in float32/float64 it is
      legitimately a few ulps off where the naive error is itself a few ulps.

   b. the analytic floor (`forward_floor`, `backward_floor`): condition 1's
      bound re-derived with u_acc in place of u, plus one rounding of the
      result to the dtype. Term (a) scales with |O| alone, but the score
      error of a correct kernel scales with the scores' size T (a few ulps of
      a logit of 150 move P by 1e-5 relative), and the naive yardstick's own
      error is a max over the few elements a tiny problem has: with peaked
      rows and M = 2..3 keys it is sometimes lucky, and 2x of it plus (a)
      failed correct float32 kernels (torch_eager against itself, N 65, M 3,
      D 8, scale 1, peaked: 5.1e-6 against a limit of 4.27e-6, 0.02 of the
      analytic budget). Every correct kernel that accumulates in u_acc stays
      within (b) with the probability of condition 1, whatever the naive
      error was; no problem is narrowed to avoid it.

   What the floor keeps out: in float16/bfloat16, u_acc = 2^-24 is 2^13 to
   2^16 below the dtype's u, so (b) is far below the naive error and a kernel
   that accumulates (or rescales its running sum) in half precision still
   fails condition 2. In float32/float64, u_acc is the dtype's own u, so (b)
   is condition 1's bound and condition 2 adds nothing there: a float32
   kernel is held to the rounding analysis of float32 itself, which already
   fails a lower-precision accumulator (TF32, bf16) by orders of magnitude.

   Backward (`backward_floor`), per gradient g in dQ, dK, dV, first order:
   the score error ds <= LAMBDA u_acc (sqrt(D) + 2) T moves P by at most
   2 ds P (through exp and the normaliser) and reaches g through dS = P (dP -
   delta) and through delta = rowsum(dO O) (O carries the same score error):
   three score terms. dP = dO V^T adds a length-Dv sum; O and g itself add a
   length-max(N, M) sum each. With G_g the largest sum of |terms| behind one
   element of g (`check.backward_magnitudes`) and T_max >= every visible
   |score| + |bias| (Cauchy-Schwarz: scale max|q_n| max|k_m| + max|bias|):

       floor_g = LAMBDA u_acc (3 (sqrt(D) + 2) T_max + sqrt(Dv) + 2 + 2 (sqrt(max(N, M)) + 2)) G_g
                 + u max|g_ref|

   one scalar per gradient, at least as large as each element's own term.

   Where condition 2 sees a half-precision accumulator: a kernel that rounds its running O and denominator to
   float16/bfloat16 once per key tile adds about sqrt(M / tile) roundings of size u |O|, while the plain
   formula's error does not grow with M (its sums are float32). So the ratio grows like sqrt(M): measured with
   the half_precision_accumulator mutant (32-key tiles), float16 is 1.5x over the limit at M = 4097 and 2.2x
   at M = 16385 (bfloat16 1.5x and 16x), and hides under it at M <= 1024. The suite therefore runs half
   precision at M = 16385 (`conformance/long_cases.py`), which the row-sampled reference makes cheap.

   Where it sees one in the backward (`half_accumulator_length`): a hand-written backward sums dK and dV of a
   key tile over query tiles and dQ of a query tile over key tiles (FlashAttention 2; Triton tutorial 06 steps
   32 rows at a time). Kept in float16/bfloat16 and rounded once per tile of T terms, a sum over L terms (L = N
   for dK, dV; M for dQ) takes n = L / T roundings, each within u |partial sum|; the partial sums of a
   zero-mean sum have the final value's rms r scaled by sqrt(i / n), so the errors add to a variance of
   u^2 r^2 n / 6, and the worst of the E checked elements errs about sqrt(2 ln E) times that. The plain formula
   sums in float32 (its error does not grow with L): c u max|g|, c measured from the naive yardstick (1.2 to
   1.6 for dK, dV; 3.0 for dQ, bfloat16), so condition 2's limit is (2 c + 1) u max|g| with floor (a), and the
   accumulator exceeds it past

       L* = 6 T ((2 c + 1) (max|g| / r) / sqrt(2 ln E))^2

   With T = 32 and the measured peak-to-rms max|g| / r (about 4 for dK, dV of N = 4097 queries against
   M = 64 keys, 3.3 for dQ of N = 16 queries against M = 32769 keys), L* is about 2,100 (dK) and 2,700 (dV)
   queries in float16 and 6,900 keys for dQ in bfloat16; measured with the dkdv_half_accumulator and
   dq_half_accumulator mutants, the limit is crossed near N = 1,500 (1.6x the limit at N = 4097 in both
   dtypes) and M = 8,600 (1.4x at 16385, 2.4x at 32769). The other half-precision backward cases sum at most
   513 queries into dK, dV and 4,097 keys into dQ, below L*, where it hides. The cases (`conformance/cases.py`,
   `HALF_ACCUMULATOR`) run at 3 to 5 L*: long N against M = 64 for dK, dV; N = 16 against long M for dQ, the
   other side short so each costs about a second. Condition 3 holds a backend that declares float32
   accumulation to it on those sampled rows too (`row_bound.backward_row_scales`): dV kept in the half dtype
   fails it (1.3x float16, 4.4x bfloat16 at N = 8193) and at short lengths already (1.3x at N = 113 in
   bfloat16, the flash grid), dQ in bfloat16 at M = 32769 1.25x; dK's declared bound is looser (its score term
   takes T_max by Cauchy-Schwarz times the largest sum of |terms|: 0.2x to 0.3x), so condition 2 sees dK.

   float16's dQ is the exception: past M of about 16k a weight P ~ 1/M is below float16's smallest normal
   (6.1e-5), the plain formula rounds it absolutely, and its own error grows with M, faster than the
   accumulator's (0.17x the limit at M = 8193, 0.04x at 65537). What does show there is swamping: with
   peaked rows (scale 0.5, scores of spread 4) a few keys make dQ, and the later keys' shares fall under half
   an ulp of the running sum and are lost, an error that grows linearly in the tiles: 1.3x to 4.9x the limit
   at M = 65537 over five draws (seeds; scale 0.4 to 0.6), 1.1x at 32769; so that case runs at M = 65537
   (`conformance/long_cases.py`, 3.9x). The cases as drawn: float16 dK 2.2x, dV 2.4x the limit at
   N = 8193; bfloat16 1.9x, 2.1x; dQ in bfloat16 2.1x at M = 32769; the correct twins at most 0.31x.

   In float16/bfloat16 one more term is the dtype's, not the accumulator's:
   FlashAttention's backward (and torch's CPU flash kernel) forms
   delta = rowsum(dO O) from the output O as stored, rounded to the dtype,
   where the naive autograd path uses P instead. That moves delta_n by at
   most eps_n = u sum_e |dO_ne| |O_ne| (a hard bound: one rounding per
   element), dS by P_nm eps_n, and so (`stored_output_floor`)

       dQ_nd by scale sum_m P_nm eps_n |K_md|,   dK_md by scale sum_n P_nm eps_n |Q_nd| (over the group),

   dV not at all. Where dS nearly cancels (peaked rows: P ~ one-hot, dP ~
   delta) this is larger than the naive error (torch_sdpa_flash, bfloat16,
   N = M = 3, D 8, peaked: dQ 5x the naive error, 1.2x the 2x limit, while a
   kernel using P sits at 0.1x); it does not grow with M and is zero where
   dO O vanishes, so a half-precision accumulator still fails.

3. Declared precision (`attnbench.precision`): a backend that declares how it computes for a dtype (scores
   and statistics in float32, P rounded to the input dtype for P V, float32 accumulation, one output
   rounding) is held, on top of 1 and 2, to the bound that model implies, derived the same way. In float16 and
   bfloat16 it is one to a few output ulps where condition 2 allows several: a float16-rounded scale or a
   per-tile statistic kept in the half dtype shows here. A backend that declares nothing is not asked.

4. No lean (`lean`), for a backend that declares its precision (3): its result is its float32 value rounded
   once to nearest, so its errors are as often above as below. In float16/bfloat16,
   measured against the reference rounded to the dtype, in units of the dtype's spacing there, each row of
   the verdict (all axes but the last: a query row of O or dQ, a key row of dK or dV) gets a signed sum of its
   elements' errors, once as they are (round-up leans positive) and once relative to the reference's sign
   (truncation leans toward zero). Rows are independent and, for a correct kernel, each sum is symmetric about
   zero, so the count of rows leaning up is Binomial(J, 1/2) whatever the error distribution (a sign test: no
   variance to estimate, heavy tails and rows of one-hot P included). A kernel's float32 internals may still
   tilt a result that sits near a rounding boundary a little (torch's CPU flash kernel: 51.3% of 69,000 float16
   rows lean away from zero, on every seed tried, a mean of +0.015 ulp), which is not the class of bug; so
   the test is against a lean of LEAN_TOLERANCE: a verdict fails when either count is beyond the two-sided
   LEAN_FALSE_ALARM quantile of Binomial(J, 1/2 + LEAN_TOLERANCE) (1e-9 per test: a thorough campaign of 10^6
   verdicts flags a correct kernel with probability about 10^-3). The classes it is for lean far more: a
   one-sided output rounding 100% of rows, a scale rounded to float16 72% toward zero (bfloat16, scale 0.3:
   85% away). Needs a few dozen rows to see anything. Rounded references and rows, not raw errors and
   elements: a row of one-hot P snaps to a representable value of V, so its raw errors lean toward |O| larger;
   errors within one row share the row's normaliser. An element whose exact value sits within the declared
   model's pre-rounding error of a rounding boundary is left out (`lean`, slack; in the backward each element's
   own, dQ and dK from `check.lean_gradient_terms`, where delta formed from the stored O moves them one way). Not for a backend that
   declares nothing: a kernel computing in the half dtype (the plain formula) rounds shared quantities there,
   and where P is uniform (inputs of 2^-10) every row rounds the same 1/M the same way, so its rows lean
   together, legitimately, and are not independent. Not in float32/float64: there the kernel's own
   approximations (a vectorised exp of a few ulps) are the size of the output's ulp and may lean legitimately.

Gradients use condition 2 (the naive backward is torch autograd through the
same plain formula) with the same multiple and floors. One exception: where a
gradient is identically zero (every query reaches one key: M = 1, N = 1 with
top-left causal, ...), dS = P (dP - rowsum(dO O)) cancels exactly, a reordered
sum leaves a rounding-sized residue, and max|dQ| ~ 0 would make floor (a) ~ 0;
when max|gradient| < u * (largest sum of |terms| behind an element, see
`check.backward_magnitudes`) the floor's magnitude is that sum of |terms|.
Any gradient above that keeps the floor relative to max|gradient|, so no
other budget changes.

NaN in the expected output (NaN or Inf inputs) must be matched by NaN in the
actual output; anything else where the expected value is NaN is an error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnbench.precision import HALF_DTYPES

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
ACCUMULATION_DTYPE = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}
LAMBDA = 6.0
NAIVE_MULTIPLE = 2.0


# Weights exp(s - m) below these underflow to 0 in a kernel: the smallest normal float32 for every dtype a kernel
# computes its softmax in float32 (half and float32 inputs; GPU exp is ex2.approx.ftz, flushing subnormals), the
# smallest normal float64 for float64. Only a weight P < tiny can be lost (the running max m is at most the row's
# final max, and the denominator is >= 1 in its frame), so the output can lose sum_m min(P_m, tiny) |v_m|: nothing
# in practice, but a sink far above every score (P ~ 1e-57 for all keys) makes it the whole output.
FLUSH_THRESHOLD = {"float16": float(np.finfo(np.float32).tiny), "bfloat16": float(np.finfo(np.float32).tiny),
                   "float32": float(np.finfo(np.float32).tiny), "float64": float(np.finfo(np.float64).tiny)}
# A weight held in the input dtype (the plain formula's P, FlashAttention's P rounded for P V) below the dtype's
# smallest normal is off by up to half the subnormal spacing, absolutely, not u P: condition 1 adds
# HALF_SUBNORMAL sum |v_m| over those keys (float16 below 2^-14: a drawn problem whose sink dwarfed its one key,
# P ~ 3e-8, had the plain float16 formula itself at 1.25x condition 1 without it).


def naive_floor(dtype: str, reduction_length: int, magnitude: float) -> float:
    """Absolute error any correct kernel may add beyond the naive one (see condition 2 above)."""
    u_acc = UNIT_ROUNDOFF[ACCUMULATION_DTYPE[dtype]]
    return (UNIT_ROUNDOFF[dtype] + np.sqrt(reduction_length) * u_acc) * magnitude


def forward_floor(bound: np.ndarray, expected: np.ndarray, dtype: str) -> np.ndarray:
    """Floor (b) of condition 2 (B, H, R, Dv): condition 1's bound at the accumulation precision + one rounding.

    bound: condition 1's bound in `dtype` on the same rows (`forward_bound`, `row_bound.row_bounds`); every
    term of it is a multiple of u, so rescaling it by u_acc / u re-derives it at the accumulation precision.
    expected: the reference output on those rows.
    """
    rescale = UNIT_ROUNDOFF[ACCUMULATION_DTYPE[dtype]] / UNIT_ROUNDOFF[dtype]
    return bound * rescale + UNIT_ROUNDOFF[dtype] * np.abs(np.where(np.isfinite(expected), expected, 0.0))


def half_accumulator_length(*, tile: int, naive_ulps: float, peak_to_rms: float, elements: int) -> float:
    """L*: the summed length past which a gradient accumulator kept in the half input dtype, rounded once per
    `tile` terms, exceeds condition 2's limit at its worst element (module docstring, "Where it sees one in
    the backward"): 6 tile ((2 naive_ulps + 1) peak_to_rms / sqrt(2 ln elements))^2.

    naive_ulps: the naive yardstick's worst error in units of u max|g|; peak_to_rms: max|g| / rms(g);
    elements: the number of checked elements of that gradient.
    """
    spread = np.sqrt(2 * np.log(max(elements, 2)))
    return float(6 * tile * ((NAIVE_MULTIPLE * naive_ulps + 1) * peak_to_rms / spread) ** 2)


def score_magnitude(q, k, bias, scale: float) -> float:
    """T_max >= |scale q_n . k_m| + |bias_nm| over every visible (finite-bias) pair, in O((N + M) D).

    q (B, H, N, D), k (B, Hkv, M, D); Cauchy-Schwarz bounds sum_d |q_nd k_md| by |q_n| |k_m| (2-norms).
    """
    def largest_norm(x):
        norms = np.linalg.norm(np.where(np.isfinite(x), x, 0.0), axis=-1)
        return float(np.max(norms)) if norms.size else 0.0

    bias = np.asarray(bias, dtype=np.float64)
    finite = bias[np.isfinite(bias)]
    return abs(scale) * largest_norm(q) * largest_norm(k) + (float(np.max(np.abs(finite))) if finite.size else 0.0)


def backward_floor(dtype: str, *, D: int, Dv: int, length: int, score_max: float, terms_max: float,
                   result_max: float) -> float:
    """Floor (b) of condition 2 for one gradient (see the module docstring, "Backward").

    length: max(N, M); score_max: `score_magnitude`; terms_max: the largest sum of |terms| behind one element
    of the gradient (`check.backward_magnitudes`); result_max: max|gradient| of the reference.
    """
    u_acc = UNIT_ROUNDOFF[ACCUMULATION_DTYPE[dtype]]
    reach = 3 * (np.sqrt(D) + 2) * score_max + np.sqrt(Dv) + 2 + 2 * (np.sqrt(length) + 2)
    return float(LAMBDA * u_acc * reach * terms_max + UNIT_ROUNDOFF[dtype] * result_max)


def stored_output_floor(p, q, k, out, grad_out, scale: float, dtype: str) -> tuple[float, float, float]:
    """The (dQ, dK, dV) error of forming delta from the output rounded to a half dtype (0 otherwise).

    p (B, H, N, M) softmax weights, q (B, H, N, D), k (B, Hkv, M, D), out and grad_out (B, H, N, Dv).
    """
    return tuple(finite_max(x) for x in stored_output_terms(p, q, k, out, grad_out, scale, dtype))


def stored_output_terms(p, q, k, out, grad_out, scale: float, dtype: str) -> tuple:
    """`stored_output_floor` per element: dQ (B, H, N, D), dK (B, Hkv, M, D), and 0.0 for dV (no delta in it);
    (0.0, 0.0, 0.0) where the dtype accumulates in itself."""
    if ACCUMULATION_DTYPE[dtype] == dtype:
        return 0.0, 0.0, 0.0
    B, H, N, _ = q.shape
    Hkv = k.shape[1]
    eps = UNIT_ROUNDOFF[dtype] * np.sum(np.abs(grad_out) * np.abs(out), axis=-1, keepdims=True)   # (B, H, N, 1)
    weighted = np.where(np.isfinite(p), p, 0.0) * np.where(np.isfinite(eps), eps, 0.0)          # (B, H, N, M)
    dq = abs(scale) * (weighted @ np.abs(np.repeat(k, H // Hkv, axis=1)))                       # (B, H, N, D)
    dk = abs(scale) * (weighted.swapaxes(-1, -2) @ np.abs(q))                                   # (B, H, M, D)
    dk = dk.reshape(B, Hkv, H // Hkv, *dk.shape[2:]).sum(axis=2)
    return dq, dk, 0.0


def finite_max(x) -> float:
    """max |x| over its finite elements (0 if none): a bound's scale where non-finite inputs leave NaN or inf in
    some rows (they are judged apart: matching NaN is no error), so one NaN does not make the bound NaN."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    return float(np.max(np.where(np.isfinite(x), x, 0.0), initial=0.0))


@dataclass(frozen=True)
class SinkGradTerms:
    """What `sink_grad_bound` needs of a problem's reference, per row (B, H, N) unless said: see there."""

    p_sink: np.ndarray        # exp(sink - lse)
    delta: np.ndarray         # |rowsum(dO O)|
    weighted_dp: np.ndarray   # U = sum_m P |dP|
    reach: np.ndarray         # W = sum_m P sum_e |dO| |V|
    flushed: np.ndarray       # F = sum_m min(P, tiny) |dP|
    stored: np.ndarray        # sum_e |dO| |O|
    score_size: np.ndarray    # (sqrt(D) + 2 + extra roundings) max over visible keys of T
    sinks: np.ndarray         # (H,) the logits
    result: np.ndarray        # (H,) the reference's d sink
    M: int
    Dv: int


def sink_grad_terms(p, p_sink, v, grad_out, out, sinks, result, score_size, dtype: str) -> SinkGradTerms:
    """`SinkGradTerms` from the reference's weights p (B, H, N, M), P_sink (B, H, N), v (B, Hkv, M, Dv), dO and O
    (B, H, N, Dv), the logits and d sink (H,), and each row's score size (B, H, N)."""
    H, M = p.shape[1], p.shape[-1]
    vr = np.repeat(v, H // v.shape[1], axis=1)                                        # (B, H, M, Dv)
    dp = np.abs(grad_out @ vr.swapaxes(-1, -2))                                        # (B, H, N, M)
    return SinkGradTerms(p_sink, np.abs(np.sum(grad_out * out, axis=-1)), np.sum(p * dp, axis=-1),
                         np.sum(p * (np.abs(grad_out) @ np.abs(vr).swapaxes(-1, -2)), axis=-1),
                         np.sum(np.minimum(p, FLUSH_THRESHOLD[dtype]) * dp, axis=-1),
                         np.sum(np.abs(grad_out) * np.abs(out), axis=-1), score_size,
                         np.asarray(sinks, dtype=np.float64), np.asarray(result, dtype=np.float64), M, v.shape[-1])


def sink_grad_bound(t: SinkGradTerms, dtype: str, work: str | None = None) -> np.ndarray:
    """Bound (H,) on |d sink - d sink_ref| for the sinks' gradient d sink_h = -sum_{b,n} P_sink,bhn delta_bhn,
    delta_n = rowsum(dO O)_n = sum_m P_nm dP_nm, dP = dO V^T (`reference.sdpa_backward(return_sink_grad=True)`),
    first order, condition 1's model with u the unit roundoff of `work`, the dtype the kernel computes its
    scores, statistics and backward sums in (a declared precision's; None: the input dtype, as torch_eager's
    half path, which also rounds the sink logit there). Per row n:

        score error   ds_n = LAMBDA u (sqrt(D) + 2 + extra roundings) max_m T_nm over visible keys, + u |sink_h|
                      (the logit rounded to `work`): moves every P_nm by <= 2 ds_n P_nm (exp and normaliser),
                      so delta by <= 2 ds_n U_n, U_n = sum_m P_nm |dP_nm|
        P_sink        = exp(sink - lse): lse is off by <= ds_n + LAMBDA u (sqrt(M) + 2) (its sum), exp by u
        delta's sums  dP over Dv: LAMBDA u (sqrt(Dv) + 2) W_n, W_n = sum_m P_nm sum_e |dO_ne| |V_me|; the sum
                      over M: LAMBDA u (sqrt(M) + 2) U_n
        stored O      a half-precision kernel may form delta from O as stored (FlashAttention's backward):
                      u_dtype sum_e |dO_ne| |O_ne| (a hard bound, as `stored_output_floor`)
        flushed       weights a float32 exp flushes to 0 (FLUSH_THRESHOLD; a sink far above every key):
                      F_n = sum_m min(P_nm, tiny) |dP_nm|, in delta and through O, twice; and P_sink itself (a
                      sink far below the scores): min(P_sink, tiny) |delta_n|, absolute like the result's
                      own underflow in float32 (tiny): a d sink of 1e-294 is 0 in any kernel's float32
        the sum over the B N rows of head h: LAMBDA u (sqrt(B N) + 2) sum_n P_sink |delta_n|; one rounding of
        the result in the logits' float32 (or `work`, if coarser): u_r |d sink_h|

    In float16/bfloat16 a kernel that declares float32 internals is held to about float32's bound (plus the
    stored-O term): a sign slip in d sink is 2 |d sink|, far outside it; the plain half-precision formula is
    held to u of the dtype, where the bound is of the order of d sink itself (4 to 900 times it), so
    `check` also holds d sink to condition 2: twice the naive formula's error, floor this bound at float32.
    """
    u = UNIT_ROUNDOFF[work or dtype]
    lam = LAMBDA * u
    B, _, N = t.p_sink.shape
    ds = lam * t.score_size + u * np.abs(t.sinks)[None, :, None]
    stored = UNIT_ROUNDOFF[dtype] * t.stored if dtype in HALF_DTYPES else 0.0
    per_row = t.p_sink * (t.delta * (ds + lam * (np.sqrt(t.M) + 2) + u + lam * (np.sqrt(B * N) + 2))
                          + t.weighted_dp * (2 * ds + lam * (np.sqrt(t.M) + 2)) + t.reach * lam * (np.sqrt(t.Dv) + 2)
                          + stored + 2 * t.flushed) + np.minimum(t.p_sink, FLUSH_THRESHOLD[dtype]) * t.delta
    tiny = FLUSH_THRESHOLD["float32"]                  # the result's own underflow in the logits' float32
    return np.sum(per_row, axis=(0, 2)) + max(u, UNIT_ROUNDOFF["float32"]) * np.abs(t.result) + tiny


def forward_bound(q, k, v, bias, scale: float, dtype: str) -> np.ndarray:
    """Elementwise bound (B, H, N, Dv) on |O - O_ref| for q (B, H, N, D), k/v (B, Hkv, M, .).

    `bias` is the float64 additive bias broadcastable to (B, H, N, M) (0/-inf for bool masks and causal).
    """
    from attnbench.precision import HALF_SUBNORMAL
    from attnbench.reference import softmax
    from attnbench.reference.sdpa import bias_grouped, group_queries, ungroup

    u = UNIT_ROUNDOFF[dtype]
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    qg = group_queries(q, Hkv)
    bias = bias_grouped(bias, B, H, Hkv, N, M)
    s = scale * np.einsum("bkgnd,bkmd->bkgnm", qg, k) + bias
    p = softmax(s, axis=-1)                                                  # (B, Hkv, G, N, M)
    out = np.einsum("bkgnm,bkme->bkgne", p, v)
    finite_bias = np.where(np.isfinite(bias), np.abs(bias), 0.0)
    t = abs(scale) * np.einsum("bkgnd,bkmd->bkgnm", np.abs(qg), np.abs(k)) + finite_bias
    score_err = LAMBDA * u * (np.sqrt(D) + 2) * np.max(np.where(p > 0, t, 0.0), axis=-1)     # (B, Hkv, G, N)
    mass = np.einsum("bkgnm,bkme->bkgne", p, np.abs(v))
    spread = mass + np.sum(p, axis=-1, keepdims=True) * np.abs(out)
    flushed = np.einsum("bkgnm,bkme->bkgne", np.minimum(p, FLUSH_THRESHOLD[dtype]), np.abs(v))
    subnormal = np.where(np.sum(p, axis=-1, keepdims=True) > 0, HALF_SUBNORMAL[dtype], 0.0)   # O's rounding there
    # weights below the dtype's smallest normal, held in the dtype, off by half the subnormal spacing each
    low = ((p > 0) & (p < HALF_SUBNORMAL[dtype] / u)).astype(np.float64)
    subnormal_weights = HALF_SUBNORMAL[dtype] * np.einsum("bkgnm,bkme->bkgne", low, np.abs(v))
    bound = (score_err[..., None] * spread + LAMBDA * u * (np.sqrt(M) + 2) * mass + u * np.abs(out) + flushed
             + subnormal + subnormal_weights)
    return ungroup(bound)


def lse_bound(q, k, lse_ref, bias, scale: float, dtype: str) -> np.ndarray:
    """Elementwise bound (B, H, N) on |lse - lse_ref|: the largest score error plus rounding of the sum and log."""
    from attnbench.reference.sdpa import bias_grouped, group_queries, ungroup

    u = UNIT_ROUNDOFF[dtype]
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    bias = bias_grouped(bias, B, H, Hkv, N, M)
    t = abs(scale) * np.einsum("bkgnd,bkmd->bkgnm", np.abs(group_queries(q, Hkv)), np.abs(k))
    t = t + np.where(np.isfinite(bias), np.abs(bias), 0.0)
    t = np.where(np.isfinite(bias), t, 0.0)
    score_err = LAMBDA * u * (np.sqrt(D) + 2) * np.max(t, axis=-1)
    finite = np.isfinite(lse_ref)
    return np.where(finite, ungroup(score_err) + LAMBDA * u * (np.sqrt(M) + 2) + u * np.abs(np.where(finite, lse_ref, 0)),
                    0.0)


LEAN_FALSE_ALARM = 1e-9
LEAN_TOLERANCE = 0.1          # a row leans one way with probability up to 1/2 + this in a correct kernel
LEAN_DTYPES = HALF_DTYPES


@dataclass(frozen=True)
class Lean:
    """Condition 4 on one verdict: the signed error and the two sign tests over its rows.

    mean_ulps: mean of sign(expected) (actual - expected) / spacing over the elements (+: away from zero);
    up/down: rows leaning up/down as they are; away/toward: rows leaning away from/toward zero;
    limit: the most rows one way the test allows out of `rows` (those that lean at all, per test).
    """

    mean_ulps: float
    up: int
    down: int
    away: int
    toward: int
    limit_raw: int
    limit_signed: int

    @property
    def passed(self) -> bool:
        return max(self.up, self.down) <= self.limit_raw and max(self.away, self.toward) <= self.limit_signed

    def describe(self) -> str:
        return (f"mean signed error {self.mean_ulps:+.3f} ulp; rows up/down {self.up}/{self.down} "
                f"(limit {self.limit_raw}), away/toward zero {self.away}/{self.toward} (limit {self.limit_signed}:"
                f" a {0.5 + LEAN_TOLERANCE:g} lean at false alarm {LEAN_FALSE_ALARM:g})")


def sign_test_limit(rows: int, false_alarm: float = LEAN_FALSE_ALARM, tolerance: float = LEAN_TOLERANCE) -> int:
    """The most of `rows` that may lean one way: k with P(X > k) <= false_alarm / 2, X ~ Binomial(rows,
    1/2 + tolerance) (two-sided: either way)."""
    from scipy.stats import binom

    if rows == 0:
        return 0
    k = int(binom.isf(false_alarm / 2, rows, 0.5 + tolerance))
    return min(rows, k)


def spacing(x: np.ndarray, dtype: str) -> np.ndarray:
    """The distance between adjacent `dtype` values around each |x| (its ulp; the subnormal spacing near 0)."""
    u = UNIT_ROUNDOFF[dtype]
    tiny = {"float16": 2.0**-14, "bfloat16": 2.0**-126}[dtype]
    return 2 * u * np.exp2(np.floor(np.log2(np.maximum(np.abs(x), tiny))))


def rounding_interval(nearest: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper): the rounding boundaries around each `dtype` value `nearest`, halfway to its neighbours. The
    gap below a power of two is half the gap above it (1 - 2^-11 lies a quarter of 1's spacing below 1 in float16)."""
    u = UNIT_ROUNDOFF[dtype]
    tiny = {"float16": 2.0**-14, "bfloat16": 2.0**-126}[dtype]
    size = np.abs(nearest)
    above = spacing(size, dtype)
    below = np.where((size > tiny) & (size == np.exp2(np.floor(np.log2(np.maximum(size, tiny))))), above / 2, above)
    up, down = np.where(nearest < 0, below, above), np.where(nearest < 0, above, below)    # gaps toward +inf, -inf
    return nearest - down / 2, nearest + up / 2


def lean(actual: np.ndarray, expected: np.ndarray, dtype: str, slack=0.0) -> Lean | None:
    """Condition 4 (see the module docstring) on arrays (..., E) whose leading axes index rows; None where it
    does not apply (not a half dtype, or no finite element).

    slack: how far the kernel's result may sit from `expected` before its final rounding (scalar or
    broadcastable), or a pair (below, above): it may lie anywhere in [expected - below, expected + above] (a known
    one-sided shift: delta formed from the stored O, `check.lean_gradient_terms`). An element whose interval holds
    a rounding boundary may round either way in a correct kernel, so it says nothing about the rounding and is
    left out (a NaN slack leaves it out). Without this, a correct
    FlashAttention-style kernel fails: where every score is tiny, every p rounds up to 1.0 for P V, |O| grows
    by 1e-6 relative, and the few outputs sitting on a rounding midpoint, alike in every row (P is uniform),
    all round away from zero (torch's CPU flash kernel, float16, inputs of 2^-10).
    """
    from attnbench.problem import round_to_dtype

    if dtype not in LEAN_DTYPES:
        return None
    ok = np.isfinite(actual) & np.isfinite(expected)
    if not np.any(ok):
        return None
    below, above = slack if isinstance(slack, tuple) else (slack, slack)
    x = np.where(ok, expected, 0.0)
    nearest = round_to_dtype(x, dtype)
    step = spacing(nearest, dtype)
    lower, upper = rounding_interval(nearest, dtype)

    def sized(a):
        return np.broadcast_to(np.nan_to_num(np.asarray(a, dtype=np.float64), nan=np.inf), expected.shape)

    with np.errstate(invalid="ignore"):
        ok &= (x - lower > sized(below)) & (upper - x > sized(above))
    ulps = np.where(ok, (actual - nearest) / step, 0.0)
    sign = np.sign(nearest)
    raw, signed = ulps.sum(axis=-1).ravel(), (sign * ulps).sum(axis=-1).ravel()
    nonzero = ok & (expected != 0)
    with np.errstate(invalid="ignore"):                      # non-finite elements are masked out below
        signed_ulps = sign * (actual - expected) / spacing(expected, dtype)
    mean = float(np.mean(signed_ulps[nonzero])) if np.any(nonzero) else 0.0
    up, down, away, toward = (int(np.sum(x)) for x in (raw > 0, raw < 0, signed > 0, signed < 0))
    return Lean(mean, up, down, away, toward, sign_test_limit(up + down), sign_test_limit(away + toward))


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing one output tensor against the reference."""

    name: str
    passed: bool
    max_error: float
    worst_index: tuple
    worst_actual: float
    worst_expected: float
    budget_units: float | None  # max of error / elementwise bound (inf where bound is 0 and error isn't); None: no bound
    naive_error: float | None  # max error of the plain same-dtype formula, if computed
    naive_limit: float | None  # NAIVE_MULTIPLE * naive_error + floor
    reason: str
    model: str | None = None             # the declared precision held to (condition 3), if any
    model_units: float | None = None     # max of error / the declared model's bound
    lean: "Lean | None" = None           # condition 4, where it applies

    def describe(self) -> str:
        idx = ",".join(map(str, self.worst_index))
        units = f", {self.budget_units:.3g} budget units" if self.budget_units is not None else ""
        naive = (f"; naive {self.naive_error:.3g}, limit {self.naive_limit:.3g}" if self.naive_error is not None
                 else "")
        model = (f"; declared {self.model}: {self.model_units:.3g}x its bound" if self.model is not None
                 and self.model_units is not None else "")
        lean = f"; {self.lean.describe()}" if self.lean is not None else ""
        return (f"{self.name}: {'ok' if self.passed else 'FAIL'} {self.reason} | max error {self.max_error:.3g} at "
                f"[{idx}] (got {self.worst_actual:.6g}, want {self.worst_expected:.6g}){units}{naive}{model}{lean}")


def _errors(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """|actual - expected| with NaN==NaN as 0, equal infinities as 0, any other NaN/inf mismatch as inf."""
    with np.errstate(invalid="ignore"):
        err = np.abs(actual - expected)
    same_nonfinite = (np.isnan(actual) & np.isnan(expected)) | ((actual == expected) & ~np.isfinite(expected))
    return np.where(same_nonfinite, 0.0, np.where(np.isnan(err), np.inf, err))


def compare(name: str, actual, expected, *, bound=None, naive=None, dtype: str, reduction_length: int = 1,
            magnitude: float | None = None, analytic_floor=None, model_bound=None, model: str | None = None,
            lean_slack=None) -> Verdict:
    """Compare `actual` with `expected` (same shape) against an elementwise `bound` and/or a `naive` output.

    bound: array broadcastable to expected, or None to skip condition 1.
    naive: the plain same-dtype formula's output, or None to skip condition 2.
    reduction_length: the summed lengths of the reductions chained behind each element, for the floor:
        D + M forward (scores over D, then P V over M); D + Dv + max(N, M) backward (scores over D,
        dP = dO V^T over Dv, then dQ over M or dK, dV over N). Independent reordering errors add in
        variance, so the floor grows with the square root of the total.
    magnitude: the size of the terms summed into `expected`; used for the floor only where max|expected| is
        below one rounding of it in `dtype` (an identically zero result, up to float64 residue).
    analytic_floor: floor (b) of condition 2, scalar or broadcastable to expected (`forward_floor`,
        `backward_floor`); None: floor (a) alone.
    model_bound, model: condition 3, the bound of the backend's declared precision (scalar or broadcastable)
        and its name; None: not declared.
    lean_slack: apply condition 4 (`lean`) over the rows of `expected` (all axes but the last), this being the
        error the kernel may have before its final rounding (scalar or broadcastable, or a pair (below, above) of
        them; see `lean`); None: not.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Verdict(name, False, np.inf, (), np.nan, np.nan, np.inf, None, None,
                       f"shape {actual.shape} != expected {expected.shape}")
    err = _errors(actual, expected)
    worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
    max_err = float(err[worst]) if err.size else 0.0
    reasons, units, model_units = [], None, None
    if bound is not None:
        units = _units(err, bound)
        if units > 1:
            reasons.append(f"exceeds the analytic budget ({units:.3g}x)")
    if model_bound is not None:
        model_units = _units(err, model_bound)
        if model_units > 1:
            reasons.append(f"exceeds its declared precision ({model}: {model_units:.3g}x)")
    leaning = lean(actual, expected, dtype, lean_slack) if lean_slack is not None and err.size else None
    if leaning is not None and not leaning.passed:
        reasons.append("errors lean one way")
    naive_err = naive_limit = None
    if naive is not None:
        naive_err = float(np.max(_errors(np.asarray(naive, dtype=np.float64), expected)))
        finite = expected[np.isfinite(expected)]
        scale = float(np.max(np.abs(finite))) if finite.size else 0.0
        if magnitude is not None and scale < UNIT_ROUNDOFF[dtype] * magnitude:
            scale = magnitude                        # pure cancellation: below one rounding of its own terms
        floor = naive_floor(dtype, reduction_length, scale)
        if analytic_floor is not None:
            floor = np.maximum(floor, np.broadcast_to(np.asarray(analytic_floor, dtype=np.float64), err.shape))
        limits = NAIVE_MULTIPLE * naive_err + np.broadcast_to(floor, err.shape)
        # Report the limit where the error comes closest to (or beyond) its own limit.
        with np.errstate(divide="ignore", invalid="ignore"):
            closest = np.unravel_index(int(np.argmax(np.where(err == 0, 0.0, err / limits))), err.shape) \
                if err.size else ()
        naive_limit = float(limits[closest]) if err.size else float(NAIVE_MULTIPLE * naive_err)
        if err.size and np.any(err > limits):
            reasons.append(f"worse than {NAIVE_MULTIPLE:g}x the naive {dtype} formula")
    return Verdict(name, not reasons, max_err, tuple(int(i) for i in worst),
                   float(actual[worst]) if err.size else np.nan, float(expected[worst]) if err.size else np.nan,
                   units, naive_err, naive_limit, "; ".join(reasons) or "within budget", model, model_units,
                   leaning)


def _units(err: np.ndarray, bound) -> float:
    """max of err / bound elementwise (0 where err is 0; inf where the bound is 0 or NaN and err is not)."""
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), err.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / bound)
    # A NaN bound (NaN inputs in that row) must not hide an error there: np.max would return NaN and NaN > 1
    # is False. Matching NaN/inf outputs have err 0 above, so only real mismatches become inf.
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    return float(np.max(ratio)) if ratio.size else 0.0
