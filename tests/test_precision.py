"""Declared precision (budget condition 3), the lean test (condition 4) and rows in every tile: each can fail.

The conformance suite holds every backend that declares a `Precision` to it on every problem (and the
mutation test proves the classes are killed); these tests pin the rules themselves on synthetic kernels.
"""
import numpy as np
import pytest
import torch

from attnbench.budget import LEAN_TOLERANCE, compare, lean, sign_test_limit
from attnbench.check import check_forward, choose_rows, one_per_tile
from attnbench.implementations import get_backend
from attnbench.precision import FLASH, FLOAT32_INTERNAL, for_half
from attnbench.problem import Problem, round_to_dtype
from conformance.mutants import make_backend

PROBLEM = Problem(B=2, H=4, N=97, M=113, D=64, dtype="float16", seed=3)


def _declaring(backend, precision):
    """`backend` with its half-precision declaration replaced by `precision`."""
    caps = backend.caps.replace(precision=for_half(precision))
    backend.capabilities = lambda device: caps
    return backend


def _output(verdicts):
    return next(v for v in verdicts if v.name == "output")


def test_a_kernel_rounding_p_passes_its_flash_claim_and_fails_a_float32_claim():
    """P rounded to float16 before P V (FlashAttention's GEMM) is about an ulp of the output: within the model
    that says so, far outside the one that says float32 throughout; the 2x-naive rule passes both."""
    flash = _output(check_forward(_declaring(make_backend("twin_flash"), FLASH), PROBLEM))
    assert flash.passed and flash.model_units < 1
    wrong_claim = _output(check_forward(_declaring(make_backend("twin_flash"), FLOAT32_INTERNAL), PROBLEM))
    assert not wrong_claim.passed and wrong_claim.model_units > 2
    assert "declared precision" in wrong_claim.reason and "naive" not in wrong_claim.reason


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_float16_rounded_scale_fails_the_declared_model_not_the_naive_rule(dtype):
    problem = PROBLEM.replace(dtype=dtype, scale=0.3)
    verdicts = check_forward(make_backend("scale_rounded_to_input_dtype"), problem)
    assert not all(v.passed for v in verdicts)
    assert all("naive" not in v.reason for v in verdicts)       # condition 2 alone is blind to it


def test_a_verdict_prints_the_model_its_bound_and_the_lean():
    line = _output(check_forward(get_backend("torch_sdpa_flash"), PROBLEM)).describe()
    assert "declared torch CPU flash" in line and "x its bound" in line
    assert "mean signed error" in line and "limit" in line


def test_round_to_nearest_passes_the_lean_test_and_one_sided_roundings_fail():
    rng = np.random.default_rng(0)
    expected = rng.standard_normal((4, 64, 32)) * 0.3           # 256 rows of 32 elements
    nearest = round_to_dtype(expected, "float16")
    assert lean(nearest, expected, "float16").passed
    half = torch.from_numpy(nearest).half()
    up = torch.nextafter(half, torch.full_like(half, np.inf)).double().numpy()
    toward_zero = torch.nextafter(half, torch.zeros_like(half)).double().numpy()
    rounded_up = np.where(nearest < expected, up, nearest)            # never below the exact value
    truncated = np.where(np.abs(nearest) > np.abs(expected), toward_zero, nearest)
    assert not lean(rounded_up, expected, "float16").passed            # raw errors lean up
    leaning = lean(truncated, expected, "float16")
    assert not leaning.passed and leaning.toward > leaning.away        # errors lean toward zero
    assert lean(expected, expected, "float32") is None                 # half dtypes only


def test_the_sign_test_limit_allows_the_tolerated_lean_and_flags_a_larger_one():
    """Against Binomial(J, 1/2 + LEAN_TOLERANCE): a 55% lean over 10,000 rows passes, a 70% lean fails."""
    limit = sign_test_limit(10_000)
    assert 5_500 < limit < 7_000
    assert 10_000 * (0.5 + LEAN_TOLERANCE) < limit
    assert sign_test_limit(10) == 10                                    # too few rows to see anything


def test_compare_fails_beyond_the_model_bound_and_says_so():
    expected = np.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    verdict = compare("o", expected + 2e-3, expected, dtype="float32", model_bound=1e-3, model="m")
    assert not verdict.passed and verdict.model_units == pytest.approx(2.0) and "declared precision (m" in verdict.reason
    assert compare("o", expected + 5e-4, expected, dtype="float32", model_bound=1e-3, model="m").passed


def test_every_16_row_tile_has_a_checked_row_at_length():
    rows = set(choose_rows(Problem(N=4097, M=64, D=16)).tolist())
    assert all(rows & set(range(start, min(start + 16, 4097))) for start in range(0, 4097, 16))
    assert one_per_tile(40, np.random.default_rng(0)) <= set(range(40)) and len(one_per_tile(40, np.random.default_rng(0))) == 3


