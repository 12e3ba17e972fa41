"""Split-KV (flash-decoding) as its own path: few queries against a longer cache, the keys cut into chunks.

A backend with a split-KV path (`num_splits`: torch_blockwise, triton_blockwise, the mutation twin) is checked
with the split count chosen by its heuristic ("auto") and forced to 1, 2, 3 and 7 chunks, on decode problems
(N 1, 4, 16; GQA, MQA; causal bottom-right; a window that leaves whole chunks empty; sinks, which must join the
combine once; rows with no key at all). A backend without one skips the file: its only path meets decode shapes
in `cases.py` (DECODE_PROBLEMS) and `long_cases.py`, and running them here again would only cost CI time.
The backward is the unsplit one from the combined lse: its gradients are checked after a split forward.
Ragged and paged caches (with appended keys) go through the split path too, at one forced count.

Sizes: the first three fit the Triton interpreter (M <= 256, its tiles of 32 or 64 keys give several chunks); the
next ones have 2,049 keys, so the torch path (128-key tiles: 16) and the twin (FlashAttention's 256-key blocks: 9)
cut 2, 3 and 5 or more real chunks. `--long` adds M = 131,073 (past 2^17).
"""
import copy
import math

import pytest
import torch

from attnbench.implementations import split_kv
from attnbench.problem import Problem
from attnbench.reference.mods import Alibi, Sinks, Softcap, Window

from ._verdict import assert_passes

SPLITS = ("auto", 1, 2, 3, 7)
DECODE = [
    dict(B=2, H=4, Hkv=1, N=1, M=250, D=32),                                               # MQA, one query
    dict(B=1, H=4, Hkv=2, N=4, M=201, D=64, causal="bottom_right", mods=(Window(60, 0), Sinks())),
    dict(B=1, H=2, N=16, M=256, D=16, causal="bottom_right", mods=(Softcap(20.0), Alibi("head"))),
    dict(B=1, H=8, Hkv=2, N=16, M=2049, D=64, causal="bottom_right", mods=(Sinks(),)),      # GQA 4:1
    dict(B=1, H=4, Hkv=1, N=4, M=2049, D=64, mods=(Window(300, 0), Sinks())),              # most chunks empty
    # the first 4 rows see no key but the sink: O = 0, lse = sink, in every chunk's and the combine's hands
    dict(B=1, H=2, N=16, M=12, D=32, causal="bottom_right", mods=(Sinks(),)),
    dict(B=1, H=2, N=4, M=700, D=128, mask="fully_masked"),                                # no row sees a key
]
# float32 each; float16 where a half-precision partial would be rounded before the combine (sinks, a window).
PROBLEMS = [Problem(**shape, dtype="float32", seed=500 + i) for i, shape in enumerate(DECODE)]
PROBLEMS += [Problem(**DECODE[i], dtype="float16", seed=510 + i) for i in (1, 3)]
LONG_PROBLEMS = [Problem(B=1, H=4, Hkv=1, N=16, M=131073, D=64, causal="bottom_right", mods=(Sinks(),),
                         dtype="float16", seed=520)]
BACKWARD = [Problem(**DECODE[i], dtype=dtype, seed=540 + i) for i in (1, 4) for dtype in ("float32", "float16")]
# KV layouts through the split path: each sequence's own keys cut into chunks (a short one into fewer), the
# partials in the layout's shapes (ragged: packed rows), appended keys in the last chunk, a sink joined once. One
# forced count (3), sizes the Triton interpreter takes (M <= 256): pages of 256 (one per sequence), of 1 (a tile
# spans 16 or more), ragged with appended keys and a sink.
LAYOUTS = [
    Problem(B=3, H=4, Hkv=1, N=2, M=250, D=32, causal="bottom_right", kv="paged:256", dtype="float32", seed=560),
    Problem(B=4, H=4, Hkv=2, N=16, M=200, D=32, causal="bottom_right", kv="ragged", append=3, mods=(Sinks(),),
            dtype="float32", seed=561),
    Problem(B=2, H=2, N=4, M=100, D=16, kv="paged:1", append=2, mods=(Window(30, 0),), dtype="float32", seed=562),
]

