"""Every launch config triton_blockwise may pick (its CONFIG_SPACE) computes the right answer, not only the default.

On a GPU, autotune chooses among the candidates per (N bucket, M bucket, D,
causal), so any of them may run. Each tile shape is forced here for the
forward, dK/dV and dQ kernels at once and checked forward and backward on a
problem off the tile grid (N 97, M 131, or 70, 100 at D 256: partial tiles), grouped
heads (H 2, Hkv 1) and a padded head dim of the config's width. Under the interpreter
num_warps and num_stages do not change the arithmetic, so configs that share
a tile run once (the id lists them); on a GPU (`--device cuda`) each runs.
"""
import pytest
import torch

from attnbench.problem import Problem

from ._verdict import assert_passes

tb = pytest.importorskip("attnbench.implementations.triton_blockwise")

# a non-power-of-two head dim for each padded width, so the padding is exercised too
HEAD_DIM_FOR_WIDTH = {16: 16, 32: 24, 64: 40, 128: 80, 256: 160}
CAUSAL_CYCLE = ("bottom_right", None, "top_left")


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
                   dtype="float16" if kind == "half" else "float32", causal=CAUSAL_CYCLE[i % 3], seed=d_pad + i)


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
                assert tb.candidate_configs(kernel, tb.dtype_kind(dtype), tb.padded_head_dim(d, d))
