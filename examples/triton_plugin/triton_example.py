"""triton_example: a small Triton attention forward, as a plugin file that declares its kernel for `attnbench audit`.

One program per (query tile, batch x head) streams the key/value tiles once with the online softmax (running max
m_i, running sum l_i, accumulator acc rescaled by exp2(m_old - m_new)), as Triton's tutorial 06 does, and writes
O (B, H, N, Dv). Scores are kept in log2 units (scale * log2(e) folded in) for exp2. Supports float16 and float32
(float32 dots in IEEE precision, not TF32), causal top_left and bottom_right (key tiles past the diagonal are
skipped; rows that see no key give 0), N != M, Dv != D, D and Dv 16..128 (tiles padded to a power of two with
masked loads), any strides. No masks, grouped-query heads, backward or lse: it is an example.

    attnbench check triton_example --plugin examples/triton_plugin/triton_example.py \\
        --problem "B=1,H=2,N=97,M=113,D=64,dtype=float16,causal=bottom_right"     # CPU: under the interpreter
    attnbench audit triton_example --plugin examples/triton_plugin/triton_example.py --ci

Devices: "cuda" compiled; "cpu" only under the Triton interpreter (TRITON_INTERPRET=1 before triton is imported,
which `attnbench check` sets on a machine without CUDA), where N and M are capped at 256 (it is slow).

The audit hook is `audit_launches`: the kernel, the arguments a launch passes (built by the same `forward_call` the
backend launches, on torch "meta" tensors), and each candidate launch config, labelled for the audit's table.
"""
from __future__ import annotations

import os

import torch

from attnbench.implementations import Capabilities, KernelLaunch, TorchBackend, register

try:
    import triton
    import triton.language as tl

    TRITON_MISSING = None
except ImportError as exc:
    TRITON_MISSING = f"triton is not importable ({exc})"

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


if TRITON_MISSING is None:
    @triton.jit
    def _attn_fwd(Q, K, V, O, sqb, sqh, sqn, sqd, skb, skh, skm, skd, svb, svh, svm, svd, sob, soh, son, sod,
                  H, N, M, D, DV, qk_scale, causal_offset,
                  CAUSAL: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
        """O (B, H, N, Dv) for one (query tile, b*h) program; key j visible from query i iff j <= i + causal_offset
        (CAUSAL)."""
        start_n = tl.program_id(0) * BLOCK_N
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        q = tl.load(Q + b * sqb + h * sqh + offs_n[:, None] * sqn + offs_d[None, :] * sqd,
                    mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0)                   # (BN, BD)
        m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
        hi = M
        if CAUSAL:      # the last key any row of this tile may see is (start_n + BLOCK_N - 1) + causal_offset
            hi = tl.minimum(M, start_n + BLOCK_N + causal_offset)
        for start_m in range(0, hi, BLOCK_M):
            offs_m = start_m + offs_m0
            kt = tl.load(K + b * skb + h * skh + offs_m[None, :] * skm + offs_d[:, None] * skd,
                         mask=(offs_m[None, :] < M) & (offs_d[:, None] < D), other=0.0)              # (BD, BM)
            if IEEE:
                s = tl.dot(q, kt, input_precision="ieee") * qk_scale                              # (BN, BM)
            else:
                s = tl.dot(q, kt) * qk_scale
            keep = offs_m[None, :] < M
            if CAUSAL:
                keep = keep & (offs_m[None, :] <= offs_n[:, None] + causal_offset)
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)       # nothing seen yet: avoid -inf - -inf
            p = tl.math.exp2(s - shift[:, None])
            alpha = tl.math.exp2(m_i - shift)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + offs_m[:, None] * svm + offs_dv[None, :] * svd,
                        mask=(offs_m[:, None] < M) & (offs_dv[None, :] < DV), other=0.0)             # (BM, BDV)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / tl.where(l_i == 0, 1.0, l_i)[:, None]               # a row that saw no key: acc is 0, O is 0
        tl.store(O + b * sob + h * soh + offs_n[:, None] * son + offs_dv[None, :] * sod, out.to(O.dtype.element_ty),
                 mask=(offs_n[:, None] < N) & (offs_dv[None, :] < DV))


