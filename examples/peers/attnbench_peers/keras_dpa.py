"""keras_numpy: Keras 3's keras.ops.dot_product_attention on the NumPy backend (CPU).

Keras takes query (B, N, H, D), key (B, M, H, D), value (B, M, H, Dv) (its letters B, T|S, N, H), an additive
`bias` and a bool `mask` (True = attend), `scale` and `is_causal` (top-left); the adapter transposes from the
canonical (B, H, N, D) once in `prepare` and folds bottom-right causal into the bool mask, as jax_dpa does.
The NumPy backend is chosen because it runs everywhere Keras installs and computes in the dtype it is given
(TensorFlow is not installed here; the JAX backend would re-test jax.nn.dot_product_attention, which the
`jax` backend already covers; the torch backend would re-test torch SDPA). KERAS_BACKEND=numpy is set before
keras is first imported; a process that already imported keras with another backend gets the reason.

Not declared, each for a measured reason (keras 3.15.1, numpy 2.4):
    float64      the softmax is "always carried out in fp32": float64 inputs come back float32-accurate;
    float16 large logits   Q Kᵀ is formed in float16 and scaled afterwards: |Q Kᵀ| > 65504 is inf, the row NaN;
    Hkv < H      query and key must have the same number of heads (einsum "BTNH,BSNH->BNTS");
    empty rows   a row with every key masked gets a large finite negative logit, so it averages V (not 0);
    grad         the NumPy backend has no autodiff.
Declared and measured: float16 is a known deviation (`keras_numpy_f16_einsum_accumulation`): NumPy's float16
einsum for Q Kᵀ and P V accumulates in float16, 3-13x the plain formula's error up to M 256 and growing with M
(up to 42x at M 1024), so float16 is declared only up to N, M <= 1024, where that growth was measured.

Shape letters: B batch, H heads, N queries, M keys, D, Dv head dims.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import numpy as np

from attnbench.deviations import KnownDeviation
from attnbench.implementations import Backend, Capabilities, register
from attnbench.problem import Inputs, Problem, apply_layout
from attnbench.reference.masks import causal_mask

INSTALL = "pip install 'attnbench[peers]' (keras >= 3)"
F16_LONGEST = 1024


@functools.cache
def _keras():
    """The keras module on the NumPy backend, or the reason it is not available."""
    os.environ.setdefault("KERAS_BACKEND", "numpy")
    try:
        import keras
    except ImportError as exc:
        return f"keras not importable ({exc}); {INSTALL}"
    if keras.backend.backend() != "numpy":
        return (f"keras runs on the {keras.backend.backend()} backend in this process; set KERAS_BACKEND=numpy "
                f"before keras is imported")
    return keras


def keras_version() -> str | None:
    found = _keras()
    return None if isinstance(found, str) else found.__version__


def _array(x: np.ndarray, dtype: str) -> np.ndarray:
    """A float64 array in `dtype` (bfloat16 through ml_dtypes, which Keras' NumPy backend reads)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return x.astype(ml_dtypes.bfloat16)
    return x.astype(dtype)


def _laid_out(x: np.ndarray, layout: str) -> np.ndarray:
    """x (B, H, L, D) stored as `layout` (attnbench.problem.apply_layout), in x's dtype."""
    return apply_layout(x, layout, contiguous=np.ascontiguousarray, zeros=lambda *shape: np.zeros(shape, x.dtype))


def _half(problem: Problem, backward: bool) -> bool:
    return problem.dtype == "float16"


@register
class KerasNumpy(Backend):
    """keras_numpy: Keras 3 keras.ops.dot_product_attention, NumPy backend (CPU; no GQA, no float64, no grad)."""

    name = "keras_numpy"
    devices = ("cpu",)
    caps = Capabilities(dtypes=("float16", "bfloat16", "float32"), gqa=False, empty_rows=False,
                        max_seq_by_dtype=(("float16", F16_LONGEST),))
    known_deviations = (
        KnownDeviation(
            name="keras_numpy_f16_einsum_accumulation",
            backend="keras_numpy",
            device="cpu",
            problem_class=f"float16, forward, up to L = max(N, M) {F16_LONGEST}",
            applies=_half,
            tensors=("output",),
            ratio_by_length=((256, 13.2), (F16_LONGEST, 42.3)),
            evidence=("keras 3.15.1, NumPy backend, numpy 2.4: _dot_product_attention_xla computes "
                      "np.einsum('BTNH,BSNH->BNTS') and np.einsum('BNTS,BSNH->BTNH') on float16 arrays, which "
                      "accumulate in float16 (NumPy's float16 matmul accumulates in float32); the output's error "
                      "over the plain formula's grows with M. Worst measured up to L 256: 13.1x (subnormal-range "
                      "'tiny' inputs, N 61, M 77; ordinary inputs 3.1x at N 97, M 113 and 6.8x at N 1, M 200, the "
                      "witness); up to L 1024: 42.2x (tiny, N 64, M 1024), 16.4x ordinary (N 1, M 1024), 4.5x at "
                      "N 1023; beyond, not declared (reports/peers/findings.md, scripts/peers_findings.py)"),
            witness="B=1,H=2,N=1,M=200,D=64,dtype=float16",
        ),
    )

    def unavailable_reason(self) -> str | None:
        found = _keras()
        return found if isinstance(found, str) else None

    def why_not(self, problem: Problem, device: str = "cpu", *, need_grad: bool = False) -> str | None:
        reason = super().why_not(problem, device, need_grad=need_grad)
        if reason and problem.dtype == "float64" and reason.startswith("dtype"):
            return "float64 not supported: Keras' NumPy backend computes the softmax in float32 (float32-accurate)"
        if reason is None and problem.dtype == "float16" and problem.inputs == "large_logits":
            return ("float16 large-logit inputs not supported: Keras' NumPy backend forms Q Kᵀ in float16 and "
                    "scales it afterwards, so |Q Kᵀ| above 65504 overflows to inf and the row is NaN")
        if reason and problem.dtype == "float16" and reason.startswith("N/M above"):
            return (f"{reason}: Keras' float16 einsum accumulates in float16, an error that grows with M "
                    f"(known deviation keras_numpy_f16_einsum_accumulation, measured up to {F16_LONGEST})")
        return reason

    def prepare(self, inputs: Inputs, problem: Problem, *, device: str = "cpu",
                return_lse: bool = False) -> Callable[[], Any]:
        keras = _keras()
        q, k, v = (np.swapaxes(_laid_out(_array(x, problem.dtype), problem.layout), 1, 2)
                   for x in (inputs.q, inputs.k, inputs.v))                      # (B, L, H, D)
        bias, keep, is_causal = keras_masks(inputs.mask, problem)
        bias = None if bias is None else _array(bias, problem.dtype)
        scale = problem.scale

        def run():
            return keras.ops.dot_product_attention(q, k, v, bias=bias, mask=keep, scale=scale, is_causal=is_causal)

        run.native_inputs = (q, k, v)
        return run

    def to_numpy(self, value) -> np.ndarray:
        """(B, N, H, Dv) -> (B, H, N, Dv) float64."""
        return np.swapaxes(np.asarray(value).astype(np.float64), 1, 2)


def keras_masks(mask, problem: Problem):
    """(bias, bool keep, is_causal) for Keras, broadcastable to (B, H, N, M): bottom-right causal with N != M
    becomes part of the bool mask (Keras' is_causal is top-left)."""
    bias = keep = None
    if mask is not None and mask.dtype == np.bool_:
        keep = mask
    elif mask is not None:
        bias = mask
    causal = problem.causal
    if causal == "bottom_right" and problem.N != problem.M:
        tri = causal_mask(problem.N, problem.M, causal)
        keep = tri if keep is None else keep & tri
        causal = None
    return bias, keep, causal is not None
