"""Figures derived from a measured point: FLOPs, minimum bytes moved, rates, roofline, fitted slopes.

Shape letters: B batch, H heads, Hkv key/value heads, N queries, M keys, D head dim, Dv value dim.
"""
from __future__ import annotations

import numpy as np

from attnbench.problem import Problem
from attnbench.reference import attention_flops, attention_pattern_size

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
FA2_BACKWARD_FACTOR = 2.5     # FlashAttention's benchmarks count the backward as 2.5x the forward (S recomputed)
FLOP_CONVENTION = ("FLOPs are the matmuls' (multiply + add = 2): forward 2·pairs·(D + Dv); the backward counted "
                   "as 2x the forward (dV, dP, dQ, dK: no recomputation), so fwd+bwd = 3x forward. Causal counts "
                   "only attended pairs. FlashAttention's published TFLOP/s count the backward as 2.5x (it "
                   "recomputes S), fwd+bwd = 3.5x: the `TFLOP/s (FA)` column uses that, for comparison with "
                   "published figures; it is the same time, read 1.17x higher.")


def flops(problem: Problem, pass_: str) -> int:
    """Matmul FLOPs of the pass, counting only the pairs a query may attend (causal, windows)."""
    p = problem
    return attention_flops(p.B, p.H, p.N, p.M, p.D, p.Dv, causal=p.causal, pass_=pass_, mods=p.mods)


def flops_fa2(problem: Problem, pass_: str) -> int:
    """FLOPs of the pass in FlashAttention's convention: the forward's, backward 2.5x it (fwd+bwd = 3.5x)."""
    forward = flops(problem, "fwd")
    return {"fwd": forward, "bwd": int(FA2_BACKWARD_FACTOR * forward),
            "fwd+bwd": int((1 + FA2_BACKWARD_FACTOR) * forward)}[pass_]


def min_bytes(problem: Problem, pass_: str) -> int:
    """Bytes a perfect kernel must move: read q, k, v (and dO), write o (and dQ, dK, dV), each once."""
    p = problem
    q, o = p.B * p.H * p.N * p.D, p.B * p.H * p.N * p.Dv
    k, v = p.B * p.Hkv * p.M * p.D, p.B * p.Hkv * p.M * p.Dv
    elements = q + k + v + o
    if pass_ != "fwd":
        elements += o + q + k + v                                            # dO read; dQ, dK, dV written
    return elements * ITEMSIZE[p.dtype]


# A decode step is bound by memory, not FLOPs (tritonbench's decoding_attention reports GB/s): its figure is the
# bytes a perfect kernel moves, K and V read once, Q read and O written once, over the time.
DECODE_MAX_N = 16
DECODE_BYTES = "bytes = (B·Hkv·M·(D + Dv) + B·H·N·(D + Dv)) · itemsize: K and V read once, Q read, O written"


def decode_bytes(problem: Problem) -> int:
    """Bytes of one forward decode step (`DECODE_BYTES`): the forward's `min_bytes`, K and V dominating."""
    return min_bytes(problem, "fwd")


def kv_bytes_per_token(problem: Problem) -> int:
    """Bytes one cached token holds, per sequence and layer: Hkv · (D + Dv) · itemsize (its K and V rows)."""
    p = problem
    return p.Hkv * (p.D + p.Dv) * ITEMSIZE[p.dtype]


def is_decode(n: int, m: int) -> bool:
    """A decode point: a few queries (N <= DECODE_MAX_N) against a longer cache."""
    return n <= DECODE_MAX_N and n < m


def kv_layout_label(problem: Problem) -> str:
    """How the point's KV cache is stored, for labels: the problem's `kv` ("dense", "ragged", "paged:16"), with
    "+append K" when new keys are written into the cache by the call."""
    return problem.kv + (f"+append {problem.append}" if problem.append else "")


def bandwidth_fraction(byte_count: int, seconds: float, peak_bandwidth: float | None) -> float | None:
    """Achieved bytes/s over the machine's measured copy bandwidth (None when it was not measured)."""
    return byte_count / seconds / peak_bandwidth if peak_bandwidth else None


def predicted_pattern_bytes(problem: Problem) -> int:
    """One (B, H, N, M) attention pattern in the problem's dtype: the N^2 buffer a naive kernel materialises."""
    p = problem
    return attention_pattern_size(p.N, p.M, batch=p.B, heads=p.H) * ITEMSIZE[p.dtype]


def attainable_flops(flop_count: int, byte_count: int, peak_flops: float, peak_bandwidth: float) -> float:
    """The roofline's attainable FLOP/s for a pass: min(peak FLOP/s, bandwidth * FLOPs per byte moved)."""
    return min(peak_flops, peak_bandwidth * flop_count / byte_count)


def loglog_slope(xs, ys) -> float | None:
    """Slope of log(y) against log(x) by least squares; None with fewer than 2 distinct positive x."""
    pts = [(x, y) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])
