"""The reference agrees with itself: each pair of formulas the notes say are equal, computed both ways."""
import numpy as np
import pytest

from attnbench import reference
from attnbench.reference import AttentionInputError

rng = np.random.default_rng(0)


def qkv(B=2, H=4, Hkv=2, N=37, M=53, D=24, Dv=20):
    return (rng.standard_normal((B, H, N, D)), rng.standard_normal((B, Hkv, M, D)),
            rng.standard_normal((B, Hkv, M, Dv)))


@pytest.mark.parametrize("block_n, block_m", [(1, 1), (7, 13), (16, 16), (64, 5), (100, 100)])
@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
def test_blockwise_equals_direct_for_any_tiles(block_n, block_m, causal):
    q, k, v = qkv()
    mask = rng.random((2, 1, 37, 53)) < 0.8
    mask[:, :, 5] = False                                                 # a fully masked row
    out, lse = reference.sdpa(q, k, v, mask=mask, causal=causal, return_lse=True)
    bout, blse = reference.blockwise_sdpa(q, k, v, mask=mask, causal=causal, block_n=block_n, block_m=block_m,
                                          return_lse=True)
    np.testing.assert_allclose(bout, out, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(blse), np.isneginf(lse))
    np.testing.assert_allclose(blse[np.isfinite(lse)], lse[np.isfinite(lse)], rtol=0, atol=1e-12)


def test_gqa_equals_repeating_kv_heads():
    q, k, v = qkv(H=6, Hkv=2)
    repeated = reference.sdpa(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1), causal="bottom_right")
    np.testing.assert_allclose(reference.sdpa(q, k, v, causal="bottom_right"), repeated, atol=1e-13)


def test_fully_masked_row_gives_zero_output_weights_and_neg_inf_lse():
    q, k, v = qkv(N=4, M=5)
    mask = np.ones((1, 1, 4, 5), bool)
    mask[..., 2, :] = False
    out, p, lse = reference.sdpa(q, k, v, mask=mask, return_weights=True, return_lse=True)
    assert np.all(out[:, :, 2] == 0) and np.all(p[:, :, 2] == 0) and np.all(np.isneginf(lse[:, :, 2]))
    assert np.all(np.isfinite(out))


def test_concat_then_wo_equals_sum_of_head_deltas():
    B, N, M, E, H, D = 2, 9, 11, 16, 4, 5
    x_q, x_kv = rng.standard_normal((B, N, E)), rng.standard_normal((B, M, E))
    w_q, w_k, w_v = (rng.standard_normal((E, H * D)) for _ in range(3))
    w_o = rng.standard_normal((H * D, E))
    delta = reference.multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads=H)
    np.testing.assert_allclose(reference.head_deltas(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads=H).sum(axis=1), delta,
                               atol=1e-12)
    assert reference.residual_update(x_q, delta).shape == (B, N, E)


def test_multi_head_self_attention_matches_sdpa_on_projected_heads():
    B, N, E, H, D = 1, 7, 12, 3, 4
    x = rng.standard_normal((B, N, E))
    w_q, w_k, w_v = (rng.standard_normal((E, H * D)) for _ in range(3))
    heads = lambda w: (x @ w).reshape(B, N, H, D).transpose(0, 2, 1, 3)
    expected = reference.sdpa(heads(w_q), heads(w_k), heads(w_v), causal=True)
    got = reference.head_contexts(x, x, w_q, w_k, w_v, n_heads=H, causal=True)
    np.testing.assert_allclose(got, expected, atol=1e-13)


def test_low_rank_value_equals_full_value_matrix():
    B, N, E, H, D, R = 1, 6, 10, 2, 4, 3
    x = rng.standard_normal((B, N, E))
    w_q, w_k = rng.standard_normal((E, H * D)), rng.standard_normal((E, H * D))
    down, up = rng.standard_normal((E, R)), rng.standard_normal((R, H * D))
    w_o = rng.standard_normal((H * D, E))
    low = reference.multi_head_attention(x, x, w_q, w_k, (down, up), w_o, n_heads=H)
    full = reference.multi_head_attention(x, x, w_q, w_k, down @ up, w_o, n_heads=H)
    np.testing.assert_allclose(low, full, atol=1e-12)


def test_cosine_is_dot_of_normalised_vectors_and_scaled_is_dot_over_sqrt_d():
    q, k = rng.standard_normal((5, 8)), rng.standard_normal((7, 8))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(reference.scores(q, k, "cosine"), reference.scores(unit(q), unit(k), "dot"), atol=1e-14)
    np.testing.assert_allclose(reference.scores(q, k, "scaled"), reference.scores(q, k, "dot") / np.sqrt(8), atol=1e-14)


def test_bottom_right_equals_top_left_when_square():
    np.testing.assert_array_equal(reference.causal_mask(9, 9, "bottom_right"), reference.causal_mask(9, 9))
    assert not np.array_equal(reference.causal_mask(4, 6, "bottom_right"), reference.causal_mask(4, 6))


