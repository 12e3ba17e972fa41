"""torch_sdpa_<kernel>: torch.nn.functional.scaled_dot_product_attention forced onto one kernel.

One backend per SDPA kernel (math, flash, efficient, cudnn), each forced with
`torch.nn.attention.sdpa_kernel`, so a user sees every kernel torch ships and
not only the one its dispatcher happens to pick. What each kernel supports
differs by device, dtype and torch version, so capabilities are *probed*: a
tiny call per feature on the device at hand, cached; a feature that raises is
not declared. Causal alignment top_left is `is_causal=True`; bottom_right uses
`torch.nn.attention.bias.causal_lower_right`; a mask together with causal is
folded into one mask (SDPA refuses both at once). SDPA returns no lse.
"""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._torch_common import TorchBackend
from attnbench.precision import FLOAT32_INTERNAL, INPUT, Precision, for_half
from attnbench.problem import DTYPES
from attnbench.reference import CAUSAL_ALIGNMENTS

from .base import Capabilities
from .registry import register
from .masks import causal_keep

KERNELS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
PROBE_HEAD_DIMS = (8, 16, 32, 64, 80, 96, 128, 160, 192, 256, 512)
# What torch raises when SDPA's kernel selection finds no kernel for a call's features (a forced kernel that
# refuses them, on CPU and CUDA alike): the one error a probe reads as "not supported". Anything else raised by
# a probe (a TypeError from a wrong argument, a shape error, an OOM) is a bug or a broken machine and propagates.
NOT_SUPPORTED = ("No available kernel", "No viable backend for scaled_dot_product_attention")


def fold_causal(mask, causal, n: int, m: int, dtype, device):
    """One attn_mask equal to `mask` restricted to `causal` (bool stays bool, a bias gets -inf)."""
    keep = causal_keep(n, m, causal, device)
    if mask is None or mask.dtype == torch.bool:
        return keep if mask is None else mask & keep
    return mask.masked_fill(~keep, float("-inf")).to(dtype)


def sdpa_call(q, k, v, *, mask, causal, scale):
    """F.scaled_dot_product_attention with our causal alignments and GQA."""
    gqa = q.shape[1] != k.shape[1]
    N, M = q.shape[2], k.shape[2]
    if causal == "top_left" and mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if causal == "bottom_right" and mask is None:
        from torch.nn.attention.bias import causal_lower_right

        if N == M:   # the two alignments coincide; is_causal reaches more kernels than the bias object
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(N, M), scale=scale,
                                              enable_gqa=gqa)
    if causal is not None:
        mask = fold_causal(mask, causal, N, M, q.dtype, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def not_supported(exc: BaseException) -> bool:
    """Whether `exc` is torch saying the forced kernel does not take this call (NotImplementedError, or the
    kernel selection's RuntimeError), as opposed to a failure of the call itself."""
    return isinstance(exc, NotImplementedError) or (
        isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in NOT_SUPPORTED))


def _runs(kernel, device: str, dtype: str, *, B=1, H=2, Hkv=2, N=8, M=8, D=16, Dv=16, causal=None, mask=None,
          grad=False, layout=None) -> bool:
    """Whether one tiny SDPA call with these features runs on `kernel`: False when torch says the kernel does not
    take it (`not_supported`); any other exception propagates."""
    dt = getattr(torch, dtype)
    try:
        q = torch.randn(B, H, N, D, dtype=dt, device=device)
        k = torch.randn(B, Hkv, M, D, dtype=dt, device=device)
        v = torch.randn(B, Hkv, M, Dv, dtype=dt, device=device)
        if layout is not None:
            from attnbench.problem import apply_layout

            q, k, v = (apply_layout(x, layout, contiguous=torch.Tensor.contiguous,
                                    zeros=lambda *shape: torch.zeros(shape, dtype=dt, device=device))
                       for x in (q, k, v))
        attn_mask = None
        if mask == "bool":
            attn_mask = torch.rand(B, 1, N, M, device=device) < 0.7
            attn_mask[..., 0] = True
        elif mask == "bias":
            attn_mask = torch.randn(B, 1, N, M, dtype=dt, device=device)
        if grad:
            q, k, v = (x.requires_grad_() for x in (q, k, v))
        with sdpa_kernel(kernel), warnings.catch_warnings():
            warnings.simplefilter("ignore")                                   # a refused probe warns, then raises
            out = sdpa_call(q, k, v, mask=attn_mask, causal=causal, scale=None)
            if grad:
                out.sum().backward()
        return True
    except (RuntimeError, NotImplementedError) as exc:
        if not not_supported(exc):
            raise
        return False