# (BLOCK_N, BLOCK_M, num_warps, num_stages) per (dtype kind, head dim up to 64 or up to 128); the first is what
# `attention` launches (an autotuner would choose among the rest).
CONFIGS = {
    ("half", 64): ((64, 64, 4, 2), (128, 64, 8, 2)),
    ("half", 128): ((64, 64, 4, 2), (128, 32, 8, 2)),
    ("fp32", 64): ((32, 32, 4, 1),),
    # 32 x 32 with 4 warps spills at D 128 in float32 on every target (the audit found STACK 232 to 664 B)
    ("fp32", 128): ((16, 32, 4, 1), (32, 32, 8, 1)),
}


def _kind(dtype) -> str:
    return "fp32" if str(dtype).removeprefix("torch.") == "float32" else "half"


def _padded(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def _configs(dtype, d: int, dv: int) -> tuple:
    return CONFIGS[(_kind(dtype), 64 if max(d, dv) <= 64 else 128)]


def forward_call(q, k, v, causal: str | None, scale: float | None):
    """(O, args, constexprs, grid) of the launch for q (B, H, N, D), k (B, H, M, D), v (B, H, M, Dv): what the
    backend launches and what the audit compiles (there on "meta" tensors)."""
    B, H, N, D = q.shape
    M, Dv = k.shape[2], v.shape[3]
    o = torch.empty((B, H, N, Dv), dtype=q.dtype, device=q.device)
    offset = {None: 0, "top_left": 0, "bottom_right": M - N}[causal]
    sm_scale = D ** -0.5 if scale is None else float(scale)
    args = (q, k, v, o, *q.stride(), *k.stride(), *v.stride(), *o.stride(), H, N, M, D, Dv, sm_scale * LOG2E, offset)
    constexprs = dict(CAUSAL=causal is not None, IEEE=q.dtype == torch.float32, BLOCK_D=_padded(D),
                      BLOCK_DV=_padded(Dv))
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B * H)  # noqa: E731
    return o, args, constexprs, grid


@register
class TritonExample(TorchBackend):
    """triton_example: a small Triton attention forward (online softmax over key tiles), a plugin file."""

    name = "triton_example"
    devices = ("cpu", "cuda")
    caps = Capabilities(dtypes=("float16", "float32"), masks=(), mask_with_causal=False, gqa=False,
                        head_dims=(16, 128))

    def unavailable_reason(self) -> str | None:
        return TRITON_MISSING

    def device_unavailable_reason(self, device: str) -> str | None:
        reason = super().device_unavailable_reason(device)
        if reason is None and device == "cpu" and not INTERPRETED:
            return "CPU runs need TRITON_INTERPRET=1 (the Triton interpreter)"
        if reason is None and device == "cuda" and INTERPRETED:
            return "kernels were built for the Triton interpreter (TRITON_INTERPRET=1); unset it for CUDA runs"
        return reason

    def simulated_reason(self, device: str) -> str | None:
        return "runs under the Triton interpreter on the CPU" if device == "cpu" and INTERPRETED else None

    def capabilities(self, device: str) -> Capabilities:
        return self.caps.replace(max_seq=256) if device == "cpu" else self.caps

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        o, args, constexprs, grid = forward_call(q, k, v, causal, scale)
        block_n, block_m, warps, stages = _configs(q.dtype, q.shape[-1], v.shape[-1])[0]
        _attn_fwd[grid](*args, **constexprs, BLOCK_N=block_n, BLOCK_M=block_m, num_warps=warps, num_stages=stages)
        return o

    def audit_launches(self, target: str, *, ci: bool = False) -> tuple[KernelLaunch, ...]:
        """Every config at D 64 and 128, float16 and float32, causal or not (ci: float16, D 64, causal), for a
        representative launch B 1, H 16, N = M = 4096; the same on every target (no config excluded)."""
        launches = []
        for dtype in ("float16",) if ci else ("float16", "float32"):
            for d in (64,) if ci else (64, 128):
                for causal in (True,) if ci else (False, True):
                    q, k, v = (torch.empty((1, 16, 4096, d), dtype=getattr(torch, dtype), device="meta")
                               for _ in range(3))
                    _, args, constexprs, _ = forward_call(q, k, v, "bottom_right" if causal else None, None)
                    for n, m, warps, stages in _configs(dtype, d, d):
                        launches.append(KernelLaunch(
                            _attn_fwd, args, {**constexprs, "BLOCK_N": n, "BLOCK_M": m}, warps, stages,
                            labels=(("kernel", "fwd"), ("D", str(d)), ("dtype", dtype),
                                    ("causal", "causal" if causal else "none"),
                                    ("config", f"n{n}m{m}w{warps}s{stages}")),
                            tensor_cores=dtype != "float32"))
        return tuple(launches)
