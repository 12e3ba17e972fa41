"""`attnbench compare`: two recorded runs, or two backends timed alternately (--interleaved), as regressions.

A user mistake raises AttentionInputError (the CLI prints one line and exits 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from attnbench.problem import DTYPES
from attnbench.reference import AttentionInputError

from .cli_perf import CAUSAL_WORDS, csv, ints, words
from .spec import INTERLEAVED, PERF_PASSES, SweepSpec


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("old", help="run directory (reports/run-...), or with --interleaved backend A")
    p.add_argument("new", help="run directory, or with --interleaved backend B")
    p.add_argument("--threshold", type=float, default=1.10, help="slowdown ratio that counts")
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

    from .interleave import format_pairs, judge, pair_result
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
