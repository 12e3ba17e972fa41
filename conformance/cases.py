"""The fixed conformance problems: each a case a kernel author gets wrong in practice.

Sizes are deliberately odd (N 97, M 113, D 80, ...) so that tiled kernels hit
partial tiles, and inputs are standard normal (never uniform positive).
"""
from attnbench.problem import Problem
from attnbench.reference.mods import Alibi, Sinks, Softcap, Window
from attnbench.reference.mods.document import Document
from attnbench.reference.mods.prefix_lm import PrefixLM

SHAPES = [
    dict(B=2, H=4, N=64, D=64),                                       # self-attention, B and H > 1
    dict(B=1, H=2, N=97, M=113, D=80),                                # cross-attention, ragged, D 80
    dict(B=1, H=2, N=113, M=97, D=16),                                # more queries than keys, D 16
    dict(B=2, H=4, Hkv=2, N=50, D=64),                                # grouped-query
    dict(B=1, H=4, Hkv=1, N=33, M=65, D=128),                         # multi-query, D 128
    dict(B=1, H=2, N=64, D=64, Dv=32),                                # value dim != head dim
    dict(B=1, H=1, N=1, M=1, D=16),                                   # one query, one key
    dict(B=1, H=2, N=48, D=64, scale=0.3),                            # custom scale
]
CAUSAL = [
    dict(N=64, D=64, causal="top_left"),
    dict(N=97, M=113, D=80, causal="top_left"),
    dict(N=97, M=113, D=80, causal="bottom_right"),
    dict(N=113, M=97, D=32, causal="bottom_right"),                   # first N-M queries see no key
    dict(H=4, Hkv=2, N=50, M=70, D=64, causal="bottom_right"),
]
MASKS = [
    dict(B=2, N=64, D=64, mask="bool"),
    dict(B=3, N=40, M=77, D=64, mask="padding"),
    dict(B=2, N=64, D=64, mask="bias"),
    dict(B=2, N=64, D=64, mask="fully_masked"),
    dict(B=2, N=64, M=80, D=64, mask="padding", causal="bottom_right"),
    dict(B=2, N=64, D=64, mask="bias", causal="top_left"),
    # Every broadcast the API accepts: a kernel that applies head 0's (or batch 0's) mask everywhere, or reshapes
    # the mask assuming (B, 1, N, M), fails these.
    dict(B=2, H=4, Hkv=2, N=64, M=80, D=64, mask="per_head"),                   # (B, H, N, M), GQA
    dict(B=2, H=4, Hkv=1, N=50, D=32, mask="per_head", causal="bottom_right"),  # per query head, MQA
    dict(B=2, H=2, N=64, M=72, D=64, mask="shared"),                            # (1, 1, N, M) with B = 2
    dict(B=2, H=4, Hkv=2, N=64, M=48, D=64, mask="head_bias"),                  # (1, H, N, M) bias
]
# Non-contiguous inputs: a kernel that assumes contiguous (B, H, L, D) storage reads the wrong elements.
LAYOUTS = [
    dict(B=2, H=4, Hkv=2, N=64, M=80, D=64, layout="transposed"),    # stored (B, L, H, D), as after a projection
    dict(B=1, H=2, N=97, M=113, D=80, Dv=48, layout="strided"),      # every other element of a wider last dim
]
# Large logits, S ~ N(0, 80^2): exp(S) without the row max subtracted overflows in float32 (and in the float32
# accumulator of a half-precision kernel). Not float64: exp overflows only past 709 there, and at this size the
# score rounding a tiled kernel does in another order already costs about 2x the naive error (see the report).
LARGE_LOGITS = [dict(B=1, H=2, N=64, M=96, D=64, scale=10.0)]
LARGE_LOGIT_DTYPES = ("float32", "float16", "bfloat16")
DTYPES = ("float32", "float16", "bfloat16", "float64")