# How each kernel computes half inputs where we measured it (reports/precision/); elsewhere (CUDA) nothing
# is declared: the budget's two conditions alone. CPU math upcasts half inputs to float32 and rounds the result
# once. CPU flash rounds P to the input dtype before P V (FlashAttention's forward); its backward's dK, dV lose
# precision with the number of query blocks (the known deviation in attnbench.deviations, consistent with a
# half-precision accumulator), so the backward it declares accumulates in the input dtype.
PRECISION = {
    ("math", "cpu"): for_half(FLOAT32_INTERNAL),
    ("flash", "cpu"): for_half(Precision("torch CPU flash", p_rounded=True, ds_rounded=True,
                                         grad_accumulate=INPUT)),
}


@functools.lru_cache(maxsize=None)
def probe_capabilities(kernel_name: str, device: str) -> Capabilities | None:
    """Capabilities of SDPA kernel `kernel_name` on `device`, found by running tiny calls; None if it runs nothing."""
    kernel = KERNELS[kernel_name]
    dtypes = tuple(d for d in DTYPES if _runs(kernel, device, d))
    if not dtypes:
        return None
    dt = dtypes[0]
    runs = functools.partial(_runs, kernel, device, dt)
    head_dims = [d for d in PROBE_HEAD_DIMS if runs(D=d, Dv=d)]
    return Capabilities(
        dtypes=dtypes,
        causal=tuple(a for a in CAUSAL_ALIGNMENTS if runs(causal=a, N=4, M=8) and runs(causal=a, N=8, M=4)),
        masks=tuple(m for m in ("bool", "bias") if runs(mask=m)),
        mask_with_causal=runs(mask="bool", causal="top_left"),
        cross=runs(N=8, M=12),
        gqa=runs(H=4, Hkv=2) and runs(H=4, Hkv=1),
        dv_differs=runs(Dv=24),
        head_dims=(min(head_dims), max(head_dims)) if head_dims else (16, 16),
        grad=runs(grad=True),
        # Both non-contiguous layouts: flash on CPU takes transposed inputs but refuses a last-dim stride != 1.
        strided=runs(layout="transposed") and runs(layout="strided"),
        lse=False,
        precision=PRECISION.get((kernel_name, device), ()),
    )


class TorchSdpa(TorchBackend):
    """SDPA forced onto one kernel; see the module docstring."""

    devices = ("cpu", "cuda")
    kernel_name = ""

    def __init__(self):
        self._adopted: dict[str, Capabilities] = {}               # device -> caps probed in another process

    def _probed(self, device: str) -> Capabilities | None:
        return self._adopted[device] if device in self._adopted else probe_capabilities(self.kernel_name, device)

    def device_unavailable_reason(self, device: str) -> str | None:
        reason = super().device_unavailable_reason(device)
        if reason is None and self._probed(device) is None:
            reason = f"SDPA {self.kernel_name} kernel does not run on {device} with this torch build ({torch.__version__})"
        return reason

    def capabilities(self, device: str) -> Capabilities:
        return self._probed(device) or Capabilities(dtypes=())

    def adopt_capabilities(self, device: str, caps: Capabilities) -> None:
        self._adopted[device] = caps                              # the probes cost ~1 s a kernel per process

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        if return_lse:
            raise NotImplementedError(f"{self.name}: SDPA does not return the log-sum-exp")
        with sdpa_kernel(KERNELS[self.kernel_name]):
            return sdpa_call(q, k, v, mask=mask, causal=causal, scale=scale)


for _kernel in KERNELS:
    register(type(f"TorchSdpa_{_kernel}", (TorchSdpa,), {
        "name": f"torch_sdpa_{_kernel}", "kernel_name": _kernel,
        "__doc__": f"torch_sdpa_{_kernel}: torch SDPA forced onto its {_kernel} kernel (capabilities probed).",
    }))
