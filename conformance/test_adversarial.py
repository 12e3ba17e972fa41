"""Adversarial values: inputs chosen to break kernels that are right on standard-normal data.

    large_logits   q, k ~ 64 N(0, 1), D 128: float16 Q K^T exceeds 65504 while scale * Q K^T does not, so a
                   kernel that forms Q K^T in float16 and scales afterwards gets inf, then NaN.
    near_ties      all keys within 2^-6 of one vector: scores of a row nearly equal.
    peaked         q, k ~ 4 N(0, 1): one key dominates each row.
    tiny           values ~ 2^-10: float16 products fall in the subnormal range.
    bias_extreme   additive bias with -1e4 and -inf entries (no row entirely -inf unless causal empties it).
    N = 1, M = 1   one query or one key (softmax of one element is exactly 1).

Declared behaviour for non-finite inputs (`nonfinite`: one NaN in q, one +inf in v): a backend propagates
them exactly as the float64 reference does: the same elements are NaN, the same are +/-inf, the rest
agree within the budget. `compare` scores a NaN/inf mismatch as an infinite error, so the assertion below
is "max error finite" on top of the usual pass.

The naive same-dtype formula is the yardstick of budget condition 2; if it went NaN where the reference is
finite, that condition would silently allow anything, so each case also asserts the yardstick stayed sane.
"""
import math

from ._verdict import assert_passes
from attnbench.problem import Problem

DISTRIBUTIONS = [
    # scale 2^-12 keeps scale * Q K^T ~ 25 so the softmax is well conditioned and an inf/NaN or a wrong row
    # shows; with the default 1/sqrt(128) the scores ~ 5000 are float16-indeterminate and only finiteness tells.
    dict(B=1, H=2, N=64, D=128, inputs="large_logits", scale=2.0**-12),
    dict(B=1, H=2, N=64, D=128, inputs="large_logits"),
    dict(B=1, H=2, N=61, M=77, D=64, inputs="near_ties"),
    dict(B=1, H=2, N=61, M=77, D=64, inputs="peaked", causal="bottom_right"),
    dict(B=1, H=2, N=61, M=77, D=64, inputs="tiny"),
    dict(B=2, H=2, N=40, M=50, D=64, mask="bias_extreme"),
    dict(B=2, H=2, N=50, M=50, D=64, mask="bias_extreme", causal="top_left"),
    dict(B=2, H=2, N=40, M=24, D=32, mask="bias", causal="bottom_right"),     # bias rows emptied by causal
    dict(B=2, H=2, N=40, M=24, D=32, mask="bias_extreme", causal="bottom_right"),
    dict(B=2, H=2, N=40, M=24, D=32, mask="fully_masked", causal="bottom_right"),
]
EDGES = [
    dict(B=2, H=2, N=1, M=1, D=32),
    dict(B=1, H=2, N=1, M=200, D=64),
    dict(B=1, H=2, N=200, M=1, D=64, causal="bottom_right"),                  # 199 rows with no key
    dict(B=1, H=4, Hkv=1, N=1, M=57, D=64, mask="padding"),
]
NONFINITE = [dict(B=1, H=2, N=33, M=47, D=32, inputs="nonfinite")]

PROBLEMS = ([Problem(**case, dtype=dtype) for case in DISTRIBUTIONS + EDGES for dtype in ("float16", "float32")]
            + [Problem(**case, dtype=dtype, seed=seed) for case in NONFINITE
               for dtype in ("float16", "float32") for seed in (0, 1)]
            + [Problem(**case, dtype="bfloat16") for case in DISTRIBUTIONS[:5]])


def test_adversarial_inputs_match_reference_and_propagate_nonfinite(backend, device, problem):
    result = assert_passes(backend, problem, device)
    verdicts, message = result.forward, result.message()
    assert all(math.isfinite(v.max_error) for v in verdicts), "NaN/inf where the reference has none:\n" + message
    naive = [v.naive_error for v in verdicts if v.naive_error is not None]
    assert all(math.isfinite(e) for e in naive), "the naive yardstick itself broke (condition 2 vacuous):\n" + message
