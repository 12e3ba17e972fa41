"""xformers: `xformers.ops.memory_efficient_attention` (the cutlass/flash dispatch of xFormers), CUDA only.

Memory-efficient tiled attention (github.com/facebookresearch/xformers), layout
(B, N, H, D). Causal alignments are xFormers' own bias objects
(`LowerTriangularMask` top_left, `LowerTriangularFromBottomRightMask`
bottom_right); a bool mask or a bias (with or without causal) is folded into one
additive float tensor (B, H, N, M). GQA uses xFormers' 5-D form (B, L, Hkv, G,
D) with K and V expanded over G, a view, not a copy. No lse here (only the
`*_forward_requires_grad` op returns it). Rows that see no key are not declared:
xFormers does not document the result for them. Not run in this repository's
CI (no GPU there), so the declaration is from the xFormers docs, not a probe.
"""
from __future__ import annotations

import torch

from ._torch_common import TorchBackend
from .base import Capabilities
from .registry import register
from .torch_sdpa import fold_causal

try:
    import xformers.ops as xops
    from xformers.ops.fmha.attn_bias import LowerTriangularFromBottomRightMask, LowerTriangularMask
    HAS_XFORMERS = True
except ImportError:
    HAS_XFORMERS = False


def xformers_bias(mask, causal, q, k):
    """The attn_bias for q (B, H, N, D), k (B, Hkv, M, D): an xFormers causal object or a float (B, H, N, M)."""
    B, H, N = q.shape[:3]
    M = k.shape[2]
    if mask is None:
        return {None: None, "top_left": LowerTriangularMask(),
                "bottom_right": LowerTriangularFromBottomRightMask()}[causal]
    if causal is not None:
        mask = fold_causal(mask, causal, N, M, q.dtype, q.device)
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    return mask.to(q.dtype).expand(B, H, N, M)


@register
class Xformers(TorchBackend):
    """xformers: xformers.ops.memory_efficient_attention (CUDA; f16/bf16/f32; masks as a bias tensor; grad)."""

    name = "xformers"
    devices = ("cuda",)
    caps = Capabilities(dtypes=("float16", "bfloat16", "float32"), grad=True, empty_rows=False)

    def unavailable_reason(self) -> str | None:
        return None if HAS_XFORMERS else "package xformers not installed (pip install xformers, CUDA only)"

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        if return_lse:
            raise NotImplementedError(f"{self.name}: no lse")
        B, H, N, D = q.shape
        Hkv, M = k.shape[1], k.shape[2]
        bias = xformers_bias(mask, causal, q, k)
        qx = q.transpose(1, 2)                                               # (B, N, H, D)
        kx, vx = k.transpose(1, 2), v.transpose(1, 2)                        # (B, M, Hkv, D|Dv)
        if Hkv != H:
            G = H // Hkv
            qx = qx.reshape(B, N, Hkv, G, D)                                 # (B, N, Hkv, G, D)
            kx, vx = (x.unsqueeze(3).expand(B, M, Hkv, G, x.shape[-1]) for x in (kx, vx))
            if isinstance(bias, torch.Tensor):
                bias = bias.reshape(B, Hkv, G, N, M)
        out = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias, scale=scale)
        return out.reshape(B, N, H, -1).transpose(1, 2)                      # (B, H, N, Dv)