def test_a_tile_lost_in_the_middle_of_one_head_fails_at_length():
    """One 16-row query tile of one head left zero, far from every tile edge the old sampling chose."""
    class LosesOneTile(type(get_backend("torch_sdpa_flash"))):
        def attention(self, q, k, v, **kwargs):
            out = super().attention(q, k, v, **kwargs).clone()
            out[0, 1, 2000:2016] = 0
            return out

    problem = Problem(B=1, H=2, N=4097, M=256, D=16, dtype="float32", seed=5)
    assert not _output(check_forward(LosesOneTile(), problem)).passed
    assert _output(check_forward(get_backend("torch_sdpa_flash"), problem)).passed


class _Float32Backward(torch.autograd.Function):
    """Attention whose backward computes dQ, dK, dV in float32 from the half inputs and rounds each once to the
    input dtype, each its own way (`_rounded`): to nearest, "up" (the next representable value at or above the
    float32 result) or "toward_zero" (truncated)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, modes):
        from attnbench.implementations.torch_eager import eager_attention

        ctx.save_for_backward(q, k, v)
        ctx.causal, ctx.modes = causal, modes
        return eager_attention(q.float(), k.float(), v.float(), mask=None, causal=causal, scale=None).to(q.dtype)

    @staticmethod
    def backward(ctx, g):
        from attnbench.implementations.torch_eager import eager_attention

        with torch.enable_grad():
            leaves = [x.detach().float().requires_grad_() for x in ctx.saved_tensors]
            out = eager_attention(*leaves, mask=None, causal=ctx.causal, scale=None)
            grads = torch.autograd.grad(out, leaves, g.float())
        return (*(_rounded(x, g.dtype, mode) for x, mode in zip(grads, ctx.modes)), None, None)


def _rounded(x32, dtype, mode: str = "nearest"):
    near = x32.to(dtype)
    if mode == "nearest":
        return near
    step = torch.where(near >= 0, 1, -1).to(torch.int16)
    above = (near.view(torch.int16) + step).view(dtype)                # the next value away from zero or toward it
    above = torch.where(near == 0, torch.finfo(dtype).smallest_normal * 2.0**-10, above)
    if mode == "up":
        return torch.where(near.float() < x32, above, near)
    assert mode == "toward_zero", mode
    toward = (near.view(torch.int16) - 1).view(dtype)                   # the magnitude's bits one lower, either sign
    return torch.where(near.float().abs() > x32.abs(), toward, near)


def _float32_backward(modes=("nearest",) * 3):
    """A backend declaring float32 internals whose backward rounds dQ, dK, dV as `modes` says (`_Float32Backward`)."""
    from attnbench.implementations import Capabilities, TorchBackend

    class Backward(TorchBackend):
        name = "float32_backward"
        caps = Capabilities(grad=True, gqa=True, causal=("top_left", "bottom_right"),
                            precision=for_half(FLOAT32_INTERNAL))

        def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
            return _Float32Backward.apply(q, k, v, causal, modes)

    return Backward()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_backward_rounding_its_gradients_upward_fails_the_lean_test_and_to_nearest_passes(dtype):
    """one_sided_output_rounding's class in the backward: each gradient within an ulp (condition 3 passes it),
    every error one way. The lean test's slack was the scalar model bound, the worst element's, for every element:
    it left 4 of dV's 640 key rows in float16 (4/0 up/down, limit 4), so only the forward's class was caught.
    Per element, dV's rows lean 310/0. dQ and dK: `test_dq_or_dk_rounded_one_way_fails_the_lean_test`."""
    from attnbench.check import check_backward

    problem = Problem(B=2, H=4, N=64, M=80, D=32, dtype=dtype, seed=3)
    nearest = check_backward(_float32_backward(), problem)
    assert all(v.passed for v in nearest), [v.describe() for v in nearest]
    upward = {v.name: v for v in check_backward(_float32_backward(("up",) * 3), problem)}
    assert not upward["dv"].passed and "lean" in upward["dv"].reason, upward["dv"].describe()
    assert upward["dv"].lean.up > 200 and upward["dv"].lean.down == 0, upward["dv"].describe()


LEAN_GRADIENT_PROBLEMS = [Problem(B=1, H=4, Hkv=2, N=64, M=80, D=32, causal="bottom_right", dtype=dtype, seed=4)
                          for dtype in ("float16", "bfloat16")]