# Modifications (`attnbench.reference.mods`) with the conventions of the kernels that ship them. First in the
# lists: a kernel (or a mutant) wrong in one fails within seconds of `pytest -x`.
MODS = [
    dict(B=2, H=4, Hkv=2, N=97, M=113, D=64, causal="bottom_right", mods=(Window(31, 0),)),   # sliding + causal
    dict(B=1, H=2, N=113, M=97, D=32, mods=(Window(16, 16),)),                # two-sided, N > M, edges at 16/17
    dict(B=2, H=4, N=64, D=64, inputs="peaked", mods=(Softcap(5.0),)),        # scores ~16 wide: the cap bites
    dict(B=2, H=4, Hkv=2, N=64, M=80, D=64, mods=(Alibi("batch"),)),          # per (batch, head) slopes, N < M
    dict(B=1, H=8, Hkv=2, N=50, D=32, causal="bottom_right", mods=(Alibi("head"),)),   # the paper's slopes
    dict(B=2, H=4, Hkv=2, N=64, M=72, D=64, mods=(Sinks(),)),
    dict(B=2, H=4, Hkv=2, N=97, M=113, D=64, causal="bottom_right",          # all of them, in FlashAttention's order
         mods=(Softcap(20.0), Alibi("batch"), Window(48, 0), Sinks())),
    dict(B=2, H=2, N=80, M=100, D=32, mods=(Document(4),)),                  # packed: boundaries at tile edges + b
    dict(B=2, H=4, Hkv=2, N=80, M=100, D=32, mods=(PrefixLM(45),)),          # queries 0..24 in the prefix (N < M)
]
MOD_PROBLEMS = [Problem(**shape, dtype=dtype, seed=300 + i) for dtype in DTYPES for i, shape in enumerate(MODS)]
# Found by the thorough drawn search: large softcapped scores (scale 2, D 157) under per-batch ALiBi slopes, where
# a half-precision kernel that rounds the slope to float16 and then the product (torch_eager did) errs 3x the
# naive formula, which rounds slope x distance once (FlashAttention's slopes are float32).
MOD_PROBLEMS += [Problem(B=2, H=1, N=1, M=117, D=157, dtype="float16", scale=2.0, seed=46505,
                         mods=(Softcap(30.0), Alibi("batch")))]

# A decode step (few queries, a longer cache, MQA, a sink), first so that a wrong split-KV combine fails early: the
# mutation twin splits it as FlashAttention-2 would on an A100 (5 chunks), and so does a GPU kernel with split-KV
# (conformance/test_split_kv.py forces every split count).
DECODE = [dict(B=1, H=4, Hkv=1, N=4, M=1100, D=64, causal="bottom_right", mods=(Sinks(),))]
DECODE_PROBLEMS = [Problem(**shape, dtype=dtype, seed=400 + i) for dtype in ("float32", "float16")
                   for i, shape in enumerate(DECODE)]
# The split-KV partials' precision, derived. A kernel that stores each chunk's normalised O_s in the half dtype
# before the combine (FlashAttention keeps o_accum in float32) adds one rounding of about u |O_s| per chunk. With
# standard-normal V, sum_m P |v| is about 20 |O| at M ~ 1,000, and the float32 terms of a declared float32-internal
# bound (6 u_32 (sqrt(M) + 2) sum P |v| + the score term) are as large as u |O|: the extra rounding hid there on 2
# seeds of 3 in float16 (`split_partial_half`). With V positive in one binade just above 1 (`one_binade_v`),
# sum P |v| = |O| and the bound is u |O| plus a few percent, 0.53 to 0.6 ulp: a correct kernel rounds once (at most
# half an ulp, 0.85-0.93 of the bound), one that rounded a partial is a whole ulp off wherever the two roundings
# meet, 1.2-1.6x the bound, on 20 seeds of 20 in float16 and in bfloat16. The twin splits it in 5 chunks.
DECODE_PROBLEMS[1:1] = [Problem(**DECODE[0], inputs="one_binade_v", dtype=dtype, seed=420)
                        for dtype in ("float16", "bfloat16")]
