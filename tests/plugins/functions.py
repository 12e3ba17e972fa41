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


def flash_varlen_style(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                       softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
    """flash_attn_varlen_func's signature: q (total_q, H, D), k, v (total_k, Hkv, .) packed by cu_seqlens; each
    sequence through flash_style (its own bottom-right alignment), ALiBi slopes (H,) or (B, H)."""
    outs = []
    for b in range(len(cu_seqlens_q) - 1):
        qs, ks = (slice(int(cu[b]), int(cu[b + 1])) for cu in (cu_seqlens_q, cu_seqlens_k))
        slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.ndim == 1 else alibi_slopes[b:b + 1]
        outs.append(flash_style(q[None, qs], k[None, ks], v[None, ks], softmax_scale, causal, window_size, softcap,
                                slopes)[0])
    return torch.cat(outs)


def flash_varlen_keys_at_query_offsets(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                       dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_varlen_style reading each sequence's keys at its query offsets (a bug only N_b != M_b shows)."""
    return flash_varlen_style(q, k, v, cu_seqlens_q, cu_seqlens_q + (cu_seqlens_k - cu_seqlens_q).clamp(max=0),
                              max_seqlen_q, max_seqlen_k, softmax_scale=softmax_scale, causal=causal)


def flash_kvcache_style(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, block_table=None,
                        softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
    """flash_attn_with_kvcache's signature: q (B, N, H, D) against a cache (B, M, Hkv, D) or pages (P, page, Hkv, D)
    through block_table; new keys k, v (B, K, Hkv, D) written into the cache in place at cache_seqlens first."""
    outs = []
    for b in range(q.shape[0]):
        held = int(cache_seqlens[b])
        slots = torch.arange(held + (0 if k is None else k.shape[1]))
        if block_table is None:
            where = (torch.full_like(slots, b), slots)
        else:
            page = k_cache.shape[1]
            where = (block_table[b, slots // page].long(), slots % page)
        if k is not None:
            k_cache[where[0][held:], where[1][held:]] = k[b]
            v_cache[where[0][held:], where[1][held:]] = v[b]
        slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.ndim == 1 else alibi_slopes[b:b + 1]
        outs.append(flash_style(q[b:b + 1], k_cache[where][None], v_cache[where][None], softmax_scale, causal,
                                window_size, softcap, slopes))
    return torch.cat(outs)


def flash_kvcache_pages_in_order(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, block_table=None,
                                 softmax_scale=None, causal=False):
    """flash_kvcache_style reading pages 0, 1, 2, ... instead of through the block table."""
    if block_table is not None:
        pages = block_table.shape[1]
        block_table = torch.arange(block_table.shape[0] * pages, dtype=block_table.dtype).reshape(-1, pages)
        block_table = block_table % k_cache.shape[0]
    return flash_kvcache_style(q, k_cache, v_cache, k, v, cache_seqlens, block_table, softmax_scale, causal)


def flash_kvcache_scribbles(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, block_table=None,
                            softmax_scale=None, causal=False):
    """flash_kvcache_style that also zeroes the cache's first slot after its work (right output, a cache it was
    not asked to write: only the appended slots are its to write)."""
    out = flash_kvcache_style(q, k_cache, v_cache, k, v, cache_seqlens, block_table, softmax_scale, causal)
    k_cache.view(-1)[0] = 0.0
    return out


def narrow_flash(q, k, v, causal=False, softmax_scale=None):
    """flash_style that raises outside what it declares below (float16/bfloat16, D = Dv in {64, 128}, Hkv = H), as
    a real kernel does; the declaration is a plain dict, so the kernel's module needs no attnbench import."""
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in (64, 128) or k.shape[2] != q.shape[2]:
        raise ValueError(f"narrow_flash: unsupported {q.dtype}, D {q.shape[-1]}, {k.shape[2]} KV heads")
    return flash_style(q, k, v, softmax_scale, causal)


narrow_flash.attnbench_capabilities = dict(dtypes=("float16", "bfloat16"), head_dim_choices=(64, 128), gqa=False,
                                           dv_differs=False)


def misdeclared(q, k, v, causal=False):
    """A declaration naming a field attnbench does not have."""
    return flash_style(q, k, v, None, causal)


misdeclared.attnbench_capabilities = dict(head_dim=(64, 128))


def causal_by_default(q, k, v, causal=True, softmax_scale=None):
    """flash_style whose `causal` defaults to True (a causal-first kernel): it must be told False when not causal."""
    return flash_style(q, k, v, softmax_scale, causal)


class ModuleAttention(torch.nn.Module):
    """A torch.nn.Module named by its class: forward(q, k, v, is_causal=False) on (B, H, N, D)."""

    def forward(self, q, k, v, is_causal=False):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


class ModuleWithArguments(ModuleAttention):
    """A module whose constructor needs an argument: named by its class, it cannot be made."""

    def __init__(self, heads):
        super().__init__()
        self.heads = heads


def flash_style_lse(q, k, v, softmax_scale=None, causal=False):
    """flash_style returning FlashAttention's (out, lse (B, H, N) float32), lse declared."""
    qt, kt = (x.transpose(1, 2).double() for x in (q, k))                            # (B, H, L, D)
    kt = kt.repeat_interleave(qt.shape[1] // kt.shape[1], dim=1)
    s = (qt @ kt.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale)
    n, m = s.shape[-2:]
    if causal:
        s = s.masked_fill(torch.arange(n)[:, None] + m - n < torch.arange(m)[None, :], float("-inf"))
    return flash_style(q, k, v, softmax_scale, causal), torch.logsumexp(s, -1).float()


flash_style_lse.attnbench_capabilities = dict(lse=True)


def flash_style_lse_in_log2(q, k, v, softmax_scale=None, causal=False):
    """flash_style_lse with its lse in base 2 (a bug only the lse check sees)."""
    out, lse = flash_style_lse(q, k, v, softmax_scale, causal)
    return out, lse / 0.6931471805599453


flash_style_lse_in_log2.attnbench_capabilities = dict(lse=True)


def widened(q, k, v, causal=False):
    """Declares bool masks its signature has no attn_mask= for."""
    return flash_style(q, k, v, None, causal)


widened.attnbench_capabilities = dict(masks=("bool",))


def prefill_causal_only(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
    """A prefill kernel that computes causal attention only (flash_style's bottom-right causal, window, softcap) and
    raises on causal=False, as such kernels do: it declares so, and every non-causal problem is a skip, never a
    failure."""
    if not causal:
        raise RuntimeError("prefill_causal_only: causal only")
    return flash_style(q, k, v, softmax_scale, causal, window_size, softcap)


prefill_causal_only.attnbench_capabilities = dict(non_causal=False)
