"""Scan FlashAttention's test grid for one backend: every verdict's max error / naive error, unjudged.

The evidence behind a known deviation (attnbench/deviations.py) and the check that the one budget raises no
false alarm across the grid. Prints one line per problem and writes a JSON of every verdict.

    python scripts/flash_grid_scan.py torch_sdpa_flash --layouts gqa,mqa --backward --json scan.json
    python scripts/flash_grid_scan.py numpy --max-len 512                 # forward, the small pairs only

It runs the one check (`attnbench.check`), so a failed verdict is exactly what conformance would fail (a ratio above
2 can still pass where the budget's floor covers it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                      # conformance/ is the repo's test suite, not a package

from attnbench.evaluate import evaluate  # noqa: E402
from attnbench.implementations import get_backend  # noqa: E402
from conformance.flash_grid import FLASH_GRID, KV_HEADS  # noqa: E402


def ratios(verdicts) -> dict[str, float | None]:
    """Verdict name -> max error / naive error (None where the verdict has no naive yardstick)."""
    return {v.name: (v.max_error / v.naive_error if v.naive_error else None) for v in verdicts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend")
    parser.add_argument("--layouts", default="mha,gqa,mqa", help="head layouts to scan (default: %(default)s)")
    parser.add_argument("--max-len", type=int, default=2048, help="skip pairs with N or M above (default: %(default)s)")
    parser.add_argument("--backward", action="store_true", help="scan the backward instead of the forward")
    parser.add_argument("--json", type=Path, help="write every verdict here")
    args = parser.parse_args(argv)
    backend = get_backend(args.backend)
    kv_heads = {KV_HEADS[name] for name in args.layouts.split(",")}
    problems = [p for p in FLASH_GRID if p.Hkv in kv_heads and max(p.N, p.M) <= args.max_len]
    rows, start = [], time.perf_counter()
    for i, problem in enumerate(problems, 1):
        # evaluate: the verdict `attnbench check` and conformance give (known deviations, route, contract)
        result = evaluate(backend, problem, "cpu", backward=args.backward, forward=not args.backward)
        if result.skipped is not None:
            continue
        verdicts = result.backward if args.backward else result.forward
        r = ratios(verdicts)
        failed = [v.name for v in verdicts if not v.passed]
        rows.append({"problem": problem.id, "ratios": r, "failed": failed, "notes": result.notes})
        worst = max((x for x in r.values() if x is not None), default=float("nan"))
        print(f"[{i}/{len(problems)}] {problem.id}: worst {worst:.2f}x naive"
              f"{'  FAILED ' + ','.join(failed) if failed else ''}", flush=True)
    seconds = time.perf_counter() - start
    worst = max((x for row in rows for x in row["ratios"].values() if x is not None), default=float("nan"))
    failures = sum(bool(row["failed"]) for row in rows)
    print(f"{len(rows)} problems in {seconds:.0f} s; worst ratio {worst:.2f}x naive; {failures} with a failed verdict")
    if args.json:
        args.json.write_text(json.dumps({"backend": args.backend, "backward": args.backward, "seconds": seconds,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
