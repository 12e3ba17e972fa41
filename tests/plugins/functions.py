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


def hf_style_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface, written as Llama's eager_attention_forward is: K/V repeated
    `module.num_key_value_groups` times, an additive mask, softmax in float32; returns ((B, N, H, Dv), weights)."""
    import torch

    groups = module.num_key_value_groups
    key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    weights = (query * scaling) @ key.transpose(2, 3)
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def hf_style_attention_ignoring_mask(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                                     **kwargs):
    """hf_style_attention that forgets its attention_mask (so causal and every mask are lost)."""
    return hf_style_attention(module, query, key, value, None, scaling=scaling)
