"""The `attnbench` command line. User mistakes print one line and exit 2, never a traceback."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnbench.reference import AttentionInputError


def _cmd_run(args) -> int:
    from attnbench.perf.main_job import main_job

    run_dir = main_job(Path(args.out), device=args.device)
    print(f"report written to {run_dir}")
    return 0


def _cmd_check(args) -> int:
    from attnbench.check import check_backward, check_forward, failure_message
    from attnbench.implementations import get_backend
    from attnbench.problem import Problem

    backend = get_backend(args.backend)
    problem = Problem.parse(args.problem)
    reason = backend.why_not(problem, args.device, need_grad=args.backward)
    if reason:
        print(f"{backend.name} does not support {problem.id}: {reason}")
        return 2
    rows = None
    if args.rows or args.key_rows:
        from attnbench.check import RowSample, default_rows

        auto = default_rows(problem)
        rows = RowSample(_row_list(args.rows) if args.rows else auto.query,
                         _row_list(args.key_rows) if args.key_rows else auto.key)
    verdicts = (check_backward if args.backward else check_forward)(backend, problem, args.device, rows=rows)
    print(failure_message(backend.name, problem, verdicts, args.device, backward=args.backward))
    return 0 if all(v.passed for v in verdicts) else 1


def _row_list(text: str) -> tuple[int, ...]:
    """ "0,15,16" -> (0, 15, 16); a bad list is a one-line error."""
    try:
        return tuple(int(r) for r in text.split(","))
    except ValueError:
        raise AttentionInputError(f"--rows/--key-rows: expected comma-separated integers, got {text!r}") from None


def _cmd_backends(args) -> int:
    from attnbench.backends_table import backend_rows, format_json, format_table
    from attnbench.implementations import all_backends, load_errors, origin

    rows = backend_rows(all_backends(), load_errors(), origin)
    print(format_json(rows) if args.json else format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description="Verify and benchmark attention implementations.")
    sub = parser.add_subparsers(dest="command", required=True)
    from attnbench.perf.cli_perf import add_sweep_arguments, run_compare, run_perf, run_report

    run = sub.add_parser("run", help="check every available backend and time it on a default set; write a report")
    run.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    run.add_argument("--out", default="reports", help="directory for the report (default: reports)")
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser("check", help="check one backend on one problem against the float64 reference")
    check.add_argument("backend")
    check.add_argument("--problem", required=True, help='e.g. "B=2,H=4,N=97,M=113,D=80,dtype=float16,causal=top_left"')
    check.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    check.add_argument("--backward", action="store_true", help="check dQ, dK, dV instead of the output")
    check.add_argument("--rows", help="check only these query rows (comma-separated), as a failure's repro names them")
    check.add_argument("--key-rows", help="with --backward: check dK, dV only at these key rows")
    check.set_defaults(func=_cmd_check)
    perf = sub.add_parser("perf", help="sweep N, H, B, D, dtype, causal and pass over backends; time, memory, "
                                       "accuracy; write reports/<run-id>/")
    add_sweep_arguments(perf)
    perf.set_defaults(func=run_perf)
    report = sub.add_parser("report", help="re-render report.md, report.html and plots from DIR/results.jsonl")
    report.add_argument("dir")
    report.set_defaults(func=run_report)
    compare = sub.add_parser("compare", help="per-point time ratios NEW/OLD; exit 1 on a significant regression")
    compare.add_argument("old")
    compare.add_argument("new")
    compare.add_argument("--threshold", type=float, default=1.10, help="slowdown ratio that counts (default 1.10)")
    compare.set_defaults(func=run_compare)
    backends = sub.add_parser("backends", help="list known backends, their availability and capabilities")
    backends.add_argument("--json", action="store_true", help="print the rows as JSON")
    backends.set_defaults(func=_cmd_backends)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (AttentionInputError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"attnbench: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
