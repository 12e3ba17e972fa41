"""Stage 2, execution: run a sweep. The spec's cases (expanded once), each measured in isolation by an executor,
each record appended as it completes, progress and ETA shown.

In: a `SweepSpec` (or its expanded cases), `MeasureOptions`, a timeout, a run directory. Out: run_dir/results.jsonl
(records.py), machine.json (the machine's peaks, machine.py) and spec.json.

The run directory is locked for the whole sweep (`writer_lock`) and its spec saved (`save_or_check_spec`):
spec.json holds the SweepSpec, the MeasureOptions, the timeout and the command-line values that produced them,
so `attnbench perf --resume DIR` continues exactly that sweep; a flag that would change it is an error, not a
second sweep mixed into the same results.jsonl. The lock (`DIR/.lock`, an flock held for the whole sweep) keeps
two processes from measuring the remaining points of one run twice.

Ctrl-C cancels the executor, ends the worker of the point in progress and raises `Interrupted`, every point
measured before it already on disk.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from attnbench.reference import AttentionInputError

from . import records
from .executors import PointJob, SerialExecutor
from .machine import measure_machine, same_machine
from .records import PointResult
from .spec import POINT_TIMEOUT_S, Case, MeasureOptions, SweepSpec, expand


SPEC_FILE = "spec.json"


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def spec_to_json(spec: SweepSpec, options: MeasureOptions, timeout_s: float, args: dict | None = None) -> str:
    return json.dumps({"spec": dataclasses.asdict(spec), "options": dataclasses.asdict(options),
                       "timeout_s": timeout_s, "args": args or {}}, indent=2) + "\n"


def load_spec(run_dir: Path) -> tuple[SweepSpec, MeasureOptions, float, dict] | None:
    """(spec, options, timeout, command-line values) saved in run_dir; None for a run without spec.json."""
    path = Path(run_dir) / SPEC_FILE
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(MeasureOptions)}
    options = MeasureOptions(**{k: v for k, v in d["options"].items() if k in known})
    return SweepSpec(**_tuples(d["spec"])), options, d["timeout_s"], d.get("args", {})


def save_or_check_spec(run_dir: Path, spec: SweepSpec, options: MeasureOptions, timeout_s: float,
                       args: dict | None = None) -> None:
    """Write spec.json for a new run; for a run that has one, refuse a different sweep."""
    saved = load_spec(run_dir)
    if saved is None:
        (Path(run_dir) / SPEC_FILE).write_text(spec_to_json(spec, options, timeout_s, args))
        return
    if saved[0] != spec:
        changed = [f.name for f in dataclasses.fields(SweepSpec)
                   if getattr(saved[0], f.name) != getattr(spec, f.name)]
        raise AttentionInputError(f"{run_dir} holds a different sweep ({', '.join(changed)} differ); "
                                  f"resume it as saved or start a new run")


@contextmanager
def writer_lock(run_dir: Path):
    """Hold run_dir/.lock for the block; a second writer gets a one-line error instead of duplicate points."""
    path = Path(run_dir) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise AttentionInputError(f"{run_dir} is being measured by another attnbench process (pid {holder}); "
                                      f"wait for it to finish, then --resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)                                             # closing releases the flock


class Interrupted(Exception):
    """Ctrl-C during a sweep: `done` of `total` points are recorded in `run_dir`."""

    def __init__(self, run_dir: Path, done: int, total: int):
        super().__init__(f"interrupted after {done} of {total} points")
        self.run_dir, self.done, self.total = run_dir, done, total


def new_run_dir(out: Path) -> Path:
    """reports/run-YYYYmmdd-HHMMSS (a numeric suffix if taken)."""
    base = Path(out) / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir, i = base, 1
    while run_dir.exists():
        run_dir, i = Path(f"{base}-{i}"), i + 1
    run_dir.mkdir(parents=True)
    return run_dir


def machine_info(run_dir: Path, spec: SweepSpec, threads: int | None = None) -> dict:
    """machine.json of the run: measured once, reused on resume."""
    path = run_dir / "machine.json"
    if path.exists():
        return json.loads(path.read_text())
    info = measure_machine(spec.device, spec.dtypes, threads=threads)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _end_workers() -> None:
    """Kill the worker of the point in progress (it may not have seen the Ctrl-C) and reap it."""
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)


class _Progress:
    """A tqdm bar with ETA on a terminal; one plain line per point otherwise (logs, CI, tests)."""

    def __init__(self, total: int, log, enabled: bool):
        self.log, self.enabled, self.total, self.start_s = log, enabled, total, time.perf_counter()
        self.bar = tqdm(total=total, unit="pt", file=sys.stderr, dynamic_ncols=True, disable=not enabled)

    def start(self, i: int, done: int, case: Case) -> None:
        text = f"{case.backend} {case.pass_} {case.problem.id}"
        if self.enabled:
            self.bar.set_postfix_str(text, refresh=True)
            return
        elapsed = time.perf_counter() - self.start_s
        eta = tqdm.format_interval(elapsed / done * (self.total - done)) if done else "?"
        self.log(f"[{i + 1}/{self.total}] {text}  elapsed {tqdm.format_interval(elapsed)}  ETA {eta}")

    def done(self, case: Case, status: str, message: str) -> None:
        self.bar.update(1)
        if status != "ok":
            (self.bar.write if self.enabled else self.log)(f"    -> {case.backend} {case.problem.id}: {status}: "
                                                           f"{message}")

    def close(self) -> None:
        self.bar.close()


def with_peaks(measured_by: dict, known: dict) -> dict:
    """The record's machine: the measuring worker's own, with the peaks of `known` if it is the same machine."""
    if "peak_flops" in measured_by or not same_machine(measured_by, known):
        return measured_by
    return {**known, **measured_by}


def run_sweep(spec: SweepSpec, run_dir: Path, options: MeasureOptions, *, timeout_s: float = POINT_TIMEOUT_S,
              executor=None, log=lambda line: print(line, file=sys.stderr, flush=True), args: dict | None = None,
              progress_bar: bool | None = None, plan: tuple | None = None) -> Path:
    """Measure every case of `spec` not already in run_dir/results.jsonl; returns the results path.

    plan: `expand(spec)` if the caller has it already (the CLI expands first, to refuse a bad sweep before
    it makes a run directory), so a sweep is expanded once.

    executor: who measures the points (executors.py; default one at a time here). Points are
    appended as they complete, by this process alone, which holds run_dir's lock meanwhile.
    Raises AttentionInputError if another process holds the run or it holds a different sweep,
    and `Interrupted` on Ctrl-C. args: the command-line values saved in spec.json; progress_bar
    None: a bar when stderr is a terminal.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    executor = executor or SerialExecutor()
    try:
        with writer_lock(run_dir):
            save_or_check_spec(run_dir, spec, options, timeout_s, args)
            return _measure_remaining(plan or expand(spec), spec, run_dir, options, timeout_s, executor, log,
                                      sys.stderr.isatty() if progress_bar is None else progress_bar)
    finally:
        executor.close()


