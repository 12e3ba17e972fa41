"""Tile edges: sizes just off the tile grid, where blockwise kernels go wrong, checked forward and backward.

Tiled kernels (tiles of 32/64/128) break on partial tiles, on query tiles that
see no key at all (bottom_right with N > M), on tiles half above the causal
diagonal, on grouped heads and on head dims padded to a power of two. Every
problem here is small (N, M <= 256, so the Triton interpreter runs it in CI)
and is checked for the output, the lse and dQ, dK, dV; a backend without
backward skips this module (its forward is covered by test_agreement).
"""
from ._verdict import assert_passes
from attnbench.problem import Problem

NEEDS_GRAD = True

PROBLEMS = [
    Problem(B=1, H=2, N=65, M=129, D=80, causal="top_left", seed=1),              # one past a tile, D 80
    Problem(B=1, H=2, N=127, M=193, D=80, causal="bottom_right", dtype="float16", seed=2),
    Problem(B=1, H=2, N=200, M=70, D=64, causal="bottom_right", seed=3),          # rows 0..129 see no key
    Problem(B=1, H=2, N=200, M=70, D=32, causal="bottom_right", dtype="float16", seed=4),
    Problem(B=2, H=4, Hkv=1, N=129, D=96, causal="top_left", dtype="float16", seed=5),   # multi-query, D 96
    Problem(B=1, H=8, Hkv=2, N=100, M=160, D=48, scale=0.5, seed=6),              # grouped, D 48, scale
    Problem(B=1, H=2, N=256, M=256, D=128, dtype="float16", seed=7),              # the largest interpreted size
    Problem(B=1, H=2, N=1, M=255, D=16, causal="bottom_right", seed=8),           # one query sees every key
    Problem(B=1, H=2, N=40, M=72, D=256, Dv=160, causal="top_left", seed=9),      # big heads: smaller tiles
]


def test_forward_at_tile_edges(backend, device, problem):
    assert_passes(backend, problem, device)


def test_backward_at_tile_edges(backend, device, problem):
    assert_passes(backend, problem, device, backward=True)
