"""FlashAttention's own test grid (tests/test_flash_attn.py, `test_flash_attn_output`), as attnbench Problems.

    FLASH_GRID         every (N, M) x D x heads x dtype x local x softcap x alibi:
                       9 x 12 x 3 x 2 x 2 x 2 x 2 = 5,184 problems, batch 1, 6 query heads, causal bottom-right
                       (FlashAttention's causal), forward and backward
    CI_GRID            the slice CI runs (about a minute on 2 cores, all CPU backends), chosen where the grid
                       found something: the numpy float16 case and the GQA/MQA backward at D 256, plus one point
                       with all three modifications
    grid_problems(config)  FLASH_GRID with `--grid flash`, else CI_GRID

Head layouts are FlashAttention's "mha", "gqa" (H / Hkv = 3) and "mqa" (Hkv = 1). Sizes are FlashAttention's
ragged pairs (113, 203), (128, 217), ... up to (2048, 2048) and its head dims, odd ones (59, 111) included.

The modifications are its test's other parameters, drawn as it draws them (FlashAttention 2.6+):
    local     `window_size = torch.randint(0, seqlen_k, (2,))`: here (left, right) drawn from [0, M) by a
              generator seeded with the point's sizes, so a grid point is the same problem on every run; with
              causal, the right side is the diagonal (FlashAttention sets window_size_right = 0 under causal;
              here the window and causal intersect, the same keys)
    softcap   0.0 or 50.0 (`softcap` parametrized [0.0, 50.0])
    alibi     `alibi_slopes = torch.rand(batch_size, nheads) * 0.3`, float32: `Alibi("batch")` draws exactly that
in FlashAttention's order: softcap on the scaled scores, then ALiBi's bias, then the window's mask.
"""
from __future__ import annotations

import itertools

import numpy as np

from attnbench.problem import Problem
from attnbench.reference.mods import Alibi, Softcap, Window

SEQ_PAIRS = ((113, 203), (128, 217), (113, 211), (108, 256), (256, 512), (512, 256), (1023, 1024), (1024, 1023),
             (2048, 2048))
HEAD_DIMS = (32, 40, 59, 64, 80, 96, 111, 128, 160, 192, 224, 256)
HEADS = 6
KV_HEADS = {"mha": 6, "gqa": 2, "mqa": 1}
DTYPES = ("float16", "bfloat16")
LOCAL = (False, True)
SOFTCAPS = (0.0, 50.0)
ALIBI = (False, True)


def local_window(N: int, M: int, D: int) -> Window:
    """FlashAttention's drawn local window, (left, right) in [0, M), fixed per (N, M, D)."""
    left, right = np.random.default_rng([N, M, D]).integers(0, M, 2)
    return Window(int(left), int(right))


def grid_problem(N: int, M: int, D: int, layout: str, dtype: str, *, local: bool = False, softcap: float = 0.0,
                 alibi: bool = False) -> Problem:
    """One point of the grid: B 1, H 6, Hkv from `layout` (mha, gqa, mqa), causal bottom-right, and the
    modifications FlashAttention's parameters name (none by default)."""
    mods = ((Softcap(softcap),) if softcap else ()) + ((Alibi("batch"),) if alibi else ()) \
        + ((local_window(N, M, D),) if local else ())
    return Problem(B=1, H=HEADS, Hkv=KV_HEADS[layout], N=N, M=M, D=D, dtype=dtype, causal="bottom_right",
                   mods=mods)


FLASH_GRID = [grid_problem(N, M, D, layout, dtype, local=local, softcap=softcap, alibi=alibi)
              for (N, M) in SEQ_PAIRS for D in HEAD_DIMS for layout in KV_HEADS for dtype in DTYPES
              for local, softcap, alibi in itertools.product(LOCAL, SOFTCAPS, ALIBI)]

CI_GRID = [
    grid_problem(128, 217, 32, "gqa", "float16"),     # numpy's float16-rounded scale was caught here
    grid_problem(108, 256, 59, "mqa", "float16"),     # torch_sdpa_flash's GQA backward (attnbench.deviations)
    grid_problem(113, 211, 59, "mha", "bfloat16"),
    grid_problem(108, 256, 111, "gqa", "bfloat16"),
    grid_problem(113, 203, 59, "gqa", "float16", local=True, softcap=50.0, alibi=True),   # every parameter on
]


def grid_problems(config) -> list[Problem]:
    """The problems a run checks: the whole grid with `--grid flash`, else the CI slice."""
    return FLASH_GRID if config.getoption("--grid") == "flash" else CI_GRID
