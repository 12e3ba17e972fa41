"""Every launch config triton_blockwise may pick (its CONFIG_SPACE) computes the right answer, not only the default.

On a GPU, autotune chooses among the candidates per (N bucket, M bucket, D,
causal), so any of them may run. Each tile shape is forced here for the
forward, dK/dV and dQ kernels at once and checked forward and backward on a
problem off the tile grid (N 97, M 131, or 70, 100 at D 256: partial tiles), grouped
heads (H 2, Hkv 1) and a padded head dim of the config's width; a third of them with
every modification (a window's tile bounds depend on the tile). Under the interpreter
num_warps and num_stages do not change the arithmetic, so configs that share
a tile run once (the id lists them); on a GPU (`--device cuda`) each runs.
"""
import numpy as np
import pytest
import torch

from attnbench.perf.gpu_targets import TARGETS
from attnbench.problem import Problem
from attnbench.reference.mods import Alibi, Sinks, Softcap, Window

from ._verdict import assert_passes

tb = pytest.importorskip("attnbench.implementations.triton_blockwise")

# a non-power-of-two head dim for each padded width, so the padding is exercised too
HEAD_DIM_FOR_WIDTH = {16: 16, 32: 24, 64: 40, 128: 80, 256: 160}
CAUSAL_CYCLE = ("bottom_right", None, "top_left")
# with the first: a window reaching 30 keys back (a few tiles skipped at N 97), in FlashAttention's order
MODS_CYCLE = ((Softcap(20.0), Alibi("batch"), Window(30, 0), Sinks()), (), ())


def config_runs(on_gpu: bool) -> list:
    """pytest params: (kind, padded D, {kernel: LaunchConfig}) covering every candidate of every kernel."""
    params = []
    for (kind, d_pad) in tb.CONFIG_SPACE["fwd"]:
        per_kernel = {k: tb.CONFIG_SPACE[k][(kind, d_pad)] for k in tb.KERNELS}
        seen = set()
        for i in range(max(map(len, per_kernel.values()))):
            forced = {k: cs[i % len(cs)] for k, cs in per_kernel.items()}
            tiles = tuple((c.block_n, c.block_m) for c in forced.values())
            if not on_gpu and tiles in seen:
                continue
            seen.add(tiles)
            ids = "-".join(f"{k}_{c.id}" for k, c in forced.items())
            params.append(pytest.param(kind, d_pad, forced, i, id=f"{kind}-D{d_pad}-{ids}"))
    return params


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        from .conftest import selected_devices

        metafunc.parametrize("device", selected_devices(metafunc.config))


def make_backend(forced: dict) -> "tb.TritonBlockwise":
    backend = tb.TritonBlockwise()
    backend.forced_configs = forced
    return backend


def problem_for(kind: str, d_pad: int, i: int) -> Problem:
    # still off every tile grid (tiles at D 256 are <= 64 wide) but a third cheaper for the widest, slowest heads
    n, m = (70, 100) if d_pad == 256 else (97, 131)
    return Problem(B=1, H=2, Hkv=1, N=n, M=m, D=HEAD_DIM_FOR_WIDTH[d_pad],
                   dtype="float16" if kind == "half" else "float32", causal=CAUSAL_CYCLE[i % 3], mods=MODS_CYCLE[i % 3],
                   seed=d_pad + i)


@pytest.mark.parametrize("kind, d_pad, forced, i", config_runs(on_gpu=torch.cuda.is_available()))
def test_every_launch_config_forward_and_backward(device, kind, d_pad, forced, i):
    backend = make_backend(forced)
    problem = problem_for(kind, d_pad, i)
    reason = backend.why_not(problem, device, need_grad=True)
    if reason:
        pytest.skip(reason)
    assert_passes(backend, problem, device)
    assert_passes(backend, problem, device, backward=True)


def test_config_space_covers_every_dtype_kind_and_width():
    """A head dim 16..256 and any dtype must find candidates for every kernel (no KeyError at launch)."""
    for d in (16, 17, 33, 64, 80, 96, 128, 160, 192, 256):
        for dtype in ("float16", "bfloat16", "float32"):
            for kernel in tb.KERNELS:
                for target in (None, *TARGETS):
                    for mods in (False, True):
                        assert tb.candidate_configs(kernel, tb.dtype_kind(dtype), tb.padded_head_dim(d, d), target,
                                                    mods), (kernel, dtype, d, target, mods)


