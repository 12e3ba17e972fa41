"""triton_blockwise: FlashAttention-2-style attention written in Triton (forward, backward, lse).

Forward: one program per (query tile, batch x head). It streams K/V tiles with
the online softmax of `attnbench.reference.blockwise` (running max m_i, running
sum l_i, accumulator acc rescaled by exp(m_old - m_new) when the max rises),
never materialises (N, M), and writes O and the log-sum-exp. Scores are kept
in log2 units (scale * log2(e) folded in) so the kernel can use exp2.
Backward (FA2): delta = rowsum(dO * O) first; then one kernel per key tile
(dK, dV, looping over the query heads of its KV group, so grouped-query grads
are summed without atomics) and one per query tile (dQ), each recomputing P
from the saved lse.

Supports: float16, bfloat16, float32 (accumulation always float32; float32 dots
in IEEE precision, not TF32); causal top_left (key j <= i) and bottom_right
(j <= i + M - N), skipping key tiles a query tile cannot see; N != M;
grouped/multi-query heads (query head h reads KV head h // (H // Hkv), no copy);
D and Dv 16..256 incl. non-powers of two (the tile is padded to the next power
of two with masked loads); any strides; custom scale. Rows that see no key
(bottom_right with N > M) give O = 0 and lse = -inf, as the reference does.
Not supported: bool/bias masks, float64.

Modifications (`torch_mods.TorchMods`, conventions in `attnbench.reference.mods`),
each a constexpr flag, so a problem without them compiles the plain kernels:
- window (left, right), bottom-right aligned like FlashAttention's window_size:
  its right edge is one more diagonal j <= i + offset, merged with causal into
  CAUSAL (the nearer wins, as FlashAttention's local kernel treats causal as
  window (-1, 0)); its left edge is WINDOW, j >= i + window_offset. Both skip
  whole tiles: the forward and dQ loop over key tiles [first, last] of the
  query tile, dK/dV over the query rows that can see the key tile.
- SOFTCAP: cap tanh(s / cap) on the scaled scores (a tanh of our own, `_tanh`);
  the backward scales dS by 1 - tanh^2 at the softcap's input.
- ALIBI: -slope |i + M - N - j|, slopes (H,) or (B, H) float32; applied before
  or after the softcap as the problem orders them (ALIBI_FIRST; FlashAttention
  caps first).
- SINKS: per-head logits (H,) float32 start each row's state at (m, l) =
  (sink, 1); the lse includes the sink, so the backward is unchanged (dS = P
  (dP - delta), delta = rowsum(dO O), the sink adds nothing to O). No gradient
  for the sink logits or slopes.

Split-KV (flash-decoding): a third grid axis cuts the keys into chunks of whole tiles (FlashAttention's
n_blocks_per_split); each program writes its chunk's float32 partial O and lse, and `split_kv.combine` rescales
them by exp(lse_s - lse) (the sink joins there, once; the kernel runs without it). `auto_splits` follows
FlashAttention-2's num_splits_heuristic on CUDA (never under the interpreter, which runs one program at a time);
`num_splits` on the backend forces it. The backward is the unsplit one, from the combined O and lse.

KV layouts (`attnbench.reference.layouts`, FlashAttention's varlen and kvcache conventions), read by the forward
kernel itself (`KvCache`; constexprs KV and APPEND, so a dense problem compiles the plain kernel): the program for
(query tile, b*h, chunk) reads sequence b's start and length from cu_seqlens_q/_k (ragged: packed q, K, O, and
lse (H, total_q)) or its cache length from cache_seqlens and each key row's page from the block table (paged:
page = t // P, slot = t % P per key, so a tile spans pages of 1 or 16 keys or sits inside one of 256); appended
keys are read from k_new beside the cache (t >= cache_seqlens[b]), the cache itself never written. Causal,
windows and ALiBi are bottom-right in each sequence: the host's diagonals for the longest (N, M) move by
(M_b - N_b) - (M - N) in the program. Split-KV cuts each sequence's own keys. The backward kernels read ragged
batches the same way (KV 1: dK/dV per (key tile, b*hkv) over its sequence's queries, dQ per query tile, packed
gradients); paged and appended caches have no backward.

Devices: "cuda" compiled; "cpu" only under the Triton interpreter, i.e. when
TRITON_INTERPRET=1 was set before this module (and triton) was imported. The
interpreter is slow, so there N and M are capped at 256; and it computes
bfloat16 arithmetic on the raw uint16 bit patterns (a bf16 tl.dot or multiply
is garbage while load, store and casts are exact; float16/float32 are right),
so bfloat16 is refused under the interpreter and declared only on CUDA.

Follows the Triton tutorial 06 "fused attention" in reading order: kernels,
then the host wrappers and the autograd Function, then the backend.
"""
from __future__ import annotations

import os
import types
from dataclasses import dataclass

import numpy as np
import torch

from attnbench.reference import layouts as kv_layouts
from ._torch_common import TorchBackend
from attnbench.precision import FLASH, for_half

from . import split_kv
from .base import Capabilities
from .masks import causal_offset
from .kv_torch import native_kv
from .torch_mods import TorchMods
from .registry import register

# The modifications these kernels compute (document masks are not among them: a skip with its reason).
MODS = ("window", "softcap", "alibi", "sinks")

try:
    import triton
    import triton.language as tl

    TRITON_MISSING = None
    jit = triton.jit
except ImportError as exc:   # the module still imports, and the backend reports itself unavailable
    TRITON_MISSING = f"triton is not importable ({exc}); pip install 'attnbench[triton]'"
    tl = types.SimpleNamespace(constexpr=None)
    jit = lambda fn: fn  # noqa: E731

# triton.jit picks the interpreter when the kernels are decorated, so what counts is the setting at import.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRETER_MAX_SEQ = 256
# The interpreter runs the grid's programs one at a time in Python: B * H = 65,536 tiny heads ran over 10 minutes
# (CI, 2 cores); 4,096 covers every other case of the suite.
INTERPRETER_MAX_BATCH_HEADS = 4096
BF16_INTERPRETER_REASON = ("bfloat16 not supported under the Triton interpreter (TRITON_INTERPRET=1): it does "
                           "bf16 arithmetic on the uint16 bit patterns, so tl.dot gives garbage; declared on CUDA")
LOG2E = 1.4426950408889634
NO_MODS = TorchMods()


# ----------------------------------------------------------------------------------------------- kernels

@jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in float32; IEEE keeps float32 inputs out of TF32."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@jit
def _tanh(x):
    """tanh of float32 x to a few ulp from exp2 and a polynomial (libdevice's tanh does not run under the
    interpreter; PTX's tanh.approx.f32 is good to only about 2^-11 relative). |x| < 0.55: the odd Taylor series to
    x^17 (terms fall by (2x / pi)^2 < 0.13 each; the first one left out is below 2^-27 of the sum). Else
    (1 - e) / (1 + e), e = exp(-2|x|) <= 1/3: no cancellation there. NaN stays NaN, +-inf gives +-1."""
    a = tl.abs(x)
    e = tl.math.exp2(a * -2.8853900817779268)                      # exp(-2|x|) = 2^(-2 log2(e) |x|)
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    poly = 6404582.0 / 10854718875.0
    poly = poly * x2 - 929569.0 / 638512875.0
    poly = poly * x2 + 21844.0 / 6081075.0
    poly = poly * x2 - 1382.0 / 155925.0
    poly = poly * x2 + 62.0 / 2835.0
    poly = poly * x2 - 17.0 / 315.0
    poly = poly * x2 + 2.0 / 15.0
    poly = poly * x2 - 1.0 / 3.0
    small = x + x * (x2 * poly)
    return tl.where(a < 0.55, small, tl.where(x < 0, -big, big))


@jit
def _alibi(s, offs_n, offs_m, slope, seq_offset):
    """s - slope |i + M - N - j| (FlashAttention's alibi_slopes), slope in the scores' log2 units."""
    return s - slope * tl.abs(offs_n[:, None] + seq_offset - offs_m[None, :]).to(tl.float32)


@jit
def _score_mods(s, offs_n, offs_m, slope, seq_offset, softcap,
                ALIBI: tl.constexpr, ALIBI_FIRST: tl.constexpr, SOFTCAP: tl.constexpr):
    """Scores s (BN, BM) in log2 units after ALiBi and softcap in the problem's order, and the softcap's derivative
    1 - tanh^2 at its own input (the backward's dS factor; s itself, unused, without a softcap). slope and softcap
    come in log2 units: cap' tanh(s' / cap') with s' = s log2(e), cap' = cap log2(e) is log2(e) cap tanh(s / cap)."""
    dcap = s
    if ALIBI:
        if ALIBI_FIRST:
            s = _alibi(s, offs_n, offs_m, slope, seq_offset)
    if SOFTCAP:
        t = _tanh(s / softcap)
        dcap = 1.0 - t * t
        s = softcap * t
    if ALIBI:
        if not ALIBI_FIRST:        # FlashAttention's order: softcap, then ALiBi
            s = _alibi(s, offs_n, offs_m, slope, seq_offset)
    return s, dcap


