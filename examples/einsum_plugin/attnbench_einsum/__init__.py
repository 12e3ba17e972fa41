"""torch_einsum: attention written with torch.einsum, an example of an external attnbench plugin.

S = einsum("bkgnd,bkmd->bkgnm", scale * Q, K) over query groups (so grouped-query
heads read K and V without copying them), masked, softmax, then
einsum("bkgnm,bkmv->bkgnv", P, V). Fully masked rows give zeros. CPU and CUDA,
every dtype, bool and bias masks, both causal alignments, autograd, lse.
It lives outside the attnbench tree and is found through the entry point in this
package's pyproject.toml, group "attnbench.backends".
"""
from __future__ import annotations

import torch

from attnbench.implementations import Capabilities, TorchBackend, register
from attnbench.implementations.masks import causal_keep, grouped_mask


def einsum_attention(q, k, v, *, mask, causal, scale, return_lse=False):
    """O (B, H, N, Dv) [and lse (B, H, N)] for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv)."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    qg = q.reshape(B, Hkv, H // Hkv, N, D)                                   # (B, Hkv, G, N, D)
    # Scale Q before the product: in float16, Q K^T can overflow 65504 where scale * Q K^T does not.
    s = torch.einsum("bkgnd,bkmd->bkgnm", qg * scale, k)                     # (B, Hkv, G, N, M)
    keep = None if causal is None else causal_keep(N, M, causal, q.device)
    if mask is not None:
        mask = grouped_mask(mask, Hkv, H // Hkv)                              # (B|1, Hkv|1, G|1, N|1, M)
        if mask.dtype == torch.bool:
            keep = mask if keep is None else keep & mask
        else:
            s = s + mask
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    # Subtract the row max, but 0 for a fully masked row, so exp gives 0 there and not NaN.
    row_max = s.amax(dim=-1, keepdim=True)
    shift = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max).detach()
    e = torch.exp(s - shift)
    total = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(total > 0, total, torch.ones_like(total))
    out = torch.einsum("bkgnm,bkmv->bkgnv", p, v).reshape(B, H, N, -1)      # (B, H, N, Dv)
    return (out, (shift + torch.log(total)).reshape(B, H, N)) if return_lse else out


@register
class TorchEinsum(TorchBackend):
    """torch_einsum: attention with torch.einsum (example plugin; CPU, CUDA; autograd; lse)."""

    name = "torch_einsum"
    devices = ("cpu", "cuda")
    caps = Capabilities(grad=True, lse=True)

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return einsum_attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse)