# Past 2^17 keys, a sliding-window decode step (gpt-oss's and Mistral's windowed layers over a long cache): the
# query sees only the last 64 keys, so key 131,072, the one past 2^17, holds about 1/64 of its softmax. A kernel
# whose key index or offset wraps there (a step at 2^17, as SDPA's efficient kernel had one at 2^16: pytorch issue
# 162588) reads another key in its place and is some 300x over its budget; without the window that one key is
# 1/131,073 of the row and hides (long_cases' M = 131,073 case cannot see it). A wrap at 2^16 moves every key the
# window sees. About a second a backend (the twin: 4,096 tiles).
DECODE_PROBLEMS += [Problem(B=1, H=2, Hkv=1, N=1, M=131073, D=16, causal="bottom_right", mods=(Window(63, 0),),
                            dtype="float16", seed=430)]

# KV layouts (`attnbench.reference.layouts`): ragged batches (cu_seqlens, FlashAttention varlen), paged caches
# (block tables over a permuted pool, page sizes 1, 16, 256) and keys appended into a cache (flash_attn_with_kvcache).
# First of all the cases: a kernel (or mutant) that addresses a sequence, a page or an appended key wrong fails in
# the first seconds of `pytest -x`. Lengths per sequence are drawn from the seed (sequence 0 short, B // 2 full).
KV_LAYOUTS = [
    dict(B=4, H=4, Hkv=2, N=97, M=97, D=32, causal="bottom_right", kv="ragged"),     # packed self-attention
    dict(B=4, H=8, Hkv=2, N=3, M=300, D=64, causal="bottom_right", kv="paged:16"),   # decode, pages permuted
    # a decode step; M 98: the full sequence's 4 new keys go to slots 94..97, across the page edge at 96 (drawn
    # lengths left it to the seed: none crossed one at M 90)
    dict(B=3, H=4, Hkv=2, N=4, M=98, D=32, causal="bottom_right", kv="paged:16", append=4),
    dict(B=5, H=4, Hkv=2, N=40, M=113, D=64, kv="ragged", mods=(Window(24, 0), Alibi("batch"))),  # per-sequence
    dict(B=3, H=2, N=5, M=40, D=32, kv="paged:1", mods=(Softcap(20.0), Sinks())),    # a page per key
    dict(B=3, H=4, Hkv=1, N=2, M=700, D=64, causal="bottom_right", kv="paged:256"),  # FlashAttention's page size
    dict(B=4, H=2, N=9, M=60, D=32, causal="bottom_right", kv="ragged", append=3),   # chunked prefill into a cache
    dict(B=2, H=2, N=4, M=50, D=32, causal="bottom_right", append=4),                # dense cache, appended keys
    # a sink's gradient sums over every sequence's rows (and none of the padding's)
    dict(B=4, H=4, Hkv=2, N=40, M=60, D=32, causal="bottom_right", kv="ragged", mods=(Sinks(),)),
]
KV_PROBLEMS = [Problem(**shape, dtype="float32", seed=400 + i) for i, shape in enumerate(KV_LAYOUTS)]
KV_PROBLEMS += [Problem(**KV_LAYOUTS[i], dtype=dtype, seed=410 + i) for i, dtype in ((0, "float16"),
                                                                                     (2, "bfloat16"), (3, "float16"))]

FORWARD_PROBLEMS = KV_PROBLEMS + DECODE_PROBLEMS + MOD_PROBLEMS + [Problem(**shape, dtype=dtype, seed=i)
                                   for dtype in DTYPES for i, shape in enumerate(SHAPES + CAUSAL + MASKS + LAYOUTS)]
FORWARD_PROBLEMS += [Problem(**shape, dtype=dtype, seed=100 + i)
                     for dtype in LARGE_LOGIT_DTYPES for i, shape in enumerate(LARGE_LOGITS)]
# A large launch grid, every row checked: 72 heads x 16 query tiles of 64 = 1,152 (batch, head, tile) blocks
# (4,608 of 16 rows), more than a persistent kernel's workers (a GPU has about 100 SMs x a few blocks each), so
# a scheduler that loses one block is seen. N x M stays under the full-check size.
LARGE_GRID = [dict(B=2, H=36, Hkv=12, N=1000, M=48, D=32)]
FORWARD_PROBLEMS += [Problem(**shape, dtype=dtype, seed=200 + i)
                     for dtype in ("float32", "float16") for i, shape in enumerate(LARGE_GRID)]