# Tile skipping under a window, seen through NaN: a NaN in one row of V (forward), of K (dQ) or of dO (dK/dV)
# poisons, as 0 * NaN, every output row of a program that loads it, whether or not the window lets that row see
# it. So which outputs come back NaN says which tiles each program visited. N and M are multiples of the tiles,
# so a program's bounds are exactly its rows' (a partial last tile may load a tile only its padding rows see).
SKIP_TILES = dict(fwd=tb.LaunchConfig(64, 32, 4, 2), dkdv=tb.LaunchConfig(32, 64, 4, 2),
                  dq=tb.LaunchConfig(64, 32, 4, 2))
SKIP_N, SKIP_M = 192, 256


def visible(causal, window, n: int, m: int) -> np.ndarray:
    """Bool (N, M): key j visible from query i under causal and window (left, right), bottom-right aligned."""
    d = np.arange(n)[:, None] + (m - n) - np.arange(m)[None, :]
    keep = np.ones((n, m), dtype=bool)
    if causal is not None:
        keep &= d >= (0 if causal == "bottom_right" else m - n)
    if window[0] >= 0:
        keep &= d <= window[0]
    if window[1] >= 0:
        keep &= d >= -window[1]
    return keep


def tiles_of(index: int, block: int, length: int) -> slice:
    start = index // block * block
    return slice(start, min(start + block, length))


@pytest.mark.parametrize("causal, window, poison", [(None, (40, 0), 150), (None, (20, 50), 100),
                                                    ("top_left", (100, -1), 200), ("bottom_right", (-1, 10), 20)])
def test_window_skips_the_tiles_it_cannot_see(device, causal, window, poison):
    """Forward and dQ: a query tile is NaN exactly when one of its rows sees the poisoned key's tile (visited
    tiles, no more, no fewer). dK/dV: a key tile stays finite when no query within a tile of the poisoned row
    sees it (the query loop is not tile-aligned there), and is NaN when the poisoned row sees it."""
    if device != "cpu" and not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from attnbench.implementations.torch_mods import TorchMods

    mods = TorchMods(window=window)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 16, generator=gen).to(device) for n in (SKIP_N, SKIP_M, SKIP_M))
    see = visible(causal, window, SKIP_N, SKIP_M)

    def seen_tiles(rows_block: int, cols_block: int) -> np.ndarray:
        """Bool (N, M): some row of i's tile sees some key of j's tile."""
        by_rows = np.stack([see[tiles_of(i, rows_block, SKIP_N)].any(0) for i in range(SKIP_N)])
        return np.stack([by_rows[:, tiles_of(j, cols_block, SKIP_M)].any(1) for j in range(SKIP_M)], axis=1)

    bad_v = v.clone()
    bad_v[..., poison, :] = float("nan")
    o, _ = tb.triton_forward(q, k, bad_v, causal, None, SKIP_TILES, mods)
    fwd = seen_tiles(SKIP_TILES["fwd"].block_n, SKIP_TILES["fwd"].block_m)[:, poison]
    assert (o[0, 0].isnan().all(-1).cpu().numpy() == fwd).all(), "forward visits other key tiles than its window's"

    bad_k = k.clone()
    bad_k[..., poison, :] = float("nan")
    o, lse = tb.triton_forward(q, bad_k, v, causal, None, SKIP_TILES, mods)
    do = torch.randn(o.shape, generator=gen).to(device)
    dq, _, _ = tb.triton_backward(q, bad_k, v, o, lse, do, causal, None, SKIP_TILES, mods)
    want = seen_tiles(SKIP_TILES["dq"].block_n, SKIP_TILES["dq"].block_m)[:, poison]
    assert (dq[0, 0].isnan().all(-1).cpu().numpy() == want).all(), "dQ visits other key tiles than its window's"

    o, lse = tb.triton_forward(q, k, v, causal, None, SKIP_TILES, mods)
    bad_do = do.clone()
    bad_do[..., poison // 2, :] = float("nan")
    _, dk, dv = tb.triton_backward(q, k, v, o, lse, bad_do, causal, None, SKIP_TILES, mods)
    block_n, block_m = SKIP_TILES["dkdv"].block_n, SKIP_TILES["dkdv"].block_m
    near = see[max(0, poison // 2 - block_n + 1):poison // 2 + block_n]
    may = np.array([near[:, tiles_of(j, block_m, SKIP_M)].any() for j in range(SKIP_M)])
    must = np.array([see[poison // 2, tiles_of(j, block_m, SKIP_M)].any() for j in range(SKIP_M)])
    for grad in (dk, dv):
        nan = grad[0, 0].isnan().all(-1).cpu().numpy()
        assert not (nan & ~may).any(), "dK/dV visits query rows that cannot see its key tile"
        assert (nan | ~must).all(), "dK/dV skips query rows that see its key tile"