@pytest.mark.parametrize("problem", LEAN_GRADIENT_PROBLEMS, ids=lambda p: p.dtype)
@pytest.mark.parametrize("gradient", ["dq", "dk"])
@pytest.mark.parametrize("mode", ["up", "toward_zero"])
def test_dq_or_dk_rounded_one_way_fails_the_lean_test(problem, gradient, mode):
    """A backward rounding dQ (or dK) alone upward, or truncating it, each element within an ulp: the declared
    model's bound took the largest score and sums of |terms| and delta from the stored O at its worst for every
    element, several half-ulps (median 15 float16 ulps of dQ, 22 of dK at B 1, H 4, Hkv 2, N = M = 128, D 64),
    and left no element of dQ or dK to the lean test, so both passed. Each element's own bound
    (`check.lean_gradient_terms`) leaves a third of dQ and a few percent of dK to it there: every row with one
    leans the same way."""
    from attnbench.check import check_backward

    modes = tuple(mode if g == gradient else "nearest" for g in ("dq", "dk", "dv"))
    verdicts = {v.name: v for v in check_backward(_float32_backward(modes), problem)}
    bad = verdicts[gradient]
    assert not bad.passed and bad.reason == "errors lean one way", bad.describe()
    leaning, against = (bad.lean.up, bad.lean.down) if mode == "up" else (bad.lean.toward, bad.lean.away)
    assert leaning > bad.lean.limit_raw and against == 0, bad.describe()
    assert all(v.passed for name, v in verdicts.items() if name != gradient), [v.describe() for v in verdicts.values()]


@pytest.mark.parametrize("problem", LEAN_GRADIENT_PROBLEMS, ids=lambda p: p.dtype)
def test_a_backward_rounding_to_nearest_passes_the_lean_test_on_dq_and_dk(problem):
    """The same kernel rounding to nearest: no row of dQ or dK leans (the elements left to the test are its
    float32 result's nearest value, exactly)."""
    from attnbench.check import check_backward

    verdicts = {v.name: v for v in check_backward(_float32_backward(), problem)}
    assert all(v.passed for v in verdicts.values()), [v.describe() for v in verdicts.values()]
    for name in ("dq", "dk"):
        assert verdicts[name].lean.up + verdicts[name].lean.down == 0, verdicts[name].describe()


ROW_SAMPLED = Problem(B=1, H=1, N=32, M=8200, D=8, dtype="float16", seed=5)     # N M > 512 x 512: rows sampled


def test_a_one_sided_dv_fails_the_lean_test_on_sampled_rows_and_to_nearest_passes():
    """At length the lean test took the worst checked element's slack for every element (the sums of
    `row_bound.backward_row_scales` maximised): dV rounded upward passed, 4 of its 561 key rows left to the test
    (4/0 up/down, limit 4). Each element's own sums (`backward_row_scales(elementwise=True)`) leave about 200
    rows, all leaning one way (217/0 up/down, limit 172)."""
    from attnbench.check import check_backward

    nearest = check_backward(_float32_backward(), ROW_SAMPLED)
    assert not nearest.rows.full and all(v.passed for v in nearest), [v.describe() for v in nearest]
    assert all(v.lean.up + v.lean.down == 0 for v in nearest[1:]), [v.describe() for v in nearest]
    for mode in ("up", "toward_zero"):
        verdicts = check_backward(_float32_backward(("nearest", "nearest", mode)), ROW_SAMPLED)
        dv = {v.name: v for v in verdicts}["dv"]
        leaning, against = (dv.lean.up, dv.lean.down) if mode == "up" else (dv.lean.toward, dv.lean.away)
        assert not dv.passed and "errors lean one way" in dv.reason and leaning > dv.lean.limit_raw, dv.describe()
        assert against == 0, dv.describe()
        assert all(v.passed for v in verdicts if v.name != "dv"), [v.describe() for v in verdicts]


def test_a_dq_rounded_upward_fails_the_lean_test_on_sampled_rows():
    """dQ's own bound on sampled query rows (`row_bound.DqLeanSums` in `backward_row_scales`): no row was left to
    the test (the worst element's slack, 0/0 up/down); now 166 rows lean up, none down (limit 136). dK keeps the declared
    model's per-element share there (its own bound needs every query row's sums over every key)."""
    from attnbench.check import check_backward

    problem = Problem(B=1, H=2, Hkv=1, N=520, M=520, D=16, dtype="bfloat16", seed=5)     # N M > 512 x 512
    verdicts = check_backward(_float32_backward(("up", "nearest", "nearest")), problem)
    dq = {v.name: v for v in verdicts}["dq"]
    assert not verdicts.rows.full and not dq.passed and "errors lean one way" in dq.reason, dq.describe()
    assert dq.lean.up > dq.lean.limit_raw and dq.lean.down == 0, dq.describe()
    assert all(v.passed for v in verdicts if v.name != "dq"), [v.describe() for v in verdicts]
