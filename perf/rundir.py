"""A run directory's own description and guard: the sweep it measures (spec.json) and a writer's lock.

spec.json holds the SweepSpec, the MeasureOptions, the timeout and the command-line
values that produced them, so `attnbench perf --resume DIR` continues exactly
that sweep; a flag that would change it is an error, not a second sweep mixed
into the same results.jsonl.

The lock (`DIR/.lock`, an flock held for the whole sweep) keeps two processes
from measuring the remaining points of one run twice.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from attnbench.reference import AttentionInputError

from .spec import MeasureOptions, SweepSpec

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
