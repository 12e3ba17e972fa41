"""Declarative sweeps: a frozen `SweepSpec` expands into frozen `Case`s, one per measured point.

A case is one attnbench `Problem` plus the pass ("fwd" or "fwd+bwd"), the backend
name and the device. Combinations a backend does not declare are returned as
(case, reason) skips so the report can list them, never silently dropped.

Shape letters: B batch, H heads, N queries, M keys, D head dim.
"""
from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field

from attnbench.problem import Problem
from attnbench.reference import AttentionInputError

PERF_PASSES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Case:
    """One point: `backend` running `problem` (pass `pass_`) on `device`.

    `plugins` are backend module files the worker imports before looking the
    backend up: a backend registered only in the parent (a test's) is otherwise
    invisible in the fresh worker process.
    """

    backend: str
    problem: Problem
    pass_: str = "fwd"
    device: str = "cpu"
    plugins: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """What identifies a point across runs (resume, compare): backend, device, pass and the problem spec."""
        return f"{self.backend}|{self.device}|{self.pass_}|{self.problem.spec()}"

    def to_json(self) -> str:
        return json.dumps({"backend": self.backend, "problem": self.problem.spec(), "pass": self.pass_,
                           "device": self.device, "plugins": list(self.plugins)})

    @classmethod
    def from_json(cls, text: str) -> "Case":
        d = json.loads(text)
        return cls(d["backend"], Problem.parse(d["problem"]), d["pass"], d["device"], tuple(d["plugins"]))


@dataclass(frozen=True)
class SweepSpec:
    """The grid: every combination of the tuples below, for each backend (None: every registered one).

    seq_lens are N; M = N unless `kv_len` is given. causal entries are None,
    "top_left" or "bottom_right". With `heads_at_n` set, the N curve is swept at
    heads[0] only and the other heads only at N = heads_at_n: a time-vs-H curve
    for a few points instead of the whole N x H grid.
    """

    seq_lens: tuple[int, ...] = (256, 512, 1024, 2048)
    heads: tuple[int, ...] = (4,)
    batch: tuple[int, ...] = (1,)
    head_dims: tuple[int, ...] = (64,)
    dtypes: tuple[str, ...] = ("float32",)
    causal: tuple[str | None, ...] = (None,)
    passes: tuple[str, ...] = ("fwd",)
    backends: tuple[str, ...] | None = None
    device: str = "cpu"
    kv_len: int | None = None
    plugins: tuple[str, ...] = field(default=())
    heads_at_n: int | None = None
    mods: tuple = ()            # modifications every problem carries (`attnbench.reference.mods`): --mods
    # The decode regime (--decode): M swept over kv_lens at each (small) N of seq_lens, M fastest-varying;
    # kv_heads: Hkv of every point (None: H, no grouping).
    kv_lens: tuple[int, ...] | None = None
    kv_heads: int | None = None

    def problems(self) -> list[Problem]:
        """Every Problem of the grid, N (or, with kv_lens, M) fastest-varying so a backend's curve is measured
        together."""
        rest = (self.head_dims, self.dtypes, self.causal)
        if self.kv_lens is not None:
            grid = itertools.product(self.batch, self.heads, *rest, self.seq_lens, self.kv_lens)
            return [Problem(B=b, H=h, Hkv=self.kv_heads or h, D=d, dtype=dt, causal=c, N=n, M=m, mods=self.mods)
                    for b, h, d, dt, c, n, m in grid]
        if self.heads_at_n is None:
            grid = list(itertools.product(self.batch, self.heads, *rest, self.seq_lens))
        else:
            grid = [*itertools.product(self.batch, self.heads[:1], *rest, self.seq_lens),
                    *itertools.product(self.batch, self.heads[1:], *rest, (self.heads_at_n,))]
        return [Problem(B=b, H=h, D=d, dtype=dt, causal=c, N=n, M=self.kv_len or n, mods=self.mods)
                for b, h, d, dt, c, n in grid]


def load_plugins(paths) -> None:
    """`attnbench.implementations.registry.load_plugins`, imported when called: the CLI builds its parser from
    this module, and the registry's import pulls in torch."""
    from attnbench.implementations.registry import load_plugins as load

    load(paths)


def expand(spec: SweepSpec) -> tuple[list[Case], list[tuple[Case, str]]]:
    """(cases to measure, (case, reason) skipped) for `spec`, backends in name order."""
    from attnbench.implementations import all_backends, get_backend

    load_plugins(spec.plugins)
    backends = [get_backend(n) for n in spec.backends] if spec.backends else all_backends()
    bad = [p for p in spec.passes if p not in PERF_PASSES]
    if bad:
        raise AttentionInputError(f"pass must be one of {PERF_PASSES}, got {bad[0]!r}")
    cases, skipped = [], []
    for backend in backends:
        for pass_ in spec.passes:
            for problem in spec.problems():
                case = Case(backend.name, problem, pass_, spec.device, spec.plugins)
                reason = backend.why_not(problem, spec.device, need_grad=pass_ != "fwd")
                (skipped.append((case, reason)) if reason else cases.append(case))
    return cases, skipped


def measurable_backends(device: str, plugins: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every registered backend (--plugin files' included) but those simulated on `device`: their times say
    nothing about a kernel and take minutes under a simulator. Says on stderr which were left out, and how to
    time them anyway. `perf --quick` and `attnbench run` sweep these; conformance still checks the others."""
    from attnbench.implementations import all_backends

    load_plugins(plugins)
    backends = all_backends()
    left_out = [f"{b.name} ({b.simulated_reason(device)})" for b in backends if b.simulated_reason(device)]
    if left_out:
        print(f"attnbench: leaves out {', '.join(left_out)}; time it with `attnbench perf --backends NAME`",
              file=sys.stderr)
    return tuple(b.name for b in backends if not b.simulated_reason(device))