# The partials' precision (derived in cases.py, above DECODE_PROBLEMS: V in one binade, so the declared bound is
# about half an ulp and a partial stored in the half dtype shows as a whole one) on the kernels' own split paths, at
# a size the Triton interpreter takes. Two chunks: the more chunks, the smaller each one's weight and the share of
# its rounding (7 let 4 seeds of 20 through). Scale 0.05 keeps P flat (scores within +-0.3), so a FlashAttention-style
# declaration's P-rounding term, 6 u |O| sqrt(sum P^2) = 6 u |O| / sqrt(M), stays below half of u |O|: with normal
# scores half the seeds of a Triton kernel with float16 partials passed, with these 0 of 20 (float32 partials:
# 0.70 of the bound at most, torch_blockwise 0.92).
PARTIALS = [Problem(B=1, H=4, N=4, M=250, D=32, Dv=64, scale=0.05, causal="bottom_right", inputs="one_binade_v",
                    dtype=dtype, seed=600) for dtype in ("float16", "bfloat16")]


def forced(backend, splits):
    """`backend` with its split count forced (a copy), or the backend itself for "auto"; a skip without a path."""
    if not hasattr(backend, "num_splits"):
        pytest.skip(f"{backend.name} has no split-KV path (no num_splits)")
    if splits == "auto":
        return backend
    chosen = copy.copy(backend)
    chosen.num_splits = splits
    return chosen


@pytest.mark.parametrize("splits", SPLITS, ids=lambda s: f"splits_{s}")
def test_split_kv_forward(backend, device, problem, splits):
    assert_passes(forced(backend, splits), problem, device)


@pytest.mark.parametrize("splits", (3,), ids=lambda s: f"splits_{s}")
@pytest.mark.parametrize("problem_", BACKWARD, ids=lambda p: p.id)
def test_split_kv_gradients_after_a_split_forward(backend, device, problem_, splits):
    assert_passes(forced(backend, splits), problem_, device, backward=True)


@pytest.mark.parametrize("splits", (3,), ids=lambda s: f"splits_{s}")
@pytest.mark.parametrize("problem_", LAYOUTS, ids=lambda p: p.id)
def test_split_kv_reads_kv_layouts(backend, device, problem_, splits):
    assert_passes(forced(backend, splits), problem_, device)


@pytest.mark.parametrize("splits", (2,), ids=lambda s: f"splits_{s}")
@pytest.mark.parametrize("problem_", PARTIALS, ids=lambda p: p.id)
def test_split_kv_keeps_its_partials_in_float32(backend, device, problem_, splits):
    assert_passes(forced(backend, splits), problem_, device)


# --- the rule and the combine, as pure functions ------------------------------------------------------------------

def test_heuristic_splits_decode_and_not_a_full_machine():
    # FlashAttention's own example: 48 work items on 108 SMs -> 2 splits (efficiency 0.89) rather than 3 (0.67)
    assert split_kv.num_splits_heuristic(48, 108, 64) == 2
    assert split_kv.num_splits_heuristic(87, 108, 64) == 1                     # 80% of the machine already busy
    assert split_kv.num_splits_heuristic(4, 216, 5) == 5                       # decode: every key block its chunk
    assert split_kv.num_splits_heuristic(4, 1, 1000) == 1                      # one worker: nothing to fill


def test_chunks_are_whole_tiles_and_cover_the_keys():
    chunks = split_kv.key_chunks(1000, 128, 3)
    assert [c.start % 128 for c in chunks] == [0] * len(chunks)
    assert sum(c.stop - c.start for c in chunks) == 1000 and chunks[-1].stop == 1000
    assert len(split_kv.key_chunks(1000, 128, 7)) == 4                         # 8 tiles: 2 per chunk, 4 chunks


def test_combine_counts_the_sink_once_and_ignores_empty_chunks():
    o = torch.tensor([[[1.0]], [[3.0]], [[0.0]]])                              # (S 3, 1, Dv 1); chunk 3 empty
    lse = torch.tensor([[0.0], [math.log(3.0)], [-math.inf]])
    out, total = split_kv.combine(o, lse, torch.tensor([0.0]))
    assert torch.allclose(total, torch.tensor([math.log(5.0)]))               # e^0 + e^log3 + sink e^0
    assert torch.allclose(out, torch.tensor([[(1.0 + 9.0) / 5.0]]))
    out, total = split_kv.combine(torch.zeros(2, 1, 1), torch.full((2, 1), -math.inf))
    assert out.item() == 0 and total.item() == -math.inf                       # a row with no key anywhere
    out, total = split_kv.combine(torch.zeros(2, 1, 1), torch.tensor([[0.0], [math.nan]]))
    assert out.isnan().all() and total.isnan().all()                           # NaN stays NaN