def test_causal_alignments_follow_their_definitions():
    assert reference.causal_mask(2, 4).tolist() == [[True, False, False, False], [True, True, False, False]]
    assert reference.causal_mask(2, 4, "bottom_right").tolist() == [[True, True, True, False], [True] * 4]
    assert not reference.causal_mask(4, 2, "bottom_right")[:2].any()


def test_softmax_rows_sum_to_one_and_are_shift_invariant():
    x = rng.standard_normal((4, 9)) * 30
    p = reference.softmax(x)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-15)
    np.testing.assert_allclose(reference.softmax(x + 1000.0), p, atol=1e-15)


def test_softmax_of_all_neg_inf_row_is_zero_and_nan_propagates():
    x = np.array([[-np.inf, -np.inf], [0.0, np.nan]])
    p = reference.softmax(x)
    assert p[0].tolist() == [0.0, 0.0] and np.isnan(p[1]).all()


def test_sdpa_backward_matches_central_differences():
    q, k, v = qkv(B=1, H=2, Hkv=1, N=3, M=4, D=3, Dv=2)
    g = rng.standard_normal((1, 2, 3, 2))
    loss = lambda q_, k_, v_: float(np.sum(reference.sdpa(q_, k_, v_, causal="bottom_right") * g))
    grads = reference.sdpa_backward(q, k, v, g, causal="bottom_right")
    for i, x in enumerate((q, k, v)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args = [a.copy() for a in (q, k, v)]
            args[i][idx] += 1e-6
            up = loss(*args)
            args[i][idx] -= 2e-6
            numeric[idx] = (up - loss(*args)) / 2e-6
        np.testing.assert_allclose(grads[i], numeric, atol=1e-7)


@pytest.mark.parametrize("call, message", [
    (lambda: reference.sdpa(np.ones((1, 3, 4, 8)), np.ones((1, 2, 4, 8)), np.ones((1, 2, 4, 8))), "multiple of Hkv"),
    (lambda: reference.sdpa(np.ones((1, 2, 4, 8)), np.ones((1, 2, 4, 7)), np.ones((1, 2, 4, 8))), "share D"),
    (lambda: reference.sdpa(np.ones((2, 2, 4, 8)), np.ones((1, 2, 4, 8)), np.ones((1, 2, 4, 8))), "share B"),
    (lambda: reference.sdpa(np.ones((2, 4, 8)), np.ones((1, 2, 4, 8)), np.ones((1, 2, 4, 8))), "rank 4"),
    (lambda: reference.sdpa(np.ones((1, 2, 4, 8)), np.ones((1, 2, 5, 8)), np.ones((1, 2, 4, 8))), "(Hkv, M)"),
    (lambda: reference.sdpa(*[np.ones((1, 2, 4, 8))] * 3, mask=np.ones((3, 5), bool)), "mask: shape"),
    (lambda: reference.sdpa(*[np.ones((1, 2, 4, 8))] * 3, causal="diagonal"), "causal"),
    (lambda: reference.sdpa(np.ones((1, 2, 0, 8)), np.ones((1, 2, 4, 8)), np.ones((1, 2, 4, 8))), "empty"),
    (lambda: reference.scores(np.ones((3, 4)), np.ones((3, 4)), kind="euclid"), "kind"),
    (lambda: reference.residual_update(np.ones((2, 3)), np.ones((3, 2))), "same shape"),
])
def test_bad_input_is_refused_with_a_named_error(call, message):
    with pytest.raises(AttentionInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_every_reference_path_agrees_on_nan_and_minus_inf():
    """sdpa, sdpa_rows and blockwise_sdpa run one online-softmax loop: a NaN query row stays NaN everywhere (it
    came back 0 from blockwise_sdpa), a -inf bias masks, a fully masked row is 0."""
    from attnbench.reference import blockwise_sdpa, sdpa, sdpa_rows

    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 2, 4, 8)), rng.standard_normal((1, 2, 5, 8)), rng.standard_normal((1, 2, 5, 8))
    q[0, 0, 1, 3] = np.nan
    bias = np.zeros((1, 1, 4, 5))
    bias[..., 2, :2] = -np.inf
    bias[..., 3, :] = -np.inf
    full = sdpa(q, k, v, mask=bias)
    rows, _ = sdpa_rows(q, k, v, np.arange(4), mask=bias)
    tiled = blockwise_sdpa(q, k, v, mask=bias, block_n=3, block_m=2)
    assert np.isnan(full[0, 0, 1]).all() and not np.isnan(full[0, 1, 1]).any()
    assert np.all(full[..., 3, :] == 0)
    for other in (rows, tiled):
        np.testing.assert_allclose(other, full, rtol=1e-12, atol=1e-14, equal_nan=True)
