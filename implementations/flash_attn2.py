"""flash_attn: Tri Dao's FlashAttention-2, `flash_attn.flash_attn_func`, CUDA only.

Tiled online softmax in SRAM (github.com/Dao-AILab/flash-attention), layout
(B, N, H, D): inputs are transposed views of the canonical (B, H, N, D). GQA is
native (fewer key/value heads). Causal is bottom_right aligned (flash-attn >=
2.1), so top_left is not declared (it is the same only when N == M). No masks,
no bias, Dv == D, head dim <= 256, float16 and bfloat16. The lse comes from
`return_attn_probs=True` (float32, (B, H, N)). Rows that see no key give 0, as
documented upstream. Not run in this repository's CI (no GPU there).
"""
from __future__ import annotations

import torch

from ._torch_common import TorchBackend
from .base import Capabilities
from .registry import register

try:
    from flash_attn import flash_attn_func
    HAS_FLASH_ATTN = True
except ImportError:
    HAS_FLASH_ATTN = False


@register
class FlashAttn(TorchBackend):
    """flash_attn: FlashAttention-2 flash_attn_func (CUDA; f16/bf16; bottom_right causal; no masks)."""

    name = "flash_attn"
    devices = ("cuda",)
    caps = Capabilities(dtypes=("float16", "bfloat16"), causal=("bottom_right",), masks=(), mask_with_causal=False,
                        dv_differs=False, head_dims=(8, 256), grad=True, lse=True)

    def unavailable_reason(self) -> str | None:
        return None if HAS_FLASH_ATTN else "package flash_attn not installed (pip install flash-attn, CUDA only)"

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        if mask is not None or causal == "top_left":
            raise NotImplementedError(f"{self.name}: no masks and no top_left causal")
        result = flash_attn_func(*(x.transpose(1, 2) for x in (q, k, v)), softmax_scale=scale,
                                 causal=causal == "bottom_right", return_attn_probs=return_lse)
        if not return_lse:
            return result.transpose(1, 2)                                    # (B, H, N, D)
        out, lse = result[0], result[1]
        return out.transpose(1, 2), lse