@jit
def _keep(offs_n, offs_m, M, causal_offset, window_offset, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """Bool (BN, BM): key in range, not right of the diagonal j <= i + causal_offset (CAUSAL: causal, a window's
    right edge, or both at the nearer one) and not left of the window's left edge j >= i + window_offset."""
    keep = offs_m[None, :] < M
    if CAUSAL:
        keep = keep & (offs_m[None, :] <= offs_n[:, None] + causal_offset)
    if WINDOW:
        keep = keep & (offs_m[None, :] >= offs_n[:, None] + window_offset)
    return keep


@jit
def _sequence(b, N, M, CU_Q, CU_K, CACHE_SEQLENS, n_new, KV: tl.constexpr, APPEND: tl.constexpr):
    """(q0, n_b, k0, m_b, held) of sequence b: its first packed query row and query count, its first packed key
    row and key count, and how many of its keys the cache holds (the rest, m_b - held, are appended: k_new).
    Dense: (0, N, 0, M, M); ragged (KV 1): from cu_seqlens_q/_k, the held ones cache_seqlens[b] with APPEND;
    paged (KV 2): N queries, cache_seqlens[b] + n_new keys."""
    q0 = 0
    n_b = N
    k0 = 0
    m_b = M
    held = M
    if KV == 1:
        q0 = tl.load(CU_Q + b)
        n_b = tl.load(CU_Q + b + 1) - q0
        k0 = tl.load(CU_K + b)
        m_b = tl.load(CU_K + b + 1) - k0
        held = m_b
    if KV == 2:
        m_b = tl.load(CACHE_SEQLENS + b) + n_new
        held = m_b
    if APPEND:
        held = tl.load(CACHE_SEQLENS + b)
    return q0, n_b, k0, m_b, held


@jit
def _key_offsets(offs_m, b, held, BLOCK_TABLE, sbt, page_size, skb, skm, svb, svm, KV: tl.constexpr):
    """Element offsets of cache keys offs_m of one sequence in K and V, from its base (K + hkv skh, plus b skb when
    dense, k0 skm when ragged): rows offs_m; paged, page block_table[b, t // P] (stride skb: the pool's page
    stride), slot t % P, looked up per key so a tile may span pages (P < BLOCK_M) or share one (P > BLOCK_M).
    Keys past `held` (appended ones, or past the sequence) look up nothing: their loads are masked."""
    k_off = offs_m * skm
    v_off = offs_m * svm
    if KV == 2:
        page = tl.load(BLOCK_TABLE + b * sbt + offs_m // page_size, mask=offs_m < held, other=0)
        slot = offs_m % page_size
        k_off = page * skb + slot * skm
        v_off = page * svb + slot * svm
    return k_off, v_off


@jit
def _fwd_kernel(Q, K, V, O, LSE, ALIBI_SLOPES, SINK_LOGITS, CU_Q, CU_K, BLOCK_TABLE, CACHE_SEQLENS, K_NEW, V_NEW,
                sqb, sqh, sqn, sqd, skb, skh, skm, skd, svb, svh, svm, svd, sos, sob, soh, son, sod,
                sls, slb, slh, sln, sknb, sknh, sknm, sknd, svnb, svnh, svnm, svnd, sbt, page_size, n_new,
                H, GROUP, N, M, D, DV, qk_scale, causal_offset, window_offset, seq_offset, alibi_sb, softcap,
                N_BUCKET, M_BUCKET,
                CAUSAL: tl.constexpr, WINDOW: tl.constexpr, ALIBI: tl.constexpr, ALIBI_FIRST: tl.constexpr,
                SOFTCAP: tl.constexpr, SINKS: tl.constexpr, IEEE: tl.constexpr, KV: tl.constexpr,
                APPEND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr):
    """O and lse for one (query tile, b*h, key chunk) program; K/V read from head h // GROUP.

    KV 0 dense: q (B, H, N, D), K (B, Hkv, M, D) through its strides, O (B, H, N, Dv), lse (B, H, N). KV 1 ragged:
    packed q (total_q, H, D) and K (total_k, Hkv, D), sequence b at rows cu_seqlens[b] (sqb, skb, sob, slb 0);
    O (total_q, H, Dv), lse (H, total_q). KV 2 paged: K (pages, P, Hkv, D) through the block table, skb its page
    stride. APPEND: keys held..m_b of sequence b are k_new[b, 0..n_new) (the cache is read, never written). N, M
    are the longest sequence's lengths (the grid's); each sequence's causal diagonal, window and ALiBi distance
    are bottom-right in its own n_b x m_b."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hkv = h // GROUP
    q0, n_b, k0, m_b, held = _sequence(b, N, M, CU_Q, CU_K, CACHE_SEQLENS, n_new, KV, APPEND)
    if KV != 0:   # the host's diagonals are for (N, M): move them to this sequence's (n_b, m_b)
        to_sequence = (m_b - n_b) - (M - N)
        causal_offset += to_sequence
        window_offset += to_sequence
        seq_offset += to_sequence
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_n < n_b
    q = tl.load(Q + b * sqb + h * sqh + (q0 + offs_n)[:, None] * sqn + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)                        # (BN, BD)
    k_base = K + b * skb + hkv * skh
    v_base = V + b * svb + hkv * svh
    if KV == 1:
        k_base = K + k0 * skm + hkv * skh
        v_base = V + k0 * svm + hkv * svh
    if KV == 2:   # skb, svb are the pool's page strides: the page comes from the block table, per key
        k_base = K + hkv * skh
        v_base = V + hkv * svh
    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_N], tl.float32)
    if SINKS:     # the sink is one more term of every row's denominator, exp(sink) with value 0: (m, l) = (sink, 1)
        m_i = tl.zeros([BLOCK_N], tl.float32) + tl.load(SINK_LOGITS + h) * 1.4426950408889634
        l_i = tl.full([BLOCK_N], 1.0, tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    slope = 0.0
    if ALIBI:
        slope = tl.load(ALIBI_SLOPES + b * alibi_sb + h) * 1.4426950408889634
    lo = 0
    hi = m_b
    if CAUSAL:   # the last key any row of this tile may see is (start_n + BLOCK_N - 1) + offset
        hi = tl.minimum(m_b, start_n + BLOCK_N + causal_offset)
    if WINDOW:   # the first key row start_n may see is start_n + window_offset: skip whole tiles left of it
        lo = tl.maximum(0, start_n + window_offset) // BLOCK_M * BLOCK_M
    if KV == 1:   # a query tile past this sequence's end (the grid is the longest one's): no key tile
        hi = tl.where(start_n < n_b, hi, 0)
    # Split-KV: grid axis 2 cuts the keys into chunks of whole tiles, ceil(tiles / splits) each (FlashAttention's
    # n_blocks_per_split, of the sequence's own keys); one chunk (all of them) unsplit. A chunk outside [lo, hi)
    # runs no tile: O = 0, lse = -inf.
    split = tl.program_id(2)
    chunk = tl.cdiv(tl.cdiv(m_b, BLOCK_M), tl.num_programs(2)) * BLOCK_M
    lo = tl.maximum(lo, split * chunk)
    hi = tl.minimum(hi, split * chunk + chunk)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        k_off, v_off = _key_offsets(offs_m, b, held, BLOCK_TABLE, sbt, page_size, skb, skm, svb, svm, KV)
        k_ptrs = k_base + k_off[None, :] + offs_d[:, None] * skd
        if APPEND:   # keys held..m_b are the new ones, k_new[b, t - held]: one load through either pointer
            new = offs_m >= held
            k_ptrs = tl.where(new[None, :], K_NEW + b * sknb + hkv * sknh + (offs_m - held)[None, :] * sknm
                              + offs_d[:, None] * sknd, k_ptrs)
        kt = tl.load(k_ptrs, mask=(offs_m[None, :] < m_b) & (offs_d[:, None] < D), other=0.0)   # (BD, BM)
        s = _dot(q, kt, IEEE) * qk_scale                                                       # (BN, BM), log2 units
        s, _ = _score_mods(s, offs_n, offs_m, slope, seq_offset, softcap, ALIBI, ALIBI_FIRST, SOFTCAP)
        keep = _keep(offs_n, offs_m, m_b, causal_offset, window_offset, CAUSAL, WINDOW)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)        # a row with nothing seen yet: avoid -inf - -inf
        p = tl.math.exp2(s - shift[:, None])
        alpha = tl.math.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = v_base + v_off[:, None] + offs_dv[None, :] * svd
        if APPEND:
            v_ptrs = tl.where(new[:, None], V_NEW + b * svnb + hkv * svnh + (offs_m - held)[:, None] * svnm
                              + offs_dv[None, :] * svnd, v_ptrs)
        v = tl.load(v_ptrs, mask=(offs_m[:, None] < m_b) & (offs_dv[None, :] < DV), other=0.0)  # (BM, BDV)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    empty = l_i == 0                                                # saw no key (nor a sink); NaN rows are not empty
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]                                     # empty rows: acc is 0, so O is 0
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    # split s writes its partial at O + s sos, LSE + s sls (split-KV partials: O (S, ..), lse (S, ..) float32)
    rows = q0 + offs_n
    tl.store(O + split * sos + b * sob + h * soh + rows[:, None] * son + offs_dv[None, :] * sod,
             out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + split * sls + b * slb + h * slh + rows * sln, lse, mask=row_ok)


@jit
def _recompute_p(q, kt, lse, offs_n, offs_m, M, qk_scale, causal_offset, window_offset, seq_offset, slope, softcap,
                 CAUSAL: tl.constexpr, WINDOW: tl.constexpr, ALIBI: tl.constexpr, ALIBI_FIRST: tl.constexpr,
                 SOFTCAP: tl.constexpr, IEEE: tl.constexpr):
    """P (BN, BM) from the saved lse (natural log; a sink's term included) and the softcap's derivative (see
    _score_mods); rows with lse = -inf (saw no key) and masked pairs give P = 0."""
    s = _dot(q, kt, IEEE) * qk_scale
    s, dcap = _score_mods(s, offs_n, offs_m, slope, seq_offset, softcap, ALIBI, ALIBI_FIRST, SOFTCAP)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    p = tl.math.exp2(s - lse2[:, None])
    keep = _keep(offs_n, offs_m, M, causal_offset, window_offset, CAUSAL, WINDOW)
    return tl.where(keep, p, 0.0), dcap


@jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DVO, ALIBI_SLOPES, CU_Q, CU_K,
                     sqb, sqh, sqn, sqd, skb, skh, skm, skd, svb, svh, svm, svd,
                     sdob, sdoh, sdon, slb, slh, sdkb, sdkh, sdkm, sdvb, sdvh, sdvm,
                     H, HKV, GROUP, N, M, D, DV, qk_scale, sm_scale, causal_offset, window_offset, seq_offset,
                     alibi_sb, softcap, N_BUCKET, M_BUCKET,
                     CAUSAL: tl.constexpr, WINDOW: tl.constexpr, ALIBI: tl.constexpr, ALIBI_FIRST: tl.constexpr,
                     SOFTCAP: tl.constexpr, IEEE: tl.constexpr, KV: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dK (B, Hkv, M, D), dV (B, Hkv, M, Dv) for one (key tile, b*hkv), summed over the GROUP query heads.

    dO (B, H, N, Dv), lse and delta (B, H, N) as their strides say (the wrapper makes dO's last dim contiguous).
    KV 1 ragged: q, dO packed (total_q, H, .), K, dK, dV (total_k, Hkv, .), lse and delta (H, total_q), sequence b
    at rows cu_seqlens[b] (every batch stride 0). Sinks need nothing here: the lse holds the sink's term, so P is
    right, and dS = P (dP - delta) with delta = rowsum(dO O) still holds (the sink adds 0 to O).
    """
    start_m = tl.program_id(0) * BLOCK_M
    bk = tl.program_id(1)
    b = bk // HKV
    hkv = bk % HKV
    q0, n_b, k0, m_b, held = _sequence(b, N, M, CU_Q, CU_K, CU_Q, 0, KV, False)
    if KV != 0:   # the host's diagonals are for (N, M): move them to this sequence's (n_b, m_b)
        to_sequence = (m_b - n_b) - (M - N)
        causal_offset += to_sequence
        window_offset += to_sequence
        seq_offset += to_sequence
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    keys = k0 + offs_m
    kt = tl.load(K + b * skb + hkv * skh + keys[None, :] * skm + offs_d[:, None] * skd,
                 mask=(offs_m[None, :] < m_b) & (offs_d[:, None] < D), other=0.0)               # (BD, BM)
    vt = tl.load(V + b * svb + hkv * svh + keys[None, :] * svm + offs_dv[:, None] * svd,
                 mask=(offs_m[None, :] < m_b) & (offs_dv[:, None] < DV), other=0.0)            # (BDV, BM)
    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo = 0
    hi = n_b
    if CAUSAL:   # the first query that may see key start_m is start_m - offset
        lo = tl.maximum(0, start_m - causal_offset)
    if WINDOW:   # the last query that may see key start_m + BLOCK_M - 1 is that key - window_offset
        hi = tl.minimum(n_b, start_m + BLOCK_M - window_offset)
    if KV == 1:   # a key tile past this sequence's end (the grid is the longest one's): no query tile
        hi = tl.where(start_m < m_b, hi, 0)
    for g in range(0, GROUP):
        h = hkv * GROUP + g
        slope = 0.0
        if ALIBI:
            slope = tl.load(ALIBI_SLOPES + b * alibi_sb + h) * 1.4426950408889634
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + offs_n0
            row_ok = offs_n < n_b
            rows = q0 + offs_n
            q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + offs_d[None, :] * sqd,
                        mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)                # (BN, BD)
            do = tl.load(DO + b * sdob + h * sdoh + rows[:, None] * sdon + offs_dv[None, :],
                         mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)            # (BN, BDV)
            lse = tl.load(LSE + b * slb + h * slh + rows, mask=row_ok, other=float("-inf"))
            delta = tl.load(DELTA + b * slb + h * slh + rows, mask=row_ok, other=0.0)
            p, dcap = _recompute_p(q, kt, lse, offs_n, offs_m, m_b, qk_scale, causal_offset, window_offset,
                                   seq_offset, slope, softcap, CAUSAL, WINDOW, ALIBI, ALIBI_FIRST, SOFTCAP,
                                   IEEE)                                                       # (BN, BM)
            dv += _dot(tl.trans(p.to(do.dtype)), do, IEEE)
            dp = _dot(do, vt, IEEE)                                                            # (BN, BM)
            ds = p * (dp - delta[:, None])
            if SOFTCAP:     # through cap tanh(x / cap): d/dx = 1 - tanh^2 at the softcap's input
                ds = ds * dcap
            dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
    dk = dk * sm_scale
    tl.store(DK + b * sdkb + hkv * sdkh + keys[:, None] * sdkm + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=(offs_m[:, None] < m_b) & (offs_d[None, :] < D))
    tl.store(DVO + b * sdvb + hkv * sdvh + keys[:, None] * sdvm + offs_dv[None, :], dv.to(DVO.dtype.element_ty),
             mask=(offs_m[:, None] < m_b) & (offs_dv[None, :] < DV))


@jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, ALIBI_SLOPES, CU_Q, CU_K,
                   sqb, sqh, sqn, sqd, skb, skh, skm, skd, svb, svh, svm, svd,
                   sdob, sdoh, sdon, slb, slh, sdqb, sdqh, sdqn,
                   H, GROUP, N, M, D, DV, qk_scale, sm_scale, causal_offset, window_offset, seq_offset,
                   alibi_sb, softcap, N_BUCKET, M_BUCKET,
                   CAUSAL: tl.constexpr, WINDOW: tl.constexpr, ALIBI: tl.constexpr, ALIBI_FIRST: tl.constexpr,
                   SOFTCAP: tl.constexpr, IEEE: tl.constexpr, KV: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dQ (B, H, N, D) for one (query tile, b*h): sum over key tiles of dS K, dS = P * (dP - delta). Strides and
    KV as in _bwd_dkdv_kernel (ragged: dQ packed (total_q, H, D))."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hkv = h // GROUP
    q0, n_b, k0, m_b, held = _sequence(b, N, M, CU_Q, CU_K, CU_Q, 0, KV, False)
    if KV != 0:
        to_sequence = (m_b - n_b) - (M - N)
        causal_offset += to_sequence
        window_offset += to_sequence
        seq_offset += to_sequence
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_n < n_b
    rows = q0 + offs_n
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + rows[:, None] * sdon + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    lse = tl.load(LSE + b * slb + h * slh + rows, mask=row_ok, other=float("-inf"))
    delta = tl.load(DELTA + b * slb + h * slh + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    slope = 0.0
    if ALIBI:
        slope = tl.load(ALIBI_SLOPES + b * alibi_sb + h) * 1.4426950408889634
    lo = 0
    hi = m_b
    if CAUSAL:
        hi = tl.minimum(m_b, start_n + BLOCK_N + causal_offset)
    if WINDOW:
        lo = tl.maximum(0, start_n + window_offset) // BLOCK_M * BLOCK_M
    if KV == 1:   # a query tile past this sequence's end: no key tile
        hi = tl.where(start_n < n_b, hi, 0)
    k_base = K + b * skb + hkv * skh + k0 * skm
    v_base = V + b * svb + hkv * svh + k0 * svm
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        kt = tl.load(k_base + offs_m[None, :] * skm + offs_d[:, None] * skd,
                     mask=(offs_m[None, :] < m_b) & (offs_d[:, None] < D), other=0.0)           # (BD, BM)
        vt = tl.load(v_base + offs_m[None, :] * svm + offs_dv[:, None] * svd,
                     mask=(offs_m[None, :] < m_b) & (offs_dv[:, None] < DV), other=0.0)        # (BDV, BM)
        p, dcap = _recompute_p(q, kt, lse, offs_n, offs_m, m_b, qk_scale, causal_offset, window_offset, seq_offset,
                               slope, softcap, CAUSAL, WINDOW, ALIBI, ALIBI_FIRST, SOFTCAP, IEEE)
        ds = p * (_dot(do, vt, IEEE) - delta[:, None])
        if SOFTCAP:
            ds = ds * dcap
        dq += _dot(ds.to(kt.dtype), tl.trans(kt), IEEE)
    dq = dq * sm_scale
    tl.store(DQ + b * sdqb + h * sdqh + rows[:, None] * sdqn + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


# ----------------------------------------------------------------------------------------------- host side

@dataclass(frozen=True)
class LaunchConfig:
    """One launch of a kernel: the tile (BLOCK_N query rows x BLOCK_M key rows), warps and pipeline stages."""

    block_n: int
    block_m: int
    num_warps: int
    num_stages: int

    @property
    def id(self) -> str:
        return f"n{self.block_n}m{self.block_m}w{self.num_warps}s{self.num_stages}"

    def triton_config(self):
        return triton.Config(dict(BLOCK_N=self.block_n, BLOCK_M=self.block_m), num_warps=self.num_warps,
                             num_stages=self.num_stages)


def _configs(*specs: tuple[int, int, int, int]) -> tuple[LaunchConfig, ...]:
    return tuple(LaunchConfig(*spec) for spec in specs)


KERNELS = ("fwd", "dkdv", "dq")
# Candidate launch configs per kernel, (dtype kind, padded head dim): what autotune may choose from on CUDA.
# Pruned by `attnbench audit` (perf/audit.py): on every audited target (sm_80, sm_90, sm_100) each of these
# compiles without spills, within the register and shared-memory limits, and its half-precision dots reach
# the tensor cores; a target where one does not is listed in EXCLUDED and never launched there. The first
# entry is the default (the interpreter's, and a GPU the audit does not cover).
CONFIG_SPACE: dict[str, dict[tuple[str, int], tuple[LaunchConfig, ...]]] = {
    "fwd": {
        ("half", 16): _configs((128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 3)),
        ("half", 32): _configs((128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)),
        ("half", 64): _configs((64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)),
        ("half", 128): _configs((128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2)),
        ("half", 256): _configs((64, 32, 4, 2), (64, 64, 8, 2), (32, 32, 4, 1)),
        ("fp32", 16): _configs((64, 32, 4, 2), (32, 32, 4, 2)),
        ("fp32", 32): _configs((64, 32, 4, 2), (32, 32, 4, 2)),
        ("fp32", 64): _configs((32, 32, 4, 2)),
        ("fp32", 128): _configs((32, 32, 8, 1), (16, 32, 4, 1)),
        ("fp32", 256): _configs((16, 16, 4, 1), (32, 16, 8, 1)),
    },
    "dkdv": {
        ("half", 16): _configs((64, 64, 4, 2), (32, 64, 4, 2), (64, 128, 8, 2)),
        ("half", 32): _configs((64, 64, 4, 2), (32, 64, 4, 2), (64, 128, 8, 2)),
        ("half", 64): _configs((32, 64, 4, 2), (64, 64, 4, 2), (64, 128, 8, 2)),
        ("half", 128): _configs((32, 64, 8, 1), (32, 32, 4, 2), (16, 64, 4, 2), (64, 64, 8, 2)),
        ("half", 256): _configs((32, 64, 8, 1), (32, 32, 4, 1)),
        ("fp32", 16): _configs((32, 32, 4, 2), (32, 64, 4, 2)),
        ("fp32", 32): _configs((32, 32, 4, 2)),
        ("fp32", 64): _configs((16, 32, 4, 1), (32, 32, 8, 1)),
        ("fp32", 128): _configs((16, 32, 8, 1), (16, 16, 4, 1)),
        ("fp32", 256): _configs((16, 16, 4, 1), (16, 32, 8, 1), (16, 16, 8, 1)),
    },
    "dq": {
        ("half", 16): _configs((64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2)),
        ("half", 32): _configs((64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2)),
        ("half", 64): _configs((64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2)),
        ("half", 128): _configs((64, 32, 4, 2), (64, 64, 8, 2), (128, 32, 8, 2)),
        ("half", 256): _configs((32, 32, 8, 1), (16, 32, 4, 1)),
        ("fp32", 16): _configs((32, 32, 4, 2), (64, 32, 4, 2)),
        ("fp32", 32): _configs((32, 32, 4, 2), (64, 32, 4, 2)),
        ("fp32", 64): _configs((32, 32, 4, 2), (64, 32, 8, 2)),
        ("fp32", 128): _configs((16, 32, 8, 1), (16, 32, 4, 1)),
        ("fp32", 256): _configs((32, 16, 4, 1), (32, 32, 8, 1)),
    },
}
# (target, kernel, dtype kind, padded head dim) -> {config id: why the audit rejected it there}. From
# `attnbench audit` with triton 3.9.0 (it prints these lines for any launchable config that fails). STACK bytes
# with LOCAL 0 are register spills to the stack frame.
EXCLUDED: dict[tuple[str, str, str, int], dict[str, str]] = {
    ("sm_100", "fwd", "half", 16): {"n64m64w4s3": "spills: STACK 8 B"},
    ("sm_100", "fwd", "half", 32): {"n64m64w4s3": "spills: STACK 48 B (non-causal)"},
    ("sm_80", "fwd", "half", 32): {"n128m64w4s3": "spills: STACK 8 B (non-causal)"},
    ("sm_80", "fwd", "half", 64): {"n128m64w4s3": "spills: STACK 16 B (non-causal)"},
    ("sm_80", "dkdv", "half", 32): {"n64m128w8s2": "spills: STACK 24 B (non-causal)"},
    ("sm_80", "dkdv", "fp32", 256): {"n16m32w8s1": "spills: STACK 8 B (non-causal)",
                                     "n16m16w8s1": "spills: STACK 8 B (non-causal)"},
    ("sm_80", "dq", "fp32", 64): {"n64m32w8s2": "spills: STACK 16 B (non-causal)"},
    ("sm_80", "dkdv", "half", 64): {"n64m64w4s2": "spills: STACK 8 B", "n64m128w8s2": "spills: STACK 8 B"},
    ("sm_90", "dkdv", "half", 64): {"n64m128w8s2": "spills: STACK 8 B"},
    ("sm_80", "dkdv", "half", 128): {"n64m64w8s2": "spills: STACK 32 B"},
    ("sm_80", "dkdv", "half", 256): {"n32m32w4s1": "spills: STACK 8 B"},
    ("sm_80", "dq", "half", 64): {"n64m64w4s2": "spills: STACK 24 B", "n128m64w8s2": "spills: STACK 24 B"},
    ("sm_80", "dq", "half", 128): {"n128m32w8s2": "spills: STACK 16 B"},
    ("sm_80", "dq", "fp32", 256): {"n32m32w8s1": "spills: STACK 8 B"},
    # since the split-KV grid axis (program_id(2) and the partials' strides), `attnbench audit --ci`
    ("sm_100", "fwd", "fp32", 256): {"n16m16w4s1": "spills: STACK 8 B"},
}
# On top of EXCLUDED for a problem with any modification: where the variant with every modification's constexpr on
# (window, ALiBi, softcap, sinks: the most registers) spills. From `attnbench audit --mods all --causal causal
# --dtypes float16,float32` with triton 3.9.0 (bfloat16 shares float16's entries, as in EXCLUDED).
EXCLUDED_WITH_MODS: dict[tuple[str, str, str, int], dict[str, str]] = {
    ("sm_80", "dkdv", "fp32", 128): {"n16m32w8s1": "spills: STACK 8 B"},
    ("sm_80", "dq", "fp32", 128): {"n16m32w8s1": "spills: STACK 8 B"},
    ("sm_90", "dkdv", "half", 16): {"n64m128w8s2": "spills: STACK 120 B"},
    ("sm_90", "dkdv", "half", 32): {"n64m128w8s2": "spills: STACK 192 B"},
    ("sm_90", "dkdv", "half", 128): {"n64m64w8s2": "spills: STACK 80 B"},
    ("sm_90", "dkdv", "half", 256): {"n32m32w4s1": "spills: STACK 16 B"},
    ("sm_90", "dkdv", "fp32", 16): {"n32m64w4s2": "spills: STACK 8 B"},
    ("sm_90", "dkdv", "fp32", 256): {"n16m32w8s1": "spills: STACK 8 B"},
    ("sm_90", "dq", "fp32", 128): {"n16m32w4s1": "spills: STACK 8 B"},
    ("sm_100", "fwd", "half", 16): {"n128m64w4s3": "spills: STACK 16 B"},
    ("sm_100", "fwd", "half", 32): {"n128m64w4s3": "spills: STACK 8 B"},
    ("sm_100", "fwd", "half", 64): {"n128m64w4s3": "spills: STACK 16 B"},
    ("sm_100", "dkdv", "half", 256): {"n32m32w4s1": "spills: STACK 24 B"},
    ("sm_100", "dkdv", "fp32", 256): {"n16m32w8s1": "spills: STACK 8 B"},
    ("sm_100", "dq", "half", 16): {"n128m64w8s2": "spills: STACK 16 B"},
    ("sm_100", "dq", "half", 32): {"n128m64w8s2": "spills: STACK 32 B"},
    ("sm_100", "dq", "fp32", 128): {"n16m32w4s1": "spills: STACK 8 B"},
}


# On top of the above for a KV layout's kernels (ragged, paged, appended keys: KV, APPEND on, `KvCache`): where
# the layout variant spills. From `attnbench audit --ci` with triton 3.9.0 (the full grid's KV variants not yet run).
EXCLUDED_WITH_KV: dict[tuple[str, str, str, int], dict[str, str]] = {
    ("sm_90", "fwd", "half", 64): {"n128m64w4s3": "spills: STACK 16 B (paged+append)"},
    ("sm_90", "fwd", "half", 256): {"n32m32w4s1": "spills: STACK 24 B (paged+append)"},
}


def dtype_kind(dtype) -> str:
    """"half" for float16/bfloat16 (tensor-core dots), "fp32" for float32 (IEEE dots on the CUDA cores)."""
    return "fp32" if str(dtype).removeprefix("torch.") == "float32" else "half"


def padded_head_dim(d: int, dv: int) -> int:
    """The power-of-two tile width the kernels use for max(D, Dv): 80, 96 -> 128; 192 -> 256; at least 16."""
    return max(16, 1 << (max(d, dv) - 1).bit_length())


def candidate_configs(kernel: str, kind: str, d_pad: int, target: str | None = None,
                      mods: bool = False, kv: bool = False) -> tuple[LaunchConfig, ...]:
    """The configs `kernel` may launch with for (dtype kind, padded head dim) on `target` (None: any); mods: for a
    problem with any modification (EXCLUDED_WITH_MODS applies too); kv: a KV layout's launch (EXCLUDED_WITH_KV
    too)."""
    key = (target, kernel, kind, d_pad)
    tables = (EXCLUDED, *((EXCLUDED_WITH_MODS,) if mods else ()), *((EXCLUDED_WITH_KV,) if kv else ()))
    excluded = {c: why for table in tables for c, why in table.get(key, {}).items()} if target else {}
    return tuple(c for c in CONFIG_SPACE[kernel][(kind, d_pad)] if c.id not in excluded)


def default_configs(kind: str, d_pad: int) -> dict[str, LaunchConfig]:
    """{kernel: its first candidate}: what the interpreter (and an unaudited GPU) launches."""
    return {kernel: CONFIG_SPACE[kernel][(kind, d_pad)][0] for kernel in KERNELS}


def seq_bucket(n: int) -> int:
    """Autotune key for a sequence length: the next power of two, at least 64 (one choice per bucket)."""
    return max(64, 1 << (n - 1).bit_length())


_AUTOTUNED: dict[tuple, object] = {}
# The constexpr variants tune apart: a window changes the work per tile, ALiBi and a softcap the registers.
AUTOTUNE_FLAGS = ("CAUSAL", "WINDOW", "ALIBI", "SOFTCAP", "KV", "APPEND")


def _autotuned(kernel: str, jit_fn, target: str, kind: str, d_pad: int, mods: bool, kv: bool = False):
    """jit_fn wrapped in triton.autotune over its launchable configs for (target, kind, d_pad, mods, kv); built
    once."""
    key = (kernel, target, kind, d_pad, mods, kv)
    if key not in _AUTOTUNED:
        configs = [c.triton_config() for c in candidate_configs(kernel, kind, d_pad, target, mods, kv)]
        _AUTOTUNED[key] = triton.autotune(configs, key=["N_BUCKET", "M_BUCKET", "D", "DV", *AUTOTUNE_FLAGS])(jit_fn)
    return _AUTOTUNED[key]


def _cuda_target(device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _audited(target: str) -> bool:
    """Whether `attnbench audit` compiles for `target` (its candidates were pruned there); imported here, on a
    CUDA launch, so that listing backends never imports attnbench.perf."""
    from attnbench.perf.gpu_targets import TARGETS

    return target in TARGETS


def _launcher(kernel: str, jit_fn, q, d_pad: int, forced: dict[str, LaunchConfig] | None, mods: bool,
              kv: bool = False):
    """(callable kernel[grid](...), extra launch kwargs): autotuned on an audited GPU, else one fixed config.
    mods: the problem has a modification (its variants use more registers: EXCLUDED_WITH_MODS); kv: the forward
    reads a KV layout (EXCLUDED_WITH_KV)."""
    kind = dtype_kind(q.dtype)
    if forced is None and q.device.type == "cuda" and not INTERPRETED:
        target = _cuda_target(q.device)
        if _audited(target):
            return _autotuned(kernel, jit_fn, target, kind, d_pad, mods, kv), {}
    config = (forced or default_configs(kind, d_pad))[kernel]
    return jit_fn, dict(BLOCK_N=config.block_n, BLOCK_M=config.block_m, num_warps=config.num_warps,
                        num_stages=config.num_stages)



def diagonals(causal, window, n: int, m: int) -> dict:
    """The kernels' two diagonals: key j visible from query i iff j <= i + causal_offset (CAUSAL) and
    j >= i + window_offset (WINDOW). causal and a window's right edge are both the first (the nearer one wins);
    FlashAttention's local kernel masks the same way (causal is its window (-1, 0)). window: (left, right) or None,
    -1 for an unbounded side, aligned bottom-right like its window_size."""
    right = [] if causal is None else [causal_offset(causal, n, m)]
    left, right_edge = window if window is not None else (-1, -1)
    right += [m - n + right_edge] if right_edge >= 0 else []
    return dict(causal_offset=min(right, default=0), window_offset=m - n - left if left >= 0 else 0,
                consts=dict(CAUSAL=bool(right), WINDOW=left >= 0))


def mod_args(mods, q, b: int, h: int) -> dict:
    """ALiBi slopes and sink logits (float32 on q's device, None if absent), the slopes' batch stride (0: per
    head), the softcap in log2 units, and the constexpr flags the kernels specialise on."""
    order = mods.order
    alibi = None if mods.alibi is None else mods.alibi.to(device=q.device, dtype=torch.float32).contiguous()
    sinks = None if mods.sinks is None else mods.sinks.to(device=q.device, dtype=torch.float32).contiguous()
    if alibi is not None and alibi.shape not in ((h,), (b, h)):
        raise ValueError(f"triton_blockwise: ALiBi slopes must be (H,) or (B, H) = ({h},) or ({b}, {h}), "
                         f"got {tuple(alibi.shape)}")
    if sinks is not None and sinks.shape != (h,):
        raise ValueError(f"triton_blockwise: sink logits must be (H,) = ({h},), got {tuple(sinks.shape)}")
    return dict(alibi=alibi, sinks=sinks,
                alibi_sb=h if alibi is not None and alibi.ndim == 2 else 0,
                softcap=(mods.softcap or 1.0) * LOG2E,
                consts=dict(ALIBI=alibi is not None, SOFTCAP=mods.softcap is not None,
                            ALIBI_FIRST="alibi" in order and "softcap" in order
                            and order.index("alibi") < order.index("softcap")),
                sink_const=dict(SINKS=sinks is not None))


def _common_args(q, k, v, causal, scale, mods, kv: "KvCache | None" = None) -> dict:
    B, H, N, D, Hkv, M, Dv = (q.shape + k.shape[1:3] + v.shape[3:]) if kv is None else kv.sizes(q, k, v)
    sm_scale = D ** -0.5 if scale is None else float(scale)
    diag, mod = diagonals(causal, mods.window, N, M), mod_args(mods, q, B, H)
    return dict(B=B, H=H, Hkv=Hkv, N=N, M=M, D=D, Dv=Dv, sm_scale=sm_scale,
                alibi=mod["alibi"], sinks=mod["sinks"],
                # (causal_offset, window_offset, seq_offset, alibi_sb, softcap): the kernels' runtime mod arguments
                mod_values=(diag["causal_offset"], diag["window_offset"], M - N, mod["alibi_sb"], mod["softcap"]),
                buckets=(seq_bucket(N), seq_bucket(M)), sink_const=mod["sink_const"],
                consts=dict(**diag["consts"], **mod["consts"], IEEE=q.dtype == torch.float32,
                            BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=max(16, triton.next_power_of_2(Dv))))


def triton_forward(q, k, v, causal, scale, configs: dict[str, LaunchConfig] | None = None, mods=NO_MODS,
                   splits: int = 1, kv: "KvCache | None" = None):
    """q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) -> O (B, H, N, Dv) in q's dtype, lse (B, H, N) float32.

    configs: {kernel: LaunchConfig} to force (tests run every candidate); None autotunes on CUDA.
    mods: `torch_mods.TorchMods` (window, softcap, ALiBi, sinks); the lse includes a sink's term.
    splits > 1: split-KV, one launch over (query tiles, B * H, splits) writing float32 partials, then
    `split_kv.combine` (the sink joins there, once).
    kv: a ragged or paged layout, or appended keys (`KvCache`), read by the kernel itself: q, k, v are then the
    layout's physical tensors, and O, lse come in its shapes (ragged: (total_q, H, Dv), (H, total_q)).
    """
    o, lse, call = forward_call(q, k, v, causal, scale, mods, splits, kv)
    fn, launch = _launcher("fwd", _fwd_kernel, q, padded_head_dim(q.shape[-1], v.shape[-1]), configs, not mods.empty,
                           kv is not None)
    fn[call.grid](*call.args, **call.constexprs, **launch)
    if splits == 1:
        return o, lse
    sinks = None if mods.sinks is None else mods.sinks.to(device=q.device, dtype=torch.float32)
    if kv is not None and kv.kind == "ragged":    # partials (S, H, total_q, Dv) and (S, H, total_q)
        out, lse = split_kv.combine(o, lse, None if sinks is None else sinks[:, None])
        return out.transpose(0, 1).contiguous().to(q.dtype), lse
    out, lse = split_kv.combine(o, lse, None if sinks is None else sinks[None, :, None])
    return out.to(q.dtype), lse


@dataclass(frozen=True)
class KernelCall:
    """One kernel's launch without its config: positional args, constexprs but the tile, and grid(meta)."""

    args: tuple
    constexprs: dict
    grid: object


@dataclass(frozen=True)
class KvCache:
    """A KV layout the forward kernel reads itself, in FlashAttention's arguments (`attnbench.reference.layouts`).

    kind "ragged": q (total_q, H, D), k (total_k, Hkv, D) packed, cu_seqlens_q/_k (B + 1,) int32 (varlen);
    "paged": k (num_pages, page_size, Hkv, D) addressed through block_table (B, max_pages) int32, cache_seqlens
    (B,) keys held per sequence (kvcache); "dense": k (B, Hkv, M, D). k_new, v_new (B, K, Hkv, D|Dv): keys
    appended after each sequence's cache_seqlens[b] held ones (read from k_new; the cache is not written).
    max_seqlen_q, max_seqlen_k: the longest sequence's N and M (the grid's size and the diagonals' origin).
    """

    kind: str
    cache_seqlens: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    block_table: torch.Tensor | None = None
    k_new: torch.Tensor | None = None
    v_new: torch.Tensor | None = None

    CODES = {"dense": 0, "ragged": 1, "paged": 2}      # the kernel's KV constexpr

    def sizes(self, q, k, v) -> tuple:
        """(B, H, N, D, Hkv, M, Dv): the batch and heads of the physical tensors, N and M the longest."""
        B = len(self.cache_seqlens)
        H, D = q.shape[-2:] if self.kind == "ragged" else (q.shape[1], q.shape[3])
        Hkv = k.shape[-2] if self.kind != "dense" else k.shape[1]
        return B, H, self.max_seqlen_q, D, Hkv, self.max_seqlen_k, v.shape[-1]

    def strides(self, x) -> tuple:
        """(batch, head, row, dim) strides of a cache tensor: paged the page stride stands for the batch's (the
        kernel adds page * it), the slot's for the row's; ragged no batch stride (the kernel starts at cu_seqlens)."""
        if self.kind == "ragged":
            return 0, x.stride(1), x.stride(0), x.stride(2)
        if self.kind == "paged":
            return x.stride(0), x.stride(2), x.stride(1), x.stride(3)
        return tuple(x.stride())


def _new_strides(x) -> tuple:
    """(batch, head, row, dim) strides of appended keys (B, K, Hkv, D); zeros without any."""
    return (0,) * 4 if x is None else (x.stride(0), x.stride(2), x.stride(1), x.stride(3))


def forward_call(q, k, v, causal, scale, mods=NO_MODS, splits: int = 1, kv: KvCache | None = None) -> tuple:
    """(O, lse, KernelCall of _fwd_kernel): the outputs allocated and the arguments a launch passes (what
    triton_forward launches and `attnbench audit` compiles, there with torch "meta" tensors). splits > 1: O and
    lse are the float32 partials (S, B, H, N, .) the combine reads ((S, H, total_q, .) ragged), and no program
    adds the sink. kv: the layout (`KvCache`), None dense."""
    a = _common_args(q, k, v, causal, scale, mods, kv)
    B, H, N, Dv = a["B"], a["H"], a["N"], a["Dv"]
    split = splits > 1
    ragged = kv is not None and kv.kind == "ragged"
    # partials stay float32 (FlashAttention's oaccum): the output is rounded once, after the combine
    dtype = torch.float32 if split else q.dtype
    if ragged:    # O (total_q, H, Dv) and lse (H, total_q) as varlen returns them; partials head-major
        total = q.shape[0]
        o = torch.empty((splits, H, total, Dv) if split else (total, H, Dv), dtype=dtype, device=q.device)
        lse = torch.empty((splits, H, total) if split else (H, total), dtype=torch.float32, device=q.device)
        o_strides = (*o.stride()[:1], 0, *o.stride()[1:]) if split else (0, 0, o.stride(1), o.stride(0), o.stride(2))
        lse_strides = (lse.stride(0), 0, lse.stride(1), 1) if split else (0, 0, lse.stride(0), 1)
        q_strides = (0, q.stride(1), q.stride(0), q.stride(2))
    else:
        o = torch.empty((splits, B, H, N, Dv) if split else (B, H, N, Dv), dtype=dtype, device=q.device)
        lse = torch.empty((splits, B, H, N) if split else (B, H, N), dtype=torch.float32, device=q.device)
        o_strides = o.stride() if split else (0, *o.stride())
        lse_strides = lse.stride() if split else (0, *lse.stride())
        q_strides = q.stride()
    # an absent modification's or layout's pointer is never read: any buffer stands in (the signature stays)
    alibi, sinks = (lse if x is None else x for x in (a["alibi"], a["sinks"]))
    if kv is None:
        layout = (lse,) * 6 + (0,) * 11
        k_strides, v_strides, code, append = k.stride(), v.stride(), 0, False
    else:
        new = kv.k_new is not None
        layout = (*(lse if x is None else x for x in (kv.cu_seqlens_q, kv.cu_seqlens_k, kv.block_table,
                                                        kv.cache_seqlens, kv.k_new, kv.v_new)),
                  *_new_strides(kv.k_new), *_new_strides(kv.v_new),
                  0 if kv.block_table is None else kv.block_table.stride(0),
                  k.shape[1] if kv.kind == "paged" else 1, kv.k_new.shape[1] if new else 0)
        k_strides, v_strides, code, append = kv.strides(k), kv.strides(v), KvCache.CODES[kv.kind], new
    pointers, ints = layout[:6], layout[6:]
    args = (q, k, v, o, lse, alibi, sinks, *pointers, *q_strides, *k_strides, *v_strides, *o_strides,
            *lse_strides, *ints, H, H // a["Hkv"], N, a["M"], a["D"], Dv, a["sm_scale"] * LOG2E, *a["mod_values"],
            *a["buckets"])
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B * H, splits)  # noqa: E731
    consts = {**a["consts"], "SINKS": a["sink_const"]["SINKS"] and not split, "KV": code, "APPEND": append}
    return o, lse, KernelCall(args, consts, grid)


def auto_splits(q, k, sizes: tuple[int, int, int, int] | None = None) -> int:
    """Split-KV chunks for q (B, H, N, D) against k (B, Hkv, M, D) by FlashAttention's rule
    (`split_kv.num_splits_heuristic`), with the default forward tile: work items B * H * query tiles, key blocks
    of M, the GPU's workers (2 x SMs). sizes: (B, H, N, M) where q, k are a layout's physical tensors (N, M the
    longest sequence's, as FlashAttention's varlen and kvcache kernels count them). The interpreter runs one
    program at a time: 1."""
    if INTERPRETED or q.device.type != "cuda":
        return 1
    tile = default_configs(dtype_kind(q.dtype), padded_head_dim(q.shape[-1], q.shape[-1]))["fwd"]
    B, H, N, M = sizes or (*q.shape[:3], k.shape[2])
    return split_kv.num_splits_heuristic(B * H * -(-N // tile.block_n), split_kv.device_workers(q.device),
                                         -(-M // tile.block_m))


def triton_backward(q, k, v, o, lse, do, causal, scale, configs: dict[str, LaunchConfig] | None = None,
                    mods=NO_MODS, kv: KvCache | None = None):
    """(dQ, dK, dV) shaped like q, k, v, from the forward's O and lse and the upstream dO (B, H, N, Dv).

    kv: a ragged layout (`KvCache`; paged and appended caches have no backward): q, k, v, O, dO packed, lse
    (H, total_q), the gradients packed like q, k, v.
    No gradient for the ALiBi slopes or the sink logits (FlashAttention returns none either)."""
    do = do.contiguous()
    delta = (do.float() * o.float()).sum(-1)                     # (B, H, N): the FA2 preprocess rowsum(dO * O)
    if kv is not None:
        delta = delta.t()                                        # (total_q, H) -> (H, total_q), as the lse
    dq, dk, dv, calls = backward_calls(q, k, v, lse.contiguous(), do, delta.contiguous(), causal, scale, mods, kv)
    d_pad = padded_head_dim(q.shape[-1], v.shape[-1])
    for kernel, jit_fn in (("dkdv", _bwd_dkdv_kernel), ("dq", _bwd_dq_kernel)):
        fn, launch = _launcher(kernel, jit_fn, q, d_pad, configs, not mods.empty, kv is not None)
        fn[calls[kernel].grid](*calls[kernel].args, **calls[kernel].constexprs, **launch)
    return dq, dk, dv


def _rows(x, kv: KvCache | None) -> tuple:
    """(batch, head, row) strides of a queries- or keys-side tensor: dense (B, H, N, .); ragged packed (total, H, .),
    no batch stride (the kernels start at cu_seqlens)."""
    return tuple(x.stride()[:3]) if kv is None else (0, x.stride(1), x.stride(0))


def backward_calls(q, k, v, lse, do, delta, causal, scale, mods=NO_MODS, kv: KvCache | None = None) -> tuple:
    """(dQ, dK, dV, {"dkdv": KernelCall, "dq": KernelCall}): the gradients allocated and the arguments each backward
    kernel's launch passes (as forward_call), given dO (B, H, N, Dv) contiguous and delta = rowsum(dO O) (B, H, N)
    contiguous like lse. kv: ragged (dO (total_q, H, Dv), lse and delta (H, total_q); the gradients packed)."""
    if kv is not None and (kv.kind != "ragged" or kv.k_new is not None):
        raise NotImplementedError(f"triton_blockwise: no backward for kv={kv.kind}"
                                  + (" with appended keys" if kv.k_new is not None else ""))
    a = _common_args(q, k, v, causal, scale, mods, kv)
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))     # contiguous
    sizes = (a["N"], a["M"], a["D"], a["Dv"], a["sm_scale"] * LOG2E, a["sm_scale"], *a["mod_values"],
             *a["buckets"])
    strides = (*q.stride(), *k.stride(), *v.stride()) if kv is None else (*kv.strides(q), *kv.strides(k),
                                                                         *kv.strides(v))
    rows = (*_rows(do, kv), *(lse.stride()[:2] if kv is None else (0, lse.stride(0))))
    cu = (lse, lse) if kv is None else (kv.cu_seqlens_q, kv.cu_seqlens_k)       # stand-ins when dense
    alibi = delta if a["alibi"] is None else a["alibi"]
    consts = {**a["consts"], "KV": 0 if kv is None else KvCache.CODES[kv.kind]}
    grid_kv = lambda meta: (triton.cdiv(a["M"], meta["BLOCK_M"]), a["B"] * a["Hkv"])  # noqa: E731
    grid_q = lambda meta: (triton.cdiv(a["N"], meta["BLOCK_N"]), a["B"] * a["H"])  # noqa: E731
    return dq, dk, dv, dict(
        dkdv=KernelCall((q, k, v, do, lse, delta, dk, dv, alibi, *cu, *strides, *rows, *_rows(dk, kv),
                         *_rows(dv, kv), a["H"], a["Hkv"], a["H"] // a["Hkv"], *sizes), consts, grid_kv),
        dq=KernelCall((q, k, v, do, lse, delta, dq, alibi, *cu, *strides, *rows, *_rows(dq, kv), a["H"],
                       a["H"] // a["Hkv"], *sizes), consts, grid_q))


class TritonAttention(torch.autograd.Function):
    """O, lse = TritonAttention.apply(q, k, v, causal, scale, configs, mods, splits, kv); lse is not
    differentiable. kv: a `KvCache` (the backward for ragged ones), None dense."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, configs=None, mods=NO_MODS, splits=1, kv=None):
        o, lse = triton_forward(q, k, v, causal, scale, configs, mods, splits, kv)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale, ctx.configs, ctx.mods, ctx.kv = causal, scale, configs, mods, kv
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        grads = triton_backward(q, k, v, o, lse, do, ctx.causal, ctx.scale, ctx.configs, ctx.mods, ctx.kv)
        return (*grads, None, None, None, None, None, None)


# ----------------------------------------------------------------------------------------------- audit

# What `attnbench audit triton_blockwise` compiles (Backend.audit_launches): every kernel x candidate config x head
# dim x dtype x causal or not x without or with every modification, one representative launch each: contiguous
# inputs, B 1, H = Hkv 16 (GROUP 1: MHA), N = M = 4096; with modifications window (256, -1), softcap, ALiBi per
# (batch, head) after the softcap (FlashAttention's order) and sinks: every constexpr on, the most registers. A
# launch with odd N compiles another specialisation of the same code; its resources are close but not audited.
AUDIT_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 192, 256)
AUDIT_DTYPES = ("float16", "bfloat16", "float32")
# CI's subset, (head dims, dtypes, modifications, KV variants), causal only (the causal code is the non-causal code
# plus the mask), launchable configs only (an excluded one cannot fail CI): float16 at D 64 and 256, float32 (the
# most registers) at D 256, the all-modifications variant at float16 D 64; the KV layouts' kernels (AUDIT_KV) where
# their extra registers meet the most: paged+append at D 256 and with every modification, the ragged backward with
# every modification. 119 compiles on three targets (was 198 with D 80, the paged forward at every size and the
# excluded configs: 1,450 s cold at a load of 7 on 2 cores).
# CI's subset: (head dims, dtypes, mods, KV variants, dense launches too). With every modification on, only the
# KV variants (paged+append forward, ragged backward): each is the dense kernel plus its offset and block-table
# loads, the most registers of its kernel, so the dense ones' configs add compile time (~50 s of 266) and no limit
# the KV ones do not reach first; float32 at D 256 dense only. The full grid (`attnbench audit`) has them all.
AUDIT_CI = (((64,), ("float16",), False, (), True),
            ((256,), ("float16",), False, (("fwd", "paged+append"),), True),
            ((256,), ("float32",), False, (), True),
            ((64,), ("float16",), True, (("fwd", "paged+append"), ("dkdv", "ragged"), ("dq", "ragged")), False))
_AUDIT_KERNELS = {"fwd": _fwd_kernel, "dkdv": _bwd_dkdv_kernel, "dq": _bwd_dq_kernel}
# The KV layout variants (label "kv"; dense launches carry none), (kernel, layout): the forward ragged (KV 1) and
# paged with appended keys (KV 2, APPEND: the block-table gather per key row and the k_new loads, the most
# registers), the backward ragged (paged and appended caches have none).
AUDIT_KV = (("fwd", "ragged"), ("fwd", "paged+append"), ("dkdv", "ragged"), ("dq", "ragged"))


def _audit_mods(b: int, h: int) -> TorchMods:
    """Every modification on, as a launch passes them (meta tensors)."""
    return TorchMods(window=(256, -1), softcap=30.0, alibi=torch.empty((b, h), device="meta"),
                     sinks=torch.empty((h,), device="meta"), order=("softcap", "alibi"))


def audit_kv_calls(d: int, dtype: str, causal: bool, mods: bool, layout: str) -> dict[str, KernelCall]:
    """{kernel: KernelCall} for a KV layout (AUDIT_KV) on meta tensors: B 4, H = Hkv 16, sequences up to
    N = M = 4096; ragged packs them (cu_seqlens; forward and backward), paged keeps pages of 16 keys behind a
    block table and appends 4 keys per sequence (page size and K past 1, so the JIT does not fold them to
    constants; forward only)."""
    b, h, n, page, new = 4, 16, 4096, 16, 4
    dt = getattr(torch, dtype)

    def meta(*shape, dtype=dt):
        return torch.empty(shape, dtype=dtype, device="meta")

    seqlens = meta(b, dtype=torch.int32)
    if layout == "ragged":
        q, k, v = meta(b * n, h, d), meta(b * n, h, d), meta(b * n, h, d)
        kv = KvCache("ragged", seqlens, n, n, cu_seqlens_q=meta(b + 1, dtype=torch.int32),
                     cu_seqlens_k=meta(b + 1, dtype=torch.int32))
    else:
        pages = b * n // page
        q, k, v = meta(b, h, n, d), meta(pages, page, h, d), meta(pages, page, h, d)
        kv = KvCache("paged", seqlens, n, n, block_table=meta(b, n // page, dtype=torch.int32),
                     k_new=meta(b, new, h, d), v_new=meta(b, new, h, d))
    chosen = _audit_mods(b, h) if mods else NO_MODS
    where = "bottom_right" if causal else None
    calls = dict(fwd=forward_call(q, k, v, where, None, chosen, 1, kv)[2])
    if layout == "ragged":
        lse, delta = (meta(h, b * n, dtype=torch.float32) for _ in range(2))
        calls.update(backward_calls(q, k, v, lse, meta(b * n, h, d), delta, where, None, chosen, kv)[3])
    return calls


def audit_calls(d: int, dtype: str, causal: bool, mods: bool) -> dict[str, KernelCall]:
    """{kernel: KernelCall} of the representative launch above, built by forward_call and backward_calls on torch
    "meta" tensors (shapes, strides and dtypes; no memory), so the audit compiles what a launch passes."""
    b, h, n = 1, 16, 4096
    dt = getattr(torch, dtype)
    q, k, v, do = (torch.empty((b, h, n, d), dtype=dt, device="meta") for _ in range(4))
    lse, delta = (torch.empty((b, h, n), dtype=torch.float32, device="meta") for _ in range(2))
    chosen = _audit_mods(b, h) if mods else NO_MODS
    where = "bottom_right" if causal else None
    calls = dict(fwd=forward_call(q, k, v, where, None, chosen)[2])
    calls.update(backward_calls(q, k, v, lse, do, delta, where, None, chosen)[3])
    return calls


def audit_launches(target: str, *, ci: bool = False) -> tuple:
    """The KernelLaunch of every candidate config of every kernel for the audit's grid (ci: AUDIT_CI, launchable
    ones only) on `target`, and of each KV layout's kernels (AUDIT_KV; ci: AUDIT_CI's); launchable where
    candidate_configs keeps it there."""
    from .base import KernelLaunch

    selection = AUDIT_CI if ci else ((AUDIT_HEAD_DIMS, AUDIT_DTYPES, None, AUDIT_KV, True),)
    launches = []
    for head_dims, dtypes, only_mods, kv_variants, dense in selection:
        for d in head_dims:
            for dtype in dtypes:
                for causal in (True,) if ci else (False, True):
                    for mods in (False, True) if only_mods is None else (only_mods,):
                        calls = audit_calls(d, dtype, causal, mods)
                        kind, d_pad = dtype_kind(dtype), padded_head_dim(d, d)
                        for kernel, call in calls.items() if dense else ():
                            keep = {c.id for c in candidate_configs(kernel, kind, d_pad, target, mods)}
                            table = "EXCLUDED_WITH_MODS" if mods else "EXCLUDED"
                            for config in CONFIG_SPACE[kernel][(kind, d_pad)]:
                                launches.append(KernelLaunch(
                                    _AUDIT_KERNELS[kernel], call.args,
                                    {**call.constexprs, "BLOCK_N": config.block_n, "BLOCK_M": config.block_m},
                                    config.num_warps, config.num_stages,
                                    labels=(("kernel", kernel), ("D", str(d)), ("dtype", dtype),
                                            ("causal", "causal" if causal else "none"),
                                            ("mods", "all" if mods else "none"), ("config", config.id)),
                                    tensor_cores=kind == "half", launchable=config.id in keep,
                                    exclude_hint=f"{table}[{(target, kernel, kind, d_pad)!r}][{config.id!r}]"))
                        launches += _audit_kv_launches(target, d, dtype, causal, mods, kv_variants)
    return tuple(launch for launch in launches if launch.launchable or not ci)


def _audit_kv_launches(target: str, d: int, dtype: str, causal: bool, mods: bool, variants) -> list:
    """The launches of each (kernel, KV layout) in `variants`, labelled as the dense ones plus ("kv", layout)."""
    from .base import KernelLaunch

    kind, d_pad = dtype_kind(dtype), padded_head_dim(d, d)
    launches = []
    for layout in dict.fromkeys(layout for _, layout in variants):
        calls = audit_kv_calls(d, dtype, causal, mods, layout)
        for kernel in (k for k, lay in variants if lay == layout):
            call = calls[kernel]
            keep = {c.id for c in candidate_configs(kernel, kind, d_pad, target, mods, kv=True)}
            plain = {c.id for c in candidate_configs(kernel, kind, d_pad, target, mods)}
            for config in CONFIG_SPACE[kernel][(kind, d_pad)]:
                table = ("EXCLUDED_WITH_KV" if config.id in plain else "EXCLUDED_WITH_MODS" if mods
                         and config.id in {c.id for c in candidate_configs(kernel, kind, d_pad, target)}
                         else "EXCLUDED")
                launches.append(KernelLaunch(
                    _AUDIT_KERNELS[kernel], call.args,
                    {**call.constexprs, "BLOCK_N": config.block_n, "BLOCK_M": config.block_m},
                    config.num_warps, config.num_stages,
                    labels=(("kernel", kernel), ("D", str(d)), ("dtype", dtype),
                            ("causal", "causal" if causal else "none"), ("mods", "all" if mods else "none"),
                            ("config", config.id), ("kv", layout)),
                    tensor_cores=kind == "half", launchable=config.id in keep,
                    exclude_hint=f"{table}[{(target, kernel, kind, d_pad)!r}][{config.id!r}]"))
    return launches


# ----------------------------------------------------------------------------------------------- backend

# FlashAttention's precision by construction: float32 scores and accumulators, p.to(v.dtype) before P V,
# p and ds cast to the input dtype before the dV, dK, dQ dots (measured under the interpreter, float16: 0.22 to
# 0.38 of the bound on the grid slice and fixed cases; every conformance check holds it to the claim).
# KV layouts: the kernels read ragged (cu_seqlens; forward and backward) and paged (block table) caches and
# appended keys (forward) themselves (`KvCache`), one launch per kernel for the whole batch.
CAPS = Capabilities(dtypes=("float16", "bfloat16", "float32"), masks=(), mask_with_causal=False,
                    head_dims=(16, 256), grad=True, lse=True, precision=for_half(FLASH), mods=MODS,
                    kv_layouts=("dense", "ragged", "paged"), kv_append=True)


@register
class TritonBlockwise(TorchBackend):
    """triton_blockwise: FlashAttention-2-style Triton kernel (CUDA; CPU under TRITON_INTERPRET=1; grad; lse)."""

    name = "triton_blockwise"
    devices = ("cpu", "cuda")
    caps = CAPS
    forced_configs: dict[str, LaunchConfig] | None = None    # {kernel: config}; None: autotune (CUDA) / default
    num_splits: int | None = None      # split-KV chunks to force (1: never split); None: `auto_splits` decides

    def unavailable_reason(self) -> str | None:
        return TRITON_MISSING

    def device_unavailable_reason(self, device: str) -> str | None:
        reason = super().device_unavailable_reason(device)
        if reason is None and device == "cpu" and not INTERPRETED:
            reason = "CPU runs need TRITON_INTERPRET=1 (the Triton interpreter)"
        if reason is None and device == "cuda" and INTERPRETED:
            reason = "kernels were built for the Triton interpreter (TRITON_INTERPRET=1); unset it for CUDA runs"
        return reason

    def simulated_reason(self, device: str) -> str | None:
        return "runs under the Triton interpreter on the CPU" if device == "cpu" and INTERPRETED else None

    def audit_launches(self, target: str, *, ci: bool = False) -> tuple:
        return audit_launches(target, ci=ci)

    def capabilities(self, device: str) -> Capabilities:
        if device == "cpu":
            return CAPS.replace(dtypes=("float16", "float32"), max_seq=INTERPRETER_MAX_SEQ,
                                max_batch_heads=INTERPRETER_MAX_BATCH_HEADS)
        return CAPS

    def why_not(self, problem, device: str = "cpu", *, need_grad: bool = False) -> str | None:
        reason = super().why_not(problem, device, need_grad=need_grad)
        if reason and device == "cpu" and problem.dtype == "bfloat16" and reason.startswith("dtype"):
            return BF16_INTERPRETER_REASON
        if reason and device == "cpu" and reason.startswith("N/M above"):
            return f"{reason}: the Triton interpreter is slow (N 1024, D 64 takes about 13 s)"
        if reason and device == "cpu" and reason.startswith("B * H = "):
            return f"{reason}: the Triton interpreter runs the launch grid one program at a time"
        return reason

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False, mods=NO_MODS):
        self._refuse_unsupported(q, k, v, mask)
        splits = auto_splits(q, k) if self.num_splits is None else self.num_splits
        o, lse = TritonAttention.apply(q, k, v, causal, scale, self.forced_configs, mods, splits)
        return (o, lse) if return_lse else o

    def prepare_kv(self, inputs, problem, device: str, return_lse: bool):
        """The forward of a layout problem in one launch: the kernel reads cu_seqlens, the block table and the
        appended keys itself (`KvCache`; `kv_torch.KvReader.prepare_kv` runs the sequences one by one instead)."""
        q, k, v, kv = self._kv_inputs(inputs, problem, device)
        mods = self.modifications(inputs, device).get("mods", NO_MODS)
        splits = (auto_splits(q, k, (problem.B, problem.H, problem.N, problem.M)) if self.num_splits is None
                  else self.num_splits)

        def run():
            o, lse = triton_forward(q, k, v, problem.causal, problem.scale, self.forced_configs, mods, splits, kv)
            return (o, lse) if return_lse else o
        run.native_kv = native_kv((q, k, v, kv.k_new, kv.v_new))   # the check compares them with the storage
        return run

    def prepare_kv_backward(self, inputs, problem, grad_out, device: str):
        """The backward of a ragged problem (the one layout with a backward) in one launch per kernel: dQ, dK, dV
        packed like q, k, v."""
        from ._torch_common import torch_dtype

        q, k, v, kv = self._kv_inputs(inputs, problem, device, requires_grad=True)
        g = torch.from_numpy(np.asarray(grad_out)).to(device=device, dtype=torch_dtype(problem.dtype))
        mods = self.modifications(inputs, device).get("mods", NO_MODS)
        splits = (auto_splits(q, k, (problem.B, problem.H, problem.N, problem.M)) if self.num_splits is None
                  else self.num_splits)

        def run():
            o, _ = TritonAttention.apply(q, k, v, problem.causal, problem.scale, self.forced_configs, mods, splits,
                                         kv)
            return torch.autograd.grad(o, (q, k, v), g)
        run.native_kv, run.native_grad_out = native_kv((q, k, v, kv.k_new, kv.v_new)), g
        return run

    def _kv_inputs(self, inputs, problem, device: str, *, requires_grad: bool = False):
        """(q, k, v, KvCache) of a layout problem's storage (`inputs.kv`) as tensors on `device`."""
        q, k, v, k_new, v_new, _, _ = self.kv_tensors(inputs, problem, device, requires_grad=requires_grad)
        self._refuse_unsupported(q, k, v, None, heads=(problem.H, problem.Hkv))
        s = inputs.kv

        def ints(x):
            return None if x is None else torch.from_numpy(np.asarray(x)).to(device=device, dtype=torch.int32)

        return q, k, v, KvCache(kind=kv_layouts.parse(problem.kv).key, cache_seqlens=ints(s.cache_seqlens),
                                max_seqlen_q=problem.N, max_seqlen_k=problem.M, cu_seqlens_q=ints(s.cu_seqlens_q),
                                cu_seqlens_k=ints(s.cu_seqlens_k), block_table=ints(s.block_table), k_new=k_new,
                                v_new=v_new)

    def _refuse_unsupported(self, q, k, v, mask, heads: tuple[int, int] | None = None) -> None:
        """NotImplementedError / ValueError for what the kernels do not compute; heads: (H, Hkv) where q and k
        are a layout's physical tensors (their dim 1 is no head count)."""
        if TRITON_MISSING:
            raise NotImplementedError(f"{self.name}: {TRITON_MISSING}")
        if mask is not None:
            raise NotImplementedError(f"{self.name}: masks (bool/bias) are not supported; only causal=")
        device = q.device.type
        reason = self.device_unavailable_reason(device)
        if reason:
            raise NotImplementedError(f"{self.name}: {reason}")
        dtype = str(q.dtype).removeprefix("torch.")
        if device == "cpu" and dtype == "bfloat16":
            raise NotImplementedError(f"{self.name}: {BF16_INTERPRETER_REASON}")
        if dtype not in self.capabilities(device).dtypes or not (q.dtype == k.dtype == v.dtype):
            raise NotImplementedError(f"{self.name}: dtype {q.dtype}/{k.dtype}/{v.dtype} not supported "
                                      f"(has {', '.join(self.capabilities(device).dtypes)}, all three the same)")
        lo, hi = CAPS.head_dims
        if not (lo <= min(q.shape[-1], v.shape[-1]) and max(q.shape[-1], v.shape[-1]) <= hi):
            raise ValueError(f"{self.name}: head dim D={q.shape[-1]}, Dv={v.shape[-1]} outside {lo}..{hi}")
        h, hkv = heads or (q.shape[1], k.shape[1])
        if h % hkv:
            raise ValueError(f"{self.name}: H={h} must be a multiple of Hkv={hkv}")
