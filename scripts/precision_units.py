"""The worst error of backends on the FlashAttention grid slice, in units of their declared-precision bound and of
the 2x-naive limit, side by side: how much tighter the declared model holds a kernel than the plain rule.

    python scripts/precision_units.py torch_sdpa_flash torch_blockwise            # CI_GRID, forward + backward
    python scripts/precision_units.py torch_sdpa_flash --grid flash --forward     # the whole grid, forward only

A unit above 1 fails; "-" where the backend declares nothing (or the check is row-sampled, for the backward).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnbench.check import check_backward, check_forward  # noqa: E402
from attnbench.implementations import get_backend  # noqa: E402
from conformance.flash_grid import CI_GRID, FLASH_GRID  # noqa: E402


def units(verdicts) -> dict[str, tuple[float | None, float | None]]:
    """{tensor: (error / declared bound, error / 2x-naive limit)} of one check's numeric verdicts."""
    return {v.name: (v.model_units, v.max_error / v.naive_limit if v.naive_limit else None)
            for v in verdicts if v.name != "contract"}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backends", nargs="+")
    parser.add_argument("--grid", choices=("ci", "flash"), default="ci")
    parser.add_argument("--forward", action="store_true", help="forward only")
    args = parser.parse_args(argv)
    problems = FLASH_GRID if args.grid == "flash" else CI_GRID
    print("| backend | problem | pass | tensor | error / declared bound | error / 2x-naive limit |")
    print("|---|---|---|---|---|---|")
    for name in args.backends:
        backend = get_backend(name)
        for problem in problems:
            if backend.why_not(problem, "cpu"):
                continue
            passes = [("fwd", check_forward)] + ([] if args.forward or not backend.capabilities("cpu").grad
                                                  else [("bwd", check_backward)])
            for label, check in passes:
                for tensor, (model, naive) in units(check(backend, problem, "cpu")).items():
                    print(f"| {name} | {problem.id} | {label} | {tensor} | {fmt(model)} | {fmt(naive)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
