"""One mask path and one capability check for every entry point: masks of every broadcastable shape reach
every backend the same way, and a direct call is refused exactly where `prepare` would be."""
import numpy as np
import pytest
import torch

from attnbench import reference
from attnbench.implementations import get_backend
from attnbench.implementations.masks import causal_keep, grouped_mask
from attnbench.reference import AttentionInputError

SHAPES = {"shared (1, 1, N, M)": (1, 1, 6, 7), "per head (B, H, N, M)": (2, 4, 6, 7),
          "key padding (B, 1, 1, M)": (2, 1, 1, 7), "per head, shared batch (1, H, N, M)": (1, 4, 6, 7),
          "rank 2 (N, M)": (6, 7)}


@pytest.mark.parametrize("name", ["torch_eager", "torch_blockwise", "torch_einsum", "torch_sdpa_math"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("hkv", [1, 2, 4])
def test_a_direct_call_with_any_broadcastable_mask_matches_the_reference(name, shape, hkv):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, dtype=torch.float64, generator=gen)
    k = torch.randn(2, hkv, 7, 8, dtype=torch.float64, generator=gen)
    v = torch.randn(2, hkv, 7, 8, dtype=torch.float64, generator=gen)
    mask = torch.rand(shape, generator=gen) < 0.7
    mask[..., 0] = True
    out = get_backend(name)(q, k, v, mask=mask)
    want = reference.sdpa(q.numpy(), k.numpy(), v.numpy(), mask=mask.numpy())
    assert out.shape == want.shape
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-10, atol=1e-12)


def test_the_numpy_backend_takes_a_shared_mask_with_two_batches():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 1, 6, 4)), rng.standard_normal((2, 1, 6, 4))
    mask = rng.random((1, 1, 5, 6)) < 0.7
    mask[..., 0] = True
    np.testing.assert_allclose(get_backend("numpy")(q, k, v, mask=mask), reference.sdpa(q, k, v, mask=mask),
                               rtol=1e-12)


def test_a_direct_call_is_refused_outside_the_declared_capabilities():
    flash = get_backend("torch_sdpa_flash")
    lo, hi = flash.capabilities("cpu").head_dims
    q = torch.randn(1, 1, 4, hi + 8)
    with pytest.raises(AttentionInputError, match="head dim"):
        flash(q, q, q)
    if not flash.capabilities("cpu").strided:
        wide = torch.randn(1, 1, 4, 32)[..., ::2]
        with pytest.raises(AttentionInputError, match="non-contiguous"):
            flash(wide, wide, wide)


def test_grouped_mask_puts_head_h_at_its_kv_group():
    mask = torch.arange(4).reshape(1, 4, 1, 1)                      # head h carries the value h
    g = grouped_mask(mask, 2, 2)                                    # (1, Hkv=2, G=2, 1, 1)
    assert g[0, :, :, 0, 0].tolist() == [[0, 1], [2, 3]]
    assert grouped_mask(torch.zeros(2, 1, 3, 5), 2, 2).shape == (2, 1, 1, 3, 5)


def test_causal_keep_is_the_reference_rule():
    for n, m in ((5, 9), (9, 5), (4, 4)):
        for alignment in ("top_left", "bottom_right"):
            assert np.array_equal(causal_keep(n, m, alignment).numpy(), reference.causal_mask(n, m, alignment))