def _measure_remaining(plan, spec, run_dir, options, timeout_s, executor, log, bar) -> Path:
    from attnbench.implementations import get_backend

    path = run_dir / "results.jsonl"
    cases, skipped = plan
    done = records.done_keys(path)
    machine = machine_info(run_dir, spec, options.threads)
    for case, reason in skipped:
        if case.key not in done:
            records.append(path, PointResult(**records.base_fields(case), status="skipped", message=reason))
    if skipped and not cases:          # nothing to time: say why here, not only in the report (a causal-only kernel
        reasons = sorted({f"{case.backend}: {reason}" for case, reason in skipped})    # under the default --causal none)
        log(f"every point is a skip (not declared by the backend): {'; '.join(reasons[:3])}"
            + (f"; {len(reasons) - 3} more reasons in the report" if len(reasons) > 3 else ""))
    todo = [c for c in cases if c.key not in done]
    if len(todo) < len(cases):
        log(f"resume: {len(cases) - len(todo)} of {len(cases)} points already in {path}")
    jobs = iter(PointJob(c, options, timeout_s, dataclasses.asdict(get_backend(c.backend).capabilities(c.device)))
                for c in todo)
    start, finished, pending = time.perf_counter(), 0, {}
    progress = _Progress(len(todo), log, bar)
    try:
        while True:
            while len(pending) < executor.slots and (job := next(jobs, None)) is not None:
                progress.start(finished + len(pending), finished, job.case)
                pending[executor.submit(job)] = job.case
            if not pending:
                break
            completed = set()
            while not completed:               # in slices: a Ctrl-C handed to another thread is raised here (`_poll`)
                completed, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in completed:
                case, outcome = pending.pop(future), future.result()
                if outcome.fields.get("message", "").startswith("KeyboardInterrupt"):
                    raise KeyboardInterrupt                      # the worker saw the terminal's Ctrl-C first
                records.append(path, records.result_of(case, outcome.status, outcome.fields,
                                               with_peaks(outcome.machine, machine)))
                finished += 1
                noise = outcome.fields.get("noise", {}) if outcome.fields.get("noisy") else None
                progress.done(case, "NOISY" if noise else outcome.status,   # noisy: shown like a failure
                              f"after {noise['attempts']} attempts: {'; '.join(noise['reasons'])}" if noise
                              else outcome.fields.get("message", ""))
    except KeyboardInterrupt:
        executor.cancel()                                        # stop what is in flight; records stay
        _end_workers()
        progress.close()
        raise Interrupted(run_dir, len(cases) - len(todo) + finished, len(cases)) from None
    except BaseException:
        executor.cancel()
        raise
    progress.close()
    log(f"{len(todo)} points in {time.perf_counter() - start:.0f} s -> {path}")
    return path
