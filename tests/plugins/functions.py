"""Attention functions as users have them, for tests/test_function_backends.py: no attnbench class anywhere."""
import torch


def sdpa_bnhd(q, k, v, is_causal=False, scale=None, enable_gqa=False):
    """torch SDPA on (B, N, H, D) tensors, FlashAttention's and Keras' layout."""
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return out.transpose(1, 2)


def sdpa_bnhd_no_scale(q, k, v, is_causal=False, scale=None, enable_gqa=False):
    """sdpa_bnhd that ignores the scale it is given (a bug: every custom-scale problem fails)."""
    return sdpa_bnhd(q, k, v, is_causal=is_causal, scale=None, enable_gqa=enable_gqa)
