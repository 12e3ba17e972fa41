"""FlashAttention's own test grid (tests/test_flash_attn.py, `test_flash_attn_output`), as attnbench Problems.

    FLASH_GRID         every (N, M) x D x heads x dtype: 9 x 12 x 3 x 2 = 648 problems, batch 1, 6 query heads,
                       causal bottom-right (FlashAttention's causal), forward and backward
    CI_GRID            the slice CI runs (about a minute on 2 cores, all CPU backends), chosen where the grid
                       found something: the numpy float16 case and the GQA/MQA backward at D 256
    grid_problems(config)  FLASH_GRID with `--grid flash`, else CI_GRID

Head layouts are FlashAttention's "mha", "gqa" (H / Hkv = 3) and "mqa" (Hkv = 1). Sizes are FlashAttention's
ragged pairs (113, 203), (128, 217), ... up to (2048, 2048) and its head dims, odd ones (59, 111) included.
"""
from __future__ import annotations

from attnbench.problem import Problem

SEQ_PAIRS = ((113, 203), (128, 217), (113, 211), (108, 256), (256, 512), (512, 256), (1023, 1024), (1024, 1023),
             (2048, 2048))
HEAD_DIMS = (32, 40, 59, 64, 80, 96, 111, 128, 160, 192, 224, 256)
HEADS = 6
KV_HEADS = {"mha": 6, "gqa": 2, "mqa": 1}
DTYPES = ("float16", "bfloat16")


def grid_problem(N: int, M: int, D: int, layout: str, dtype: str) -> Problem:
    """One point of the grid: B 1, H 6, Hkv from `layout` (mha, gqa, mqa), causal bottom-right."""
    return Problem(B=1, H=HEADS, Hkv=KV_HEADS[layout], N=N, M=M, D=D, dtype=dtype, causal="bottom_right")


FLASH_GRID = [grid_problem(N, M, D, layout, dtype) for (N, M) in SEQ_PAIRS for D in HEAD_DIMS
              for layout in KV_HEADS for dtype in DTYPES]

CI_GRID = [
    grid_problem(128, 217, 32, "gqa", "float16"),     # numpy's float16-rounded scale was caught here
    grid_problem(108, 256, 59, "mqa", "float16"),     # torch_sdpa_flash's GQA backward (attnbench.deviations)
    grid_problem(113, 211, 59, "mha", "bfloat16"),
    grid_problem(108, 256, 111, "gqa", "bfloat16"),
]


def grid_problems(config) -> list[Problem]:
    """The problems a run checks: the whole grid with `--grid flash`, else the CI slice."""
    return FLASH_GRID if config.getoption("--grid") == "flash" else CI_GRID
