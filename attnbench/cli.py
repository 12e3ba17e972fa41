"""The `attnbench` command line. User mistakes (`AttentionInputError`: a bad option, problem or backend name) print
one line and exit 2, never a traceback; any other exception is a bug and shows its traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from attnbench.errors import AttentionInputError


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help; options whose default depends on others say so in their own text."""

    def _get_help_string(self, action):
        if action.default in (None, [], True, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _VersionAction(argparse.Action):
    """--version: attnbench.__version__ (pyproject reads it from there), without importlib.metadata (30 ms)."""

    def __init__(self, option_strings, dest, help="show the version and exit"):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from attnbench import __version__

        print(f"attnbench {__version__}")                        # on stdout, as argparse's own version action
        parser.exit()


def use_triton_interpreter_without_cuda() -> None:
    """Without CUDA, Triton kernels run only under the interpreter, chosen when triton.jit decorates them:
    set TRITON_INTERPRET=1 before any backend is imported (an explicit setting wins), as the conformance
    conftest does, so `check`, `run` and `perf` include triton_blockwise at the sizes it allows, and
    `backends` lists what they would run."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _cmd_run(args) -> int:
    from attnbench.perf.commands import run_main_job

    return run_main_job(args)


def _cmd_check(args) -> int:
    from attnbench.evaluate import evaluate
    from attnbench.implementations import get_backend
    from attnbench.implementations.registry import load_plugins
    from attnbench.problem import Problem

    load_plugins(args.plugin)
    backend = get_backend(args.backend)
    problem = Problem.parse(args.problem)
    rows = None
    if args.rows or args.key_rows:
        from attnbench.check import RowSample, default_rows

        auto = default_rows(problem)
        rows = RowSample(_row_list(args.rows) if args.rows else auto.query,
                         _row_list(args.key_rows) if args.key_rows else auto.key)
    # The one evaluation every suite uses: --backward checks the gradients (as a repro line names them).
    result = evaluate(backend, problem, args.device, backward=args.backward, forward=not args.backward, rows=rows)
    print(result.message())
    return 2 if result.skipped else (0 if result.passed else 1)


def _row_list(text: str) -> tuple[int, ...]:
    """ "0,15,16" -> (0, 15, 16); a bad list is a one-line error."""
    try:
        return tuple(int(r) for r in text.split(","))
    except ValueError:
        raise AttentionInputError(f"--rows/--key-rows: expected comma-separated integers, got {text!r}") from None


def _cmd_backends(args) -> int:
    from attnbench.backends_table import backend_rows, format_json, format_table
    from attnbench.implementations import all_backends, get_backend, load_errors, origin

    if args.names:                                   # named ones only: functions ("module:function") included
        registered = {b.name for b in all_backends()}
        rows = backend_rows([get_backend(n) for n in args.names], {},
                            lambda name: origin(name) if name in registered else "function")
    else:
        rows = backend_rows(all_backends(), load_errors(), origin)
    print(format_json(rows) if args.json else format_table(rows))
    return 0


def run_conformance(pytest_args: list[str]) -> int:
    """`attnbench conformance [pytest options]`: pytest on the suite installed with attnbench, from any directory.

    Given the suite's directory, pytest loads its conftest, and so the suite's options, before it parses the
    rest of the command line. -ra lists every skip with its reason; no cache directory is written beside the
    installed suite. pytest runs in a fresh process: attnbench is a pytest plugin's package, whose modules
    pytest rewrites only if it imports them first."""
    import subprocess
    from importlib.util import find_spec

    missing = [name for name in ("pytest", "hypothesis") if find_spec(name) is None]
    if missing:
        print(f"attnbench: error: the conformance suite needs {' and '.join(missing)}: pip install 'attnbench[test]'",
              file=sys.stderr)
        return 2
    spec = find_spec("attnbench.conformance")
    if spec is None:
        print("attnbench: error: this attnbench was installed without its conformance suite (attnbench.conformance)",
              file=sys.stderr)
        return 2
    suite = Path(spec.origin).parent
    with subprocess.Popen([sys.executable, "-m", "pytest", str(suite), "-ra", "-p", "no:cacheprovider",
                           *pytest_args]) as pytest_run:
        try:
            return pytest_run.wait()
        except KeyboardInterrupt:                                # pytest got the same Ctrl-C: it reports and ends
            return pytest_run.wait()


def _cmd_report(args) -> int:
    from attnbench.perf.commands import run_report

    return run_report(args)


def _command(argv: list[str]) -> str:
    """The subcommand named in argv, "" for none: the first word that is not an option (the top-level options,
    --help and --version, take no value)."""
    return next((a for a in argv if not a.startswith("-")), "")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser. Given `command`, the subcommand about to run ("" for none: --help, --version), the options of
    perf, compare and audit are built only for that one, so `backends`, `check` and `--version` never import
    attnbench.perf; None builds every option (every --help)."""
    def wanted(name: str) -> bool:
        return command is None or command == name

    parser = argparse.ArgumentParser(prog="attnbench", description="Verify and benchmark attention implementations.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, formatter_class=_HelpFormatter, **k)  # defaults in every --help
    run = sub.add_parser("run", help="check every available backend and time it on a default set; write a report")
    run.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to run every backend on")
    run.add_argument("--out", default="reports", help="parent directory of the new run-* report directory")
    run.add_argument("--allow-failures", action="store_true",
                     help="exit 0 even when a point errors or is inaccurate (default: exit 1)")
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser("check", help="check one backend on one problem against the float64 reference")
    check.add_argument("backend", help="a name from `attnbench backends`")
    check.add_argument("--problem", required=True, help='e.g. "B=2,H=4,N=97,M=113,D=80,dtype=float16,causal=top_left"')
    check.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to check on")
    check.add_argument("--backward", action="store_true", help="check dQ, dK, dV instead of the output")
    check.add_argument("--rows", help="check only these query rows (comma-separated), as a failure's repro names them")
    check.add_argument("--key-rows", help="with --backward: check dK, dV only at these key rows")
    check.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                       help="import this backend file first (repeatable), as `perf --plugin` and "
                            "`pytest conformance --plugin` do")
    check.set_defaults(func=_cmd_check)
    perf = sub.add_parser("perf", help="sweep N, H, B, D, dtype, causal and pass over backends; time, memory, "
                                       "accuracy; write reports/<run-id>/")
    if wanted("perf"):
        from attnbench.perf.commands import add_sweep_arguments, run_perf

        add_sweep_arguments(perf)
        perf.set_defaults(func=run_perf)
    report = sub.add_parser("report", help="re-render report.md, report.html and plots from DIR/results.jsonl")
    report.add_argument("dir", help="a run directory holding results.jsonl")
    report.set_defaults(func=_cmd_report)
    compare = sub.add_parser("compare", help="per-point time ratios NEW/OLD (two runs, or two backends "
                                             "interleaved); exit 1 on a significant regression")
    if wanted("compare"):
        from attnbench.perf.commands import add_compare_arguments, run_compare

        add_compare_arguments(compare)
        compare.set_defaults(func=run_compare)
    audit = sub.add_parser("audit", help="compile a backend's Triton kernels (those it declares: "
                                         "Backend.audit_launches) for sm_80/sm_90/sm_100 without a GPU; "
                                         "registers, shared memory, spills, tensor cores, occupancy, roofline")
    if wanted("audit"):
        from attnbench.perf.audit import add_audit_arguments, run_audit_command

        add_audit_arguments(audit)
        audit.set_defaults(func=run_audit_command)
    # Listed for --help only: main() hands everything after `conformance` to pytest unparsed.
    sub.add_parser("conformance", help="run the conformance suite shipped with attnbench under pytest: "
                                       "--backend, --plugin, --device, --long and any pytest option "
                                       "(`attnbench conformance --help` lists them)")
    backends = sub.add_parser("backends", help="list known backends, their availability and capabilities")
    backends.add_argument("names", nargs="*", help="only these backends (a function as 'package.module:function' "
                                                   "too); default: every registered one")
    backends.add_argument("--json", action="store_true", help="print the rows as JSON")
    backends.set_defaults(func=_cmd_backends)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["conformance"]:
        return run_conformance(argv[1:])
    args = build_parser(_command(argv)).parse_args(argv)
    args.argv = argv                                             # `perf --resume` tells typed flags from defaults
    try:
        if args.command in ("check", "run", "perf", "backends"):       # backends: say what check would run
            use_triton_interpreter_without_cuda()
        return args.func(args)
    except AttentionInputError as exc:       # UnknownBackendError included; a bug's KeyError keeps its traceback
        print(f"attnbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
