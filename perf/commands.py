"""The perf commands: `attnbench perf`, `run`, `report` and `compare` (attnbench/cli.py builds their parsers here).

In: the command line. Out: a `SweepSpec`, `MeasureOptions` and timeout (a profile of spec.py, changed only by
the flags a user typed), run through runner.py; at the end the report (report.py), the summary and the exit
code (`finish`). `compare` reads two runs (compare.py), or times two backends alternately in fresh workers.

A user mistake raises AttentionInputError (the CLI prints one line and exits 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from pathlib import Path

from attnbench.devices import require_device
from attnbench.problem import DTYPES
from attnbench.reference import AttentionInputError

from .spec import (DECODE, INTERLEAVED, PERF, PERF_PASSES, QUICK, REGRESSION_THRESHOLD, RUN, MeasureOptions,
                   SweepSpec, measurable_backends)

CAUSAL_WORDS = {"none": None, "off": None, "top_left": "top_left", "on": "top_left", "bottom_right": "bottom_right"}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def csv(values) -> str:
    """(256, 512) -> '256,512': a profile's tuple as the command line writes it."""
    return ",".join(map(str, values))


def ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise AttentionInputError(f"--{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise AttentionInputError(f"--{what}: expected integers >= 1, got {text!r}")
    return values


def cpus(text: str) -> tuple[int, ...]:
    """'0,1' -> (0, 1), each a CPU this process may run on."""
    allowed = os.sched_getaffinity(0)
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or not set(values) <= allowed:
        raise AttentionInputError(f"--pin-cpus: expected CPUs from {sorted(allowed)}, got {text!r}")
    return values


def words(text: str, allowed, what: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise AttentionInputError(f"--{what}: expected some of {', '.join(allowed)}, got {text!r}")
    return values


def parse_bytes(text: str | None) -> int | None:
    """'2G', '512M', '1.5GiB', '1000000' -> bytes (binary units); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise AttentionInputError(f"--memory-cap: expected a size like 2G or 512M, got {text!r}")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size <= 0:
        raise AttentionInputError(f"--memory-cap: expected a size above 0, got {text!r}")
    return size


def _profiled(what: str, option: str) -> str:
    """--help text of a measuring option whose default the profile sets: `perf`'s and `--quick`'s."""
    return f"{what} (default {getattr(PERF.options, option)}; --quick {getattr(QUICK.options, option)})"


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", help="comma-separated backend names (default: every registered one that fits)")
    p.add_argument("--seq-lens",
                   help=f"N values (default {csv(PERF.spec.seq_lens)}; --quick {csv(QUICK.spec.seq_lens)})")
    p.add_argument("--kv-len", type=int, help="M for every point (default: M = N)")
    p.add_argument("--decode", action="store_true",
                   help=f"the decode regime: N fixed and small (--seq-lens, default {csv(DECODE.seq_lens)}), M swept "
                        f"over --kv-lens (default {csv(DECODE.kv_lens)}), fwd; reports GB/s and the fraction of the "
                        "machine's measured memory bandwidth")
    p.add_argument("--kv-lens", help="M values to sweep at each N (the decode regime; default with --decode: "
                                     f"{csv(DECODE.kv_lens)})")
    p.add_argument("--kv-heads", type=int, help="Hkv of every point (grouped-query; default: H)")
    p.add_argument("--kv", default="dense", metavar="LAYOUT",
                   help="KV cache layout of every point: dense, ragged (a batch of different lengths, packed), "
                        "paged:PAGE_SIZE (pages through a block table); bytes and FLOPs count each sequence's own "
                        "length")
    p.add_argument("--append", type=int, default=0, metavar="K",
                   help="new keys per sequence the call writes into the cache (default 0)")
    p.add_argument("--heads", default=csv(PERF.spec.heads), help="H values")
    p.add_argument("--heads-at-n", type=int, metavar="N", help="sweep H only at this N; the N curve uses the "
                                                               "first H (default: the whole N x H grid)")
    p.add_argument("--batch", default=csv(PERF.spec.batch), help="B values")
    p.add_argument("--head-dim", default=csv(PERF.spec.head_dims), help="D values")
    p.add_argument("--dtype", default=csv(PERF.spec.dtypes), help=f"dtypes, from {', '.join(DTYPES)}")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device every point runs on")
    p.add_argument("--causal", default="none", help="none, top_left (on), bottom_right; comma-separated")
    p.add_argument("--mods", default="", help="modifications every point computes, as in a problem spec: "
                   "'window=4096:0,softcap=30,alibi=head,sinks=1' (FLOPs count the attended pairs only)")
    p.add_argument("--pass", dest="passes", help=f"from {', '.join(PERF_PASSES)} (default {csv(PERF.spec.passes)})")
    p.add_argument("--out", default="reports", help="parent directory of the new run-* directory")
    p.add_argument("--repeats", type=int, help=_profiled("most timed repeats per point", "max_repeats"))
    p.add_argument("--time-budget", type=float, help=_profiled("seconds of timed repeats per point", "time_budget_s"))
    p.add_argument("--timeout", type=float, default=PERF.timeout_s, help="seconds per point before it is a timeout")
    p.add_argument("--memory-cap", help="memory one call may allocate, e.g. 2G; beyond it the point is oom "
                                        "(default: no cap)")
    p.add_argument("--resume", metavar="DIR", help="continue the sweep saved in DIR (its spec.json), skipping "
                                                   "points already recorded; sweep flags may only repeat it")
    p.add_argument("--quick", action="store_true", help="a small sweep, well under a minute")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="a module file registering extra backends (imported in each worker too)")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where points run: local (this machine) or ray (a Ray cluster; pip install attnbench[ray])")
    p.add_argument("--address", help="with --executor ray: the cluster, 'auto' or HOST:PORT (default: start a "
                                     "local one)")
    p.add_argument("--workers", type=int, default=1,
                   help="local executor: points measured at once, one per GPU or set of cores (default 1; "
                        "concurrent CPU points disturb each other's timings)")
    p.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when a point errors or is inaccurate (default: exit 1)")
    p.add_argument("--threads", type=int, default=PERF.options.threads,
                   help="torch/BLAS threads in each worker (1 is stable on a shared machine)")
    p.add_argument("--pin-cpus", help="pin workers to these CPUs, e.g. 0 or 0,1 (default: no pinning)")
    p.add_argument("--processes", type=int, help=_profiled("fresh processes per point", "processes"))
    p.add_argument("--remeasure", type=int,
                   help=_profiled("re-measures of a noisy point before it is flagged", "remeasure"))


# Flags that do not define the sweep: free to differ on --resume and not saved in spec.json.
NOT_SWEEP = {"out", "resume", "allow_failures", "help", "executor", "address", "workers"}


def _sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add_sweep_arguments(p)
    return p


def sweep_values(args) -> dict:
    """The sweep-defining command-line values of parsed `args` (saved in spec.json)."""
    return {a.dest: getattr(args, a.dest) for a in _sweep_parser()._actions
            if a.dest not in NOT_SWEEP and hasattr(args, a.dest)}


def explicit_values(argv: list[str]) -> dict:
    """The sweep flags a user actually typed after `perf` (argparse fills in defaults otherwise)."""
    p = _sweep_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    rest = argv[argv.index("perf") + 1:] if "perf" in argv else argv
    return {k: v for k, v in vars(p.parse_known_args(rest)[0]).items() if k not in NOT_SWEEP}


def parse_mods(text: str) -> tuple:
    """The modifications of --mods ("window=4096:0,softcap=30"), read as the items of a problem spec."""
    from attnbench.problem import Problem

    if not text:
        return ()
    items = [item.strip() for item in text.split(",") if item.strip()]
    if any(item.partition("=")[0] in ("B", "H", "N", "M", "D", "dtype", "causal") for item in items):
        raise AttentionInputError(f"--mods: modifications only (window, softcap, alibi, sinks), got {text!r}")
    return Problem.parse(",".join(items)).mods


def layout_of(text: str) -> str:
    """--kv's layout, checked now (one line naming the flag), not once per point."""
    from attnbench.reference import layouts

    try:
        layouts.parse(text)
    except AttentionInputError as exc:
        raise AttentionInputError(f"--kv: {exc}") from None
    return text


def spec_and_options(args) -> tuple[SweepSpec, MeasureOptions, float]:
    """(SweepSpec, MeasureOptions, timeout) from parsed arguments; --quick changes only the unset defaults."""
    base = QUICK if args.quick else PERF
    decode = getattr(args, "decode", False)
    grid = DECODE if decode else base.spec
    kv_lens = getattr(args, "kv_lens", None) or (csv(DECODE.kv_lens) if decode else None)
    if kv_lens and args.kv_len:
        raise AttentionInputError("--kv-len sets one M; --kv-lens (or --decode) sweeps M: give one of them")
    causal = tuple(CAUSAL_WORDS[c] for c in words(args.causal, tuple(CAUSAL_WORDS), "causal"))
    for plugin in args.plugin:
        if not Path(plugin).is_file():
            raise AttentionInputError(f"--plugin: no file {plugin!r}")
    backends = tuple(b for b in args.backends.split(",") if b) if args.backends else None
    if args.quick and backends is None:
        backends = measurable_backends(args.device, tuple(str(Path(p).resolve()) for p in args.plugin))
    spec = SweepSpec(
        seq_lens=ints(args.seq_lens, "seq-lens") if args.seq_lens else grid.seq_lens, heads=ints(args.heads, "heads"),
        batch=ints(args.batch, "batch"), head_dims=ints(args.head_dim, "head-dim"),
        dtypes=words(args.dtype, DTYPES, "dtype"), causal=causal,
        passes=words(args.passes, PERF_PASSES, "pass") if args.passes else grid.passes,
        backends=backends, device=args.device, kv_len=args.kv_len, heads_at_n=getattr(args, "heads_at_n", None),
        kv_lens=ints(kv_lens, "kv-lens") if kv_lens else None, kv_heads=getattr(args, "kv_heads", None),
        mods=parse_mods(args.mods), kv=layout_of(getattr(args, "kv", "dense")), append=getattr(args, "append", 0),
        plugins=tuple(str(Path(p).resolve()) for p in args.plugin))
    if spec.kv_heads is not None and (spec.kv_heads < 1 or any(h % spec.kv_heads for h in spec.heads)):
        raise AttentionInputError(f"--kv-heads: {spec.kv_heads} must be >= 1 and divide every --heads value "
                                  f"({', '.join(map(str, spec.heads))})")
    for flag in ("kv_len", "heads_at_n"):
        if getattr(spec, flag) is not None and getattr(spec, flag) < 1:
            raise AttentionInputError(f"--{flag.replace('_', '-')}: expected an integer >= 1, "
                                      f"got {getattr(spec, flag)}")
    repeats = base.options.max_repeats if args.repeats is None else args.repeats
    if repeats < 1 or (args.time_budget is not None and args.time_budget < 0) or args.timeout <= 0:
        raise AttentionInputError("--repeats, --time-budget and --timeout must be positive")
    processes = args.processes or base.options.processes
    remeasure = base.options.remeasure if args.remeasure is None else args.remeasure
    if args.threads < 1 or processes < 1 or remeasure < 0:
        raise AttentionInputError("--threads and --processes must be >= 1, --remeasure >= 0")
    options = MeasureOptions(time_budget_s=base.options.time_budget_s if args.time_budget is None else args.time_budget,
                             min_repeats=min(base.options.min_repeats, repeats), max_repeats=repeats,
                             memory_cap=parse_bytes(args.memory_cap), threads=args.threads,
                             pin_cpus=cpus(args.pin_cpus) if args.pin_cpus else None,
                             processes=processes, remeasure=remeasure)
    return spec, options, args.timeout


def executor_of(args):
    """The executor `--executor`, `--address` and `--workers` ask for; bad combinations are input errors."""
    from .executors import make_executor

    if args.workers < 1:
        raise AttentionInputError(f"--workers: expected an integer >= 1, got {args.workers}")
    if args.executor != "ray" and args.address:
        raise AttentionInputError("--address needs --executor ray")
    if args.executor == "ray" and args.workers != 1:
        raise AttentionInputError("--workers is for the local executor; Ray schedules points on the cluster")
    try:
        return make_executor(args.executor, device=args.device, workers=args.workers, address=args.address)
    except (ValueError, ImportError, ConnectionError) as exc:
        raise AttentionInputError(f"--executor {args.executor}: {exc}") from None


def resumed_sweep(run_dir: Path, args) -> tuple[SweepSpec, MeasureOptions, float]:
    """The sweep saved in run_dir; a typed flag that would change it is an error (no silent second sweep)."""
    from .runner import load_spec

    saved = load_spec(run_dir)
    typed = explicit_values(getattr(args, "argv", []))
    if saved is None:                                            # a run from before spec.json: trust the flags
        print(f"attnbench: warning: {run_dir} has no spec.json; resuming with the flags given", file=sys.stderr)
        return spec_and_options(args)
    spec, options, timeout, saved_args = saved
    for dest, value in typed.items():
        if dest not in saved_args:
            raise AttentionInputError(f"--resume: {run_dir} was not started by `attnbench perf`; resume it "
                                      f"without sweep flags (got --{dest.replace('_', '-')})")
        if spec_and_options(argparse.Namespace(**{**saved_args, dest: value})) != (spec, options, timeout):
            raise AttentionInputError(f"--resume: --{dest.replace('_', '-')} {value} contradicts the sweep saved "
                                      f"in {run_dir} ({saved_args[dest]}); drop the flag or start a new run")
    return spec, options, timeout


def resume_command(run_dir: Path) -> str:
    return f"attnbench perf --resume {shlex.quote(str(run_dir))}"


def finish(run_dir: Path, allow_failures: bool, log=print, *, points: bool = False) -> int:
    """Render the report, print the summary (with `points`, every point first: `attnbench run`); exit 1 if a
    point errored, was inaccurate or implausible (unless allowed)."""
    from . import records
    from .analysis import failing
    from .report import RUN_COLUMNS, columns, format_summary, points_table, render, text_table

    results = records.read(Path(run_dir) / "results.jsonl")
    render(run_dir, results)
    if points:
        log(text_table(columns(points_table(results), RUN_COLUMNS)))
    log("\n" + format_summary(results))
    log(f"report written to {run_dir}")
    bad = failing(results)
    if bad and not allow_failures:
        log(f"exit 1: {len(bad)} points errored, were inaccurate or implausible (--allow-failures to exit 0)")
        return 1
    return 0


def interrupted(exc) -> int:
    """Ctrl-C: render what was measured, print the command that continues the sweep; exit 130 like a shell."""
    from .report import render

    print(f"\ninterrupted: {exc.done} of {exc.total} points recorded in {exc.run_dir}", file=sys.stderr)
    try:
        if not (exc.run_dir / "results.jsonl").exists():
            # Ctrl-C during the first point: nothing to render (reading the missing file was a traceback).
            raise AttentionInputError("no point was recorded yet")
        render(exc.run_dir)
        print(f"partial report written to {exc.run_dir / 'report.html'}", file=sys.stderr)
    except AttentionInputError as why:
        print(f"no partial report: {why}", file=sys.stderr)
    print(f"continue with: {resume_command(exc.run_dir)}", file=sys.stderr)
    return 130


def run_perf(args) -> int:
    from .runner import Interrupted, new_run_dir, run_sweep
    from .spec import expand

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "results.jsonl").exists() and not (run_dir / "spec.json").exists():
            raise AttentionInputError(f"--resume: no results.jsonl in {run_dir}")
        spec, options, timeout = resumed_sweep(run_dir, args)
    else:
        spec, options, timeout = spec_and_options(args)
    require_device(spec.device)                                  # before any work or run directory
    plan = expand(spec)                                          # unknown backend etc.: fail before making a dir
    executor = executor_of(args)
    run_dir = run_dir if args.resume else new_run_dir(Path(args.out))
    print(f"attnbench perf: writing {run_dir}", file=sys.stderr)
    try:
        run_sweep(spec, run_dir, options, timeout_s=timeout, executor=executor,
                  args=None if args.resume else sweep_values(args), plan=plan)
    except Interrupted as exc:
        return interrupted(exc)
    return finish(run_dir, args.allow_failures)


def run_main_job(args) -> int:
    """`attnbench run`: the main job on --device, its report, the summary and the exit code."""
    from .runner import Interrupted

    require_device(args.device)                                  # before any work or run directory
    try:
        run_dir = main_job(Path(args.out), device=args.device)
    except Interrupted as exc:
        return interrupted(exc)
    return finish(run_dir, args.allow_failures, points=True)


def run_report(args) -> int:
    from .report import render

    if not (Path(args.dir) / "results.jsonl").exists():
        raise AttentionInputError(f"report: no results.jsonl in {args.dir}")
    for path in render(Path(args.dir)):
        print(path)
    return 0


def main_job(out_dir: Path, device: str = "cpu", spec: SweepSpec = RUN.spec,
             options: MeasureOptions = RUN.options, log=print) -> Path:
    """`attnbench run`, the README's main job: every available backend checked against the float64 reference
    and timed on a few sizes (spec.RUN, about a minute on a 2-core CPU) through the same sweep and worker as
    `attnbench perf`. Returns the run directory; `finish` renders its report."""
    from .runner import new_run_dir, run_sweep

    run_dir = new_run_dir(Path(out_dir))
    # Like --quick, the main job leaves out backends simulated on this device (7 of its 9.5 min went to timing
    # triton_blockwise under the Triton interpreter); conformance still checks them, `perf --backends` times them.
    backends = spec.backends if spec.backends is not None else measurable_backends(device, spec.plugins)
    run_sweep(dataclasses.replace(spec, device=device, backends=backends), run_dir, options,
              timeout_s=RUN.timeout_s, log=log)
    return run_dir


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("old", help="run directory (reports/run-...), or with --interleaved backend A")
    p.add_argument("new", help="run directory, or with --interleaved backend B")
    p.add_argument("--threshold", type=float, default=REGRESSION_THRESHOLD, help="slowdown ratio that counts")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="compare runs measured on different machines, threads, torch or options (warns)")
    ab = p.add_argument_group("interleaved A/B (the stable gate on a shared machine)")
    ab.add_argument("--interleaved", action="store_true",
                    help="time backends OLD and NEW alternately in the same worker, in fresh processes")
    spec, options = INTERLEAVED.spec, INTERLEAVED.options
    ab.add_argument("--seq-lens", default=csv(spec.seq_lens), help="N values")
    ab.add_argument("--heads", default=csv(spec.heads), help="H values")
    ab.add_argument("--head-dim", default=csv(spec.head_dims), help="D values")
    ab.add_argument("--dtype", default=csv(spec.dtypes), help="dtypes")
    ab.add_argument("--causal", default="none", help="none, top_left, bottom_right")
    ab.add_argument("--pass", dest="passes", default=csv(spec.passes), help="fwd, fwd+bwd")
    ab.add_argument("--device", default=spec.device, choices=["cpu", "cuda"], help="device to time on")
    ab.add_argument("--threads", type=int, default=options.threads, help="torch/BLAS threads in the worker")
    ab.add_argument("--processes", type=int, default=options.processes, help="fresh processes per point")
    ab.add_argument("--time-budget", type=float, default=options.time_budget_s,
                    help="seconds of timed pairs per process")
    ab.add_argument("--timeout", type=float, default=INTERLEAVED.timeout_s, help="seconds per process")
    ab.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                    help="a module file registering extra backends (e.g. a second install under another name)")


