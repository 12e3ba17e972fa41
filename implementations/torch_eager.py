"""torch_eager: explicit matmul - softmax - matmul in PyTorch, in the input dtype.

The nanoGPT "slow path": S = (scale * Q) K^T (B, H, N, M) is materialised, masked,
softmaxed with the row max subtracted, and multiplied by V. Grouped-query heads
are a reshape of the queries, not a copy of K/V. Fully masked rows give zeros
(the denominator is made 1 where the row sum is 0, which keeps autograd free of
0/0). CPU and CUDA, every dtype, autograd, and the log-sum-exp. Modifications
(window, softcap, ALiBi, sinks: `torch_mods`) on the whole (N, M) score matrix,
in the input dtype like the rest; a sink is one more column of the softmax, so
autograd also returns the sink logits' gradient when they require it (sink_grad).
"""
from __future__ import annotations

import torch

from ._torch_common import TorchBackend
from .base import Capabilities
from . import torch_mods
from .masks import causal_keep, grouped_mask
from .registry import register


def eager_attention(q, k, v, *, mask, causal, scale, return_lse=False, mods=torch_mods.TorchMods()):
    """O (B, H, N, Dv) [and lse (B, H, N)] for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv)."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    qg = q.reshape(B, Hkv, H // Hkv, N, D)                                   # (B, Hkv, G, N, D)
    # Scale q first: in float16, Q K^T can overflow 65504 where scale * Q K^T does not (torch's math SDPA
    # scales too); forming the product first would turn those scores into inf and the output into NaN.
    s = (qg * scale) @ k.transpose(-1, -2).unsqueeze(2)                      # (B, Hkv, G, N, M)
    if not mods.empty:
        s = torch_mods.scores(s, mods, torch.arange(N, device=q.device), torch.arange(M, device=q.device), N, M)
    sink = torch_mods.sink_logits(mods, Hkv, s.dtype)
    if sink is not None:                                          # a column of value 0 in the denominator only
        s = torch.cat([s, sink[..., None].expand(*s.shape[:-1], 1)], dim=-1)
    mask = grouped_mask(mask, Hkv, H // Hkv)                                  # (B|1, Hkv|1, G|1, N|1, M)
    keys = slice(0, M)                                            # the real keys (not the sink column)
    if mask is not None and mask.dtype != torch.bool:
        s[..., keys] = s[..., keys] + mask
    keep = None if causal is None else causal_keep(N, M, causal, q.device)
    if mask is not None and mask.dtype == torch.bool:
        keep = mask if keep is None else keep & mask
    if keep is not None:
        s[..., keys] = s[..., keys].masked_fill(~keep, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    shift = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max).detach()
    e = torch.exp(s - shift)
    total = e.sum(dim=-1, keepdim=True)
    p = (e / torch.where(total > 0, total, torch.ones_like(total)))[..., keys]
    out = (p @ v.unsqueeze(2)).reshape(B, H, N, -1)                          # (B, H, N, Dv)
    if not return_lse:
        return out
    return out, (shift + torch.log(total)).reshape(B, H, N)


@register
class TorchEager(TorchBackend):
    """torch_eager: explicit matmul-softmax-matmul in PyTorch (CPU, CUDA; autograd; lse)."""

    name = "torch_eager"
    devices = ("cpu", "cuda")
    caps = Capabilities(grad=True, lse=True, mods=torch_mods.SUPPORTED, sink_grad=True)   # autograd reaches sinks

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False, mods=torch_mods.TorchMods()):
        return eager_attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse, mods=mods)
