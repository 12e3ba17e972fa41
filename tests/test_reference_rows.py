"""The row-sampled reference equals the rows of the full one: every mask shape, both causal alignments, GQA,
Dv != D, custom scale, fully masked rows, and key blocks that do not divide M."""
import numpy as np
import pytest

from attnbench import reference

RNG = np.random.default_rng(0)


def _inputs(B, H, Hkv, N, M, D, Dv):
    return (RNG.standard_normal((B, H, N, D)), RNG.standard_normal((B, Hkv, M, D)),
            RNG.standard_normal((B, Hkv, M, Dv)))


def _masks(B, H, N, M):
    """Every broadcastable mask form: name -> array."""
    keep = RNG.random((B, H, N, M)) < 0.6
    keep[:, :, 3] = False                                                   # a fully masked row in every head
    return {
        "none": None,
        "per_head_bool": keep,
        "per_batch_bool": keep[:, :1],
        "shared_bool": keep[:1, :1],
        "padding": (np.arange(M) < RNG.integers(1, M + 1, size=(B, 1, 1, 1))),   # (B, 1, 1, M)
        "head_bias": RNG.standard_normal((1, H, N, M)),
        "rank2_bias": RNG.standard_normal((N, M)),
    }


CASES = [dict(B=2, H=4, Hkv=2, N=37, M=53, D=8, Dv=5), dict(B=1, H=3, Hkv=1, N=60, M=20, D=4, Dv=4),
         dict(B=2, H=2, Hkv=2, N=9, M=70, D=6, Dv=3)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c['N']}-M{c['M']}-H{c['H']}-Hkv{c['Hkv']}")
@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
def test_rows_equal_the_full_reference_for_every_mask_form(case, causal):
    q, k, v = _inputs(**case)
    B, H, N, M = case["B"], case["H"], case["N"], case["M"]
    g = RNG.standard_normal((B, H, N, case["Dv"]))
    rows, keys = np.array([0, 3, N // 2, N - 1]), np.array([0, M // 3, M - 1])
    for name, mask in _masks(B, H, N, M).items():
        kw = dict(mask=mask, causal=causal, scale=0.7)
        out, lse = reference.sdpa(q, k, v, return_lse=True, **kw)
        out_r, lse_r = reference.sdpa_rows(q, k, v, rows, block_m=16, **kw)    # blocks that do not divide M
        np.testing.assert_allclose(out_r, out[:, :, rows], rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(np.isneginf(lse_r), np.isneginf(lse[:, :, rows]), err_msg=name)
        np.testing.assert_allclose(np.where(np.isneginf(lse_r), 0, lse_r),
                                   np.where(np.isneginf(lse[:, :, rows]), 0, lse[:, :, rows]), rtol=1e-12,
                                   err_msg=name)
        dq, dk, dv = reference.sdpa_backward(q, k, v, g, **kw)
        dq_r, dk_r, dv_r = reference.sdpa_backward_rows(q, k, v, g, rows, keys, block_n=7, block_m=16, **kw)
        for got, want in ((dq_r, dq[:, :, rows]), (dk_r, dk[:, :, keys]), (dv_r, dv[:, :, keys])):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


def test_rows_out_of_range_are_refused():
    q, k, v = _inputs(1, 1, 1, 4, 4, 2, 2)
    with pytest.raises(reference.AttentionInputError, match="rows"):
        reference.sdpa_rows(q, k, v, [4])