def run_compare(args) -> int:
    if args.threshold < 1:
        raise AttentionInputError(f"--threshold: expected a ratio >= 1, got {args.threshold}")
    if args.interleaved:
        return run_interleaved(args)
    from .compare import compare_runs, format_changes

    changes, unmatched, warnings = compare_runs(Path(args.old), Path(args.new), args.threshold,
                                                allow_mismatch=args.allow_mismatch)
    for w in warnings:
        print(w, file=sys.stderr)
    if not changes:
        raise AttentionInputError(f"compare: no point is ok in both {args.old} and {args.new}")
    print(format_changes(changes, unmatched, args.threshold))
    return 1 if any(c.regression for c in changes) else 0


def _pair_cases(args):
    from .spec import expand

    for plugin in args.plugin:
        if not Path(plugin).is_file():
            raise AttentionInputError(f"--plugin: no file {plugin!r}")
    if args.processes < 2 or args.threads < 1 or args.time_budget <= 0:
        raise AttentionInputError("--processes must be >= 2, --threads >= 1, --time-budget > 0")
    grid = dict(seq_lens=ints(args.seq_lens, "seq-lens"), heads=ints(args.heads, "heads"),
                head_dims=ints(args.head_dim, "head-dim"), dtypes=words(args.dtype, DTYPES, "dtype"),
                causal=tuple(CAUSAL_WORDS[c] for c in words(args.causal, tuple(CAUSAL_WORDS), "causal")),
                passes=words(args.passes, PERF_PASSES, "pass"), device=args.device,
                plugins=tuple(str(Path(p).resolve()) for p in args.plugin))
    cases_a, skipped_a = expand(SweepSpec(backends=(args.old,), **grid))
    cases_b, skipped_b = expand(SweepSpec(backends=(args.new,), **grid))
    b_by_point = {(c.problem, c.pass_): c for c in cases_b}
    pairs = [(a, b_by_point[(a.problem, a.pass_)]) for a in cases_a if (a.problem, a.pass_) in b_by_point]
    if not pairs:
        reasons = {r for _, r in skipped_a + skipped_b}
        raise AttentionInputError(f"compare --interleaved: no point both backends run ({'; '.join(reasons)})")
    return pairs


def run_interleaved(args) -> int:
    from attnbench.implementations import get_backend

    from .compare import format_pairs, judge, pair_result
    from .worker import run_pair

    pairs = _pair_cases(args)
    options = dataclasses.replace(INTERLEAVED.options, time_budget_s=args.time_budget, threads=args.threads,
                                  processes=args.processes)
    results = []
    for i, (a, b) in enumerate(pairs):
        print(f"[{i + 1}/{len(pairs)}] {a.pass_} {a.problem.id}", file=sys.stderr, flush=True)
        caps = tuple(get_backend(c.backend).capabilities(c.device) for c in (a, b))
        status, runs = run_pair(a, b, options, args.timeout, caps=caps)
        if status != "ok":
            raise AttentionInputError(f"compare --interleaved: {a.problem.id}: {status}: {runs.get('message', '')}")
        results.append(pair_result(f"{a.pass_}|{a.problem.spec()}", runs))
    judged = judge(results, args.threshold)
    print(format_pairs(judged, args.old, args.new, args.threshold))
    return 1 if any(r.regression for r in judged) else 0
