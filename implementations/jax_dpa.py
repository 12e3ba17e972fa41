"""jax: jax.nn.dot_product_attention (XLA implementation), jitted, on the CPU.

JAX computes softmax(scale * Q K^T + bias, masked) V in layout (B, N, H, D);
inputs are converted from NumPy once in `prepare` and transposed from the
canonical (B, H, N, D). GQA is native (fewer key heads), bool masks go to
`mask`, additive ones to `bias`. `is_causal` is top_left; bottom_right is folded
into the bool mask. A sliding window is JAX's own `local_window_size` (shifted to
FlashAttention's bottom-right alignment, `jax_window`). The lse is
`return_residual=True`; dQ, dK, dV come from `jax.vjp`.

Not supported, by the library (jax 0.10.2, measured): float16 ("precision
F16_F16_F32 is not supported by dot_general on CPU"); bfloat16 with N = M = 1
(XLA CPU lowers that 1x1 dot to an emitter without ALG_DOT_BF16_BF16_F32);
Dv != D (value must have the key's shape); float64 (needs the process-wide
`jax_enable_x64` switch, which a benchmark must not flip under its host); rows with every key masked, which JAX fills with a
large finite negative logit, so they average V instead of giving 0 (lse
-2.4e38, not -inf); non-contiguous inputs (JAX arrays have no strides).
"""
from __future__ import annotations

import functools
from importlib.util import find_spec
from typing import Any, Callable

import numpy as np

from attnbench.problem import Inputs, Problem
from attnbench.reference.masks import causal_mask

from .base import Backend, Capabilities
from .registry import register

# jax is imported where it is used (about 1.3 s): listing backends or using another one never pays for it.
HAS_JAX = find_spec("jax") is not None


def to_bnhd(x: np.ndarray, dtype: str):
    """(B, H, L, D) NumPy float64 -> (B, L, H, D) JAX array in `dtype`."""
    import jax.numpy as jnp

    return jnp.asarray(np.swapaxes(x, 1, 2), dtype=getattr(jnp, dtype))


def jax_masks(mask, causal: str | None, N: int, M: int, dtype: str):
    """(bias, bool mask, is_causal) for jax: bias and mask broadcastable to (B, H, N, M)."""
    import jax.numpy as jnp

    bias = keep = None
    if mask is not None and mask.dtype == np.bool_:
        keep = mask
    elif mask is not None:
        bias = jnp.asarray(mask, dtype=getattr(jnp, dtype))
    if causal == "bottom_right" and N != M:   # jax's is_causal aligns top-left
        keep = causal_mask(N, M, causal) if keep is None else keep & causal_mask(N, M, causal)
        causal = None
    return bias, None if keep is None else jnp.asarray(keep), causal is not None


def jax_window(problem: Problem) -> tuple[int, int] | None:
    """`local_window_size` (left, right) for `problem`'s window, or None. JAX aligns it top-left (query i sees
    i - left <= j <= i + right: jax/_src/nn/functions.py `_get_window_mask`); the window is bottom-right
    (reference/mods/window.py), so both sides shift by M - N, and an unbounded side (-1) is N + M wide."""
    window = problem.mod("window")
    if window is None:
        return None
    shift, wide = problem.M - problem.N, problem.N + problem.M
    return (wide if window.left < 0 else window.left - shift, wide if window.right < 0 else window.right + shift)


@functools.lru_cache(maxsize=None)
def jitted(scale: float | None, is_causal: bool, return_lse: bool, window: tuple[int, int] | None = None):
    """The jitted attention for these static options: (q, k, v, bias, mask) -> O (B, N, H, Dv) [, lse (B, H, N)]."""
    import jax
    import jax.numpy as jnp

    def attend(q, k, v, bias, mask):
        result = jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale, is_causal=is_causal,
                                              local_window_size=window, return_residual=return_lse)
        if not return_lse:
            return result
        out, lse = result                                                     # lse (B, N, H)
        return out, jnp.swapaxes(lse, 1, 2)

    return jax.jit(attend)


@register
class JaxBackend(Backend):
    """jax: jax.nn.dot_product_attention, jitted, CPU (bf16/f32; window; no Dv != D, no fully masked rows)."""

    name = "jax"
    devices = ("cpu",)
    caps = Capabilities(dtypes=("bfloat16", "float32"), dv_differs=False, grad=True, lse=True,
                        empty_rows=False, strided=False, mods=("window",))

    def unavailable_reason(self) -> str | None:
        return None if HAS_JAX else "package jax not installed (pip install attnbench[jax])"

    def why_not(self, problem: Problem, device: str = "cpu", *, need_grad: bool = False) -> str | None:
        if problem.dtype == "bfloat16" and problem.N == problem.M == 1:
            return "bfloat16 with N = M = 1: XLA CPU cannot lower the 1x1 dot (ALG_DOT_BF16_BF16_F32)"
        return super().why_not(problem, device, need_grad=need_grad)

    def _arrays(self, inputs: Inputs, problem: Problem):
        q, k, v = (to_bnhd(x, problem.dtype) for x in (inputs.q, inputs.k, inputs.v))
        bias, mask, is_causal = jax_masks(inputs.mask, problem.causal, problem.N, problem.M, problem.dtype)
        return q, k, v, bias, mask, is_causal

    def prepare(self, inputs: Inputs, problem: Problem, *, device: str = "cpu",
                return_lse: bool = False) -> Callable[[], Any]:
        q, k, v, bias, mask, is_causal = self._arrays(inputs, problem)
        fn = jitted(problem.scale, is_causal, return_lse, jax_window(problem))
        import jax

        # JAX dispatches asynchronously: block, or a timer would measure only the dispatch.
        return lambda: jax.block_until_ready(fn(q, k, v, bias, mask))

    def prepare_backward(self, inputs: Inputs, problem: Problem, grad_out: np.ndarray, *,
                         device: str = "cpu") -> Callable[[], Any]:
        q, k, v, bias, mask, is_causal = self._arrays(inputs, problem)
        g = to_bnhd(grad_out, problem.dtype)
        fn = jitted(problem.scale, is_causal, False, jax_window(problem))
        import jax

        def run():
            _, vjp = jax.vjp(lambda q_, k_, v_: fn(q_, k_, v_, bias, mask), q, k, v)
            return jax.block_until_ready(vjp(g))

        return run

    def to_numpy(self, value) -> np.ndarray:
        """(B, L, H, D) -> (B, H, L, D) float64; an lse (B, H, N) is already canonical."""
        x = np.asarray(value, dtype=np.float64)
        return np.swapaxes(x, 1, 2) if x.ndim == 4 else x
