"""Long-context problems: N, M in the thousands, where tiles multiply and tiled kernels break.

Checked on rows chosen where bugs hide (`attnbench.check.choose_rows`) against the row-sampled float64
reference, so the reference costs O(rows · M · D) forward; the backward's dK, dV need every query's lse,
O(N · M · (D + Dv)) float64 (see `attnbench.reference.rows`). Sizes are odd (1023, 4097, 16385) so the last
tile of every tile size is partial.

CI runs `FORWARD` and `BACKWARD` for every backend that declares them (max_seq and capabilities decide).
`pytest conformance --long` adds `LONG_FORWARD` / `LONG_BACKWARD`, up to N = M = 65,536. Those hold one
(N, M) matrix per head in a backend that materialises the pattern (16 GiB at 65,536 in float32), so a long
case whose (N, M) pattern exceeds LONG_PATTERN_BYTES runs only for backends named with --backend: pick the
O(N)-memory kernels (torch_sdpa_flash, torch_blockwise, ...).
"""
from attnbench.problem import Problem
from attnbench.reference.mods import Softcap, Window
from attnbench.reference.mods.document import Document

FORWARD = [
    # N < M, bottom-right: each query sees a prefix ending 3074 keys to the right of its own index.
    Problem(B=1, H=2, N=1023, M=4097, D=64, causal="bottom_right", dtype="float32", seed=41),
    # N > M, bottom-right, GQA: the first 3074 queries see no key (O = 0), the rest a growing prefix.
    Problem(B=1, H=4, Hkv=2, N=4097, M=1023, D=64, causal="bottom_right", dtype="float32", seed=42),
    # Half precision, long M: a running accumulator kept in float16/bfloat16 adds about sqrt(M / tile)
    # roundings of the output's size; the plain formula's error does not grow with M, so at M = 16385 such a
    # kernel is 2.2x (float16) and 16x (bfloat16) over the 2x-naive limit (measured with the
    # half_precision_accumulator mutant, 32-key tiles); at M <= 1024 it hides under the limit.
    Problem(B=1, H=2, N=128, M=16385, D=64, dtype="float16", seed=43),
    Problem(B=1, H=2, N=128, M=16385, D=64, dtype="bfloat16", seed=44),
    # Key padding at length, per batch.
    Problem(B=2, H=2, N=257, M=4097, D=64, mask="padding", dtype="float32", seed=45),
    # A sliding window of 4096 over M = 16385: each query sees 4097 keys ending at its own position; a kernel
    # skipping key tiles outside the window must skip exactly those (the window's left edge crosses every tile).
    # bfloat16: half precision as kernels run it, and not NumPy's float16 matmul (no BLAS: 26 s here).
    Problem(B=1, H=2, N=513, M=16385, D=64, causal="bottom_right", dtype="bfloat16", mods=(Window(4096, 0),),
            seed=46),
    # Five packed documents at length, boundaries on tile edges (+ the batch index): no query may see across one.
    Problem(B=2, H=2, N=4097, M=4097, D=64, dtype="float32", mods=(Document(5),), seed=47),
    *[  # Where indices wrap, cheaply: decode shapes (few queries, a long cache) just past 2^16 and 2^17 keys
        # (pytorch issue 162588: SDPA's efficient kernel was silently wrong past 65,536), many queries against
        # few keys, and a launch grid of B * H = 65,792 programs: a 16-bit grid index wraps past 65,535, so programs
        # 65,536.. must exist (at B * H = 65,536 exactly, the last is 65,535 and nothing wraps:
        # `grid_index_wraps_at_2_16` passed it).
        Problem(B=1, H=2, N=16, M=65537, D=64, causal="bottom_right", dtype="float16", seed=81),
        Problem(B=1, H=2, Hkv=1, N=4, M=131073, D=64, dtype="bfloat16", seed=82),
        Problem(B=1, H=1, N=65537, M=16, D=32, dtype="float32", seed=83),
        Problem(B=257, H=256, N=3, M=5, D=16, dtype="float32", seed=84),
    ],
]
BACKWARD = [
    Problem(B=1, H=2, Hkv=1, N=1023, M=4097, D=64, causal="bottom_right", dtype="float32", seed=51),
    Problem(B=1, H=2, N=513, M=4097, D=64, dtype="float16", seed=52),
    # Window and softcap gradients at length: dS through 1 - tanh^2, key tiles skipped in both directions.
    Problem(B=1, H=2, Hkv=1, N=513, M=4097, D=64, dtype="float16", mods=(Window(256, 0), Softcap(30.0)), seed=53),
    # dQ accumulated in float16 (`attnbench.budget`, "Where it sees one in the backward"): at default scale the
    # plain float16 formula's own error grows with M (weights below the smallest normal), so peaked rows instead,
    # where a dQ kept in float16 swamps: the later keys' shares fall under half its ulp and are lost.
    Problem(B=1, H=2, N=16, M=65537, D=64, scale=0.5, dtype="float16", seed=55),
]
LONG_FORWARD = [
    Problem(B=1, H=2, N=16385, M=16385, D=64, causal="top_left", dtype="float32", seed=61),
    Problem(B=1, H=1, N=65536, M=65536, D=64, causal="bottom_right", dtype="float16", seed=62),
    Problem(B=1, H=4, Hkv=1, N=4097, M=65536, D=128, causal="bottom_right", dtype="bfloat16", seed=63),
]
LONG_BACKWARD = [
    # The half-precision accumulators at 4x the CI lengths (`conformance/cases.py`, HALF_ACCUMULATOR), GQA.
    Problem(B=1, H=4, Hkv=2, N=32769, M=128, D=64, dtype="float16", seed=86),
    Problem(B=1, H=4, Hkv=2, N=32769, M=128, D=64, dtype="bfloat16", seed=87),
    Problem(B=1, H=4, Hkv=2, N=16, M=131073, D=64, dtype="bfloat16", seed=88),
    # A decode step's gradients past 2^16 keys, MQA: dK, dV of 65,537 keys each summed over 4 heads x 16 queries
    # (--long: 2 s for torch's kernels; the mutation twin's autograd over 2,048 key tiles took 220 s until its
    # tiles were cut once, 6.1 s since, at a load of 9 on 2 cores: a candidate for CI again).
    Problem(B=1, H=4, Hkv=1, N=16, M=65537, D=64, causal="bottom_right", dtype="bfloat16", seed=85),
    Problem(B=1, H=2, Hkv=1, N=16385, M=16385, D=64, causal="bottom_right", dtype="float32", seed=71),
]
# Element offsets past 2^31 (--long): K and V of 2^31 + 128 elements each (M = 2^24 + 1 keys of D 128), N = 16
# queries, so the score work is small (2^28 pairs) and only the offsets are large. A kernel indexing K or V with a
# 32-bit element offset wraps past key 2^24 (2^31 / D). Inputs are drawn in float16 (`attnbench.problem.make_inputs`:
# 4 GiB a tensor instead of 16 in float64). Memory: about 13 GiB at peak (K and V 8 GiB; the naive yardstick's K^T
# 4 GiB; torch_eager's own K^T copy 4 GiB during its call): 4x the 3.4 GiB peak measured at M = 2^22 + 1 with the
# dtype-direct path forced; 14.3 GiB measured at full size. 16 GiB available is required (headroom); with less, a skip that says so. Backends: those named in OFFSETS_BACKENDS (O(N)-memory or an (N, M) pattern of 1 GiB) unless
# named with --backend.
OFFSETS_PAST_2_31 = [
    Problem(B=1, H=1, N=16, M=(1 << 24) + 1, D=128, causal="bottom_right", dtype="float16", seed=89),
]
MEMORY_NEEDED = {problem: 16 << 30 for problem in OFFSETS_PAST_2_31}
# Run at full size on 2 loaded cores (nice 5, load ~7): torch_blockwise passed in about 20 minutes, 14.3 GiB peak
# RSS (/usr/bin/time -v, the process that went on to torch_eager's call). torch_eager is left out by default: its
# float16 Q K^T on CPU, an operand of 4 GiB, runs in oneDNN's reference matmul (torch falls to it once an operand
# reaches 2 GiB: one query row against 2^23 keys took 79 s, against 2^22 keys 0.24 s), hours for 16 rows; name it
# with --backend to run it anyway.
OFFSETS_BACKENDS = ("torch_blockwise",)
LONG_FORWARD += OFFSETS_PAST_2_31
LONG_PATTERN_BYTES = 2 << 30


def pattern_bytes(p: Problem) -> int:
    """Bytes of one float32 (B, H, N, M) matrix: what a backend that materialises the pattern holds at least."""
    return 4 * p.B * p.H * p.N * p.M


def available_memory() -> int:
    """Bytes of memory available to a new process (/proc/meminfo's MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_short(problem: Problem, backend: str, named: bool) -> str | None:
    """Why a case of MEMORY_NEEDED does not run here (one line), or None: too little memory available, or a
    backend outside OFFSETS_BACKENDS not named with --backend."""
    need = MEMORY_NEEDED.get(problem)
    if need is None:
        return None
    if backend not in OFFSETS_BACKENDS and not named:
        return f"offsets past 2^31 run for {', '.join(OFFSETS_BACKENDS)}: name another with --backend"
    available = available_memory()
    if available < need:
        return (f"offsets past 2^31 need about {need / 2**30:.0f} GiB of memory (K, V of 2^31 elements in "
                f"float16 and their copies), {available / 2**30:.1f} GiB available")
    return None
