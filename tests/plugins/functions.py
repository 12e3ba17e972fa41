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


def flash_style(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                learnable_sink=None):
    """FlashAttention's signature on (B, N, H, D) tensors, written out plainly in float32 (float64 kept): bottom-right causal and
    window (-1 unbounded), softcap before ALiBi (slopes (H,) or (B, H)), sink logits (H,) in each denominator."""
    dtype = q.dtype
    work = torch.promote_types(dtype, torch.float32)                                  # float32, float64 as it is
    q, k, v = (x.transpose(1, 2).to(work) for x in (q, k, v))                         # (B, H, L, D)
    k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    n, m = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    d = torch.arange(n)[:, None] + (m - n) - torch.arange(m)[None, :]               # key's distance behind
    if alibi_slopes is not None:
        slopes = (alibi_slopes if alibi_slopes.ndim == 2 else alibi_slopes[None]).to(work)
        s = s - slopes[:, :, None, None] * d.abs()
    left, right = window_size
    keep = torch.ones(n, m, dtype=torch.bool)
    if causal:
        keep &= d >= 0
    if left >= 0:
        keep &= d <= left
    if right >= 0:
        keep &= -d <= right
    s = s.masked_fill(~keep, float("-inf"))
    if learnable_sink is not None:
        s = torch.cat([s, learnable_sink[None, :, None, None].expand(s.shape[0], -1, n, 1)], dim=-1)
    p = torch.softmax(s, dim=-1)[..., :m].where(keep.any(-1, keepdim=True), 0.0)      # a row seeing no key: O = 0
    return (p @ v).to(dtype).transpose(1, 2)


def flash_style_window_off_by_one(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                  alibi_slopes=None, learnable_sink=None):
    """flash_style with the window's left edge one key short (a bug only windowed problems see)."""
    left, right = window_size
    return flash_style(q, k, v, softmax_scale, causal, (left - 1 if left > 0 else left, right), softcap,
                       alibi_slopes, learnable_sink)


def flash4_style(q, k, v, softmax_scale=None, causal=False, window_size=(None, None), learnable_sink=None,
                 softcap=0.0):
    """FlashAttention 4's spelling (flash_attn/cute/interface.py): an unbounded window side is None, and a
    negative one is refused, as a kernel that indexes with it would misbehave."""
    if any(side is not None and side < 0 for side in window_size):
        raise ValueError(f"window_size sides must be None or >= 0, got {window_size}")
    sides = tuple(-1 if side is None else side for side in window_size)
    return flash_style(q, k, v, softmax_scale, causal, sides, softcap, None, learnable_sink)