# A gradient accumulator kept in the half input dtype (`attnbench.budget.half_accumulator_length`): dK and dV sum
# over the queries, dQ over the keys, so each at about 4x the length where it crosses the 2x-naive limit, with the
# other side short. Rows are sampled (N M > 512 x 512), so each costs about a second; first, so a backward that
# accumulates in float16/bfloat16 fails within seconds of `pytest -x`.
HALF_ACCUMULATOR = [
    Problem(B=1, H=2, N=8193, M=64, D=64, dtype="float16", seed=400),        # dK, dV: 256 query tiles of 32
    Problem(B=1, H=2, N=8193, M=64, D=64, dtype="bfloat16", seed=401),
    Problem(B=1, H=2, N=16, M=32769, D=64, dtype="bfloat16", seed=402),      # dQ: 1,024 key tiles of 32
]
# A KV group's dK, dV summed in the half input dtype (each query head's share rounded, then G - 1 roundings of the
# sum; `gqa_grad_sum_in_input_dtype`): about sqrt(G) more roundings than a float32 sum's one. At G 2-3 (the GQA
# cases below) it hid under the declared bound on 7 of 8 float16 seeds and 1 of 8 bfloat16 ones; MQA with G 16 in
# bfloat16 (u 8x float16's, so the bound's float32 terms weigh less against it) fails it on 20 seeds of 20, 2-3x
# the bound, while correct kernels stay at 0.66 of it at most. Full check, a fraction of a second.
GQA_GRAD_SUM = [Problem(B=1, H=16, Hkv=1, N=29, M=51, D=40, dtype="bfloat16", seed=700)]
# In float16 the same case caught it on 1 seed of 8: the float32 terms of the declared bound on dV (a float32 share,
# about 0.2 u, times the largest sum of |terms| P^T |dO|, plus u max|dV|) are relatively 8x larger than in
# bfloat16, and with standard-normal dO the sums of |terms| are 3x max|dV|: the bound was 3 half-ulps of dV's
# top binade, which held only 1% of the elements. With dO positive in one binade (`one_binade_do`: [1, 1.4), as
# `one_binade_v` draws V) every term of dV = P^T dO is positive, sum P^T |dO| = |dV|, and a key's dV is its
# attention mass over the group's 16 x 29 query rows (about 9, spread by the keys) times a mean of dO: 97-100% of
# dV in [8, 16), max|dV| 13-14.5, and the bound is 2.0-2.2 half-ulps there (one ulp). A correct kernel rounds
# once, within half an ulp, which u max|dV| alone covers: the twin, torch_blockwise and torch_sdpa_math 0.41-0.78
# of the bound, triton_blockwise 0.33-0.54 (seeds 700-719); summing 16 heads' shares rounded to float16 in float16
# is 1.84-2.72x it, on 20 seeds of 20. dQ, dK cannot be made one-signed (dS sums to 0 over each query row).
# torch's CPU flash kernel sums a group's heads so (known deviation sdpa_flash_cpu_half_backward_one_binade_do).
GQA_GRAD_SUM += [Problem(B=1, H=16, Hkv=1, N=29, M=51, D=40, dtype="float16", inputs="one_binade_do", seed=700)]
# Backward is dearer and its failure modes are fewer: every feature once, in the two dtypes that matter most.
BACKWARD_PROBLEMS = GQA_GRAD_SUM + HALF_ACCUMULATOR + [p for p in KV_PROBLEMS if p.kv == "ragged" and not p.append]  # ragged: grad
BACKWARD_PROBLEMS += [p for p in MOD_PROBLEMS if p.dtype in ("float32", "float16")]
BACKWARD_PROBLEMS += [Problem(**shape, dtype=dtype, seed=i)
                     for dtype in ("float32", "float16")
                     for i, shape in enumerate([SHAPES[1], SHAPES[3], SHAPES[5], CAUSAL[2], CAUSAL[3], MASKS[1],
                                                MASKS[2], MASKS[3], MASKS[7], MASKS[9]])]
