"""Stage 1, spec and profiles: what to measure and how hard. Every named sweep and every perf default is here.

In: a profile (below) or the command line's values (commands.py). Out: a frozen `SweepSpec` (the grid), frozen
`MeasureOptions` (how hard each point is timed) and a timeout; `expand` turns the spec into frozen `Case`s, one
per measured point, and (case, reason) skips for the combinations a backend does not declare, so the report
lists them, never silently dropped. The runner (runner.py) measures the cases.

The sweeps differ on purpose (a look, a record, the README's main job, a memory scan, a GPU bench, an A/B
gate), so each is a `Profile` named for what it is for; the modules that run them take it from here. Dtypes
come from where they are defined for every suite (`attnbench.problem.DTYPES`, `attnbench.precision`),
causal alignments from `attnbench.reference.CAUSAL_ALIGNMENTS`.

Shape letters: B batch, H heads, Hkv key/value heads, N queries, M keys, D head dim.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass, field

from attnbench.problem import Problem
from attnbench.reference import AttentionInputError

PERF_PASSES = ("fwd", "fwd+bwd")
# Seconds of timed repeats per fresh process, after warm-up, unless a profile says otherwise.
TIME_BUDGET_S = 0.5
# Seconds one point (one fresh worker process) may run before it is recorded as a timeout.
POINT_TIMEOUT_S = 120.0
LONG_POINT_TIMEOUT_S = 600.0      # sizes where one point takes minutes: the GPU bench, the memory scan, by hand
# `attnbench compare`: the slowdown (new/old time) that counts as a regression when it is significant.
REGRESSION_THRESHOLD = 1.10


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
    # KV layout and appended keys of every point (`attnbench.reference.layouts`): --kv, --append.
    kv: str = "dense"
    append: int = 0

    def problems(self) -> list[Problem]:
        """Every Problem of the grid, N (or, with kv_lens, M) fastest-varying so a backend's curve is measured
        together."""
        rest = (self.head_dims, self.dtypes, self.causal)
        if self.kv_lens is not None:
            grid = itertools.product(self.batch, self.heads, *rest, self.seq_lens, self.kv_lens)
            return [Problem(B=b, H=h, Hkv=self.kv_heads or h, D=d, dtype=dt, causal=c, N=n, M=m, mods=self.mods,
                            kv=self.kv, append=self.append)
                    for b, h, d, dt, c, n, m in grid]
        if self.heads_at_n is None:
            grid = list(itertools.product(self.batch, self.heads, *rest, self.seq_lens))
        else:
            grid = [*itertools.product(self.batch, self.heads[:1], *rest, self.seq_lens),
                    *itertools.product(self.batch, self.heads[1:], *rest, (self.heads_at_n,))]
        return [Problem(B=b, H=h, D=d, dtype=dt, causal=c, N=n, M=self.kv_len or n, mods=self.mods, kv=self.kv,
                        append=self.append)
                for b, h, d, dt, c, n in grid]


@dataclass(frozen=True)
class MeasureOptions:
    """How to measure a point.

    time_budget_s / min_repeats / max_repeats: timed repeats per fresh process;
    warmup: the fewest warm-up calls (more until the time settles);
    memory_cap: bytes one call may allocate (None: no cap);
    threads: torch/BLAS threads in the worker (None: leave torch's default);
    pin_cpus: CPUs the worker is pinned to (None: no pinning);
    processes: fresh processes per point, so its interval describes reruns;
    remeasure: how many times a noisy point is measured again before it is flagged;
    keep_freed_memory: glibc keeps freed memory (steady state, no per-call page faults).
    """

    time_budget_s: float = TIME_BUDGET_S
    min_repeats: int = 5
    max_repeats: int = 50
    warmup: int = 1
    memory_cap: int | None = None
    threads: int | None = 1
    pin_cpus: tuple[int, ...] | None = None
    processes: int = 3
    remeasure: int = 1
    keep_freed_memory: bool = True


@dataclass(frozen=True)
class Profile:
    """A named sweep: its grid, how hard each point is measured, and how long one point may run."""

    spec: SweepSpec
    options: MeasureOptions
    timeout_s: float = POINT_TIMEOUT_S


# `attnbench perf`: a record; MeasureOptions' defaults otherwise (three processes a point, a noisy point
# measured once more).
PERF = Profile(SweepSpec(seq_lens=(256, 512, 1024, 2048), passes=PERF_PASSES), MeasureOptions(time_budget_s=0.3))
# `attnbench perf --quick`: a look, not a record: no re-measuring (noisy points are still flagged) and no
# simulated backends.
QUICK = Profile(SweepSpec(seq_lens=(128, 256, 512), passes=("fwd",)),
                MeasureOptions(time_budget_s=0.1, max_repeats=20, processes=2, remeasure=0))
# `attnbench perf --decode`: a few new queries against a KV cache swept over M (the memory-bound regime; GB/s,
# not TFLOP/s). It changes the grid of PERF or QUICK, not how hard points are measured.
DECODE = SweepSpec(seq_lens=(1,), kv_lens=(4096, 16384, 32768, 65536), passes=("fwd",))
# `attnbench run`: the README's main job, about a minute on a 2-core CPU. An N curve at H 4, and H 2 and 8 at
# N 256 for the time-vs-H plot (two points more per backend).
RUN = Profile(SweepSpec(seq_lens=(256, 512, 1024), heads=(4, 2, 8), heads_at_n=256, passes=("fwd",)),
              MeasureOptions(time_budget_s=0.2, max_repeats=20))
# `attnbench compare --interleaved`: the default budget of A/B pairs per process, in the default three
# processes (the t-test needs two at least).
INTERLEAVED = Profile(SweepSpec(seq_lens=(256, 1024), passes=("fwd",)), MeasureOptions(max_repeats=1000))
# `python -m attnbench.perf.tools memory-scan`: peak memory of one forward, torch_blockwise (an (N, block) tile)
# against torch_eager (two (B, H, N, N) float32 buffers: 8 GiB at N 16384 fits the cap, more would be oom).
# Memory is what it is for: one timed call is enough.
MEMORY_SCAN = Profile(SweepSpec(seq_lens=(2048, 4096, 8192, 16384), heads=(4,), head_dims=(64,),
                                backends=("torch_blockwise", "torch_eager")),
                      MeasureOptions(time_budget_s=0.0, min_repeats=1, max_repeats=1, memory_cap=16 * 2 ** 30),
                      LONG_POINT_TIMEOUT_S)
# `python -m attnbench.perf.tools gpu-bench`: triton_blockwise against SDPA's flash kernel on CUDA, bfloat16,
# N 1k..16k at H 16, D 64 and 128, causal and not.
GPU_BENCH = Profile(SweepSpec(seq_lens=(1024, 2048, 4096, 8192, 16384), heads=(16,), head_dims=(64, 128),
                              dtypes=("bfloat16",), causal=(None, "top_left"), passes=PERF_PASSES,
                              backends=("triton_blockwise", "torch_sdpa_flash"), device="cuda"),
                    MeasureOptions(min_repeats=10, max_repeats=100), LONG_POINT_TIMEOUT_S)


def with_grid(profile: Profile, **spec_changes) -> Profile:
    """`profile` with some of its grid changed (a command line's --seq-lens, --dtype, --device)."""
    return dataclasses.replace(profile, spec=dataclasses.replace(profile.spec, **spec_changes))


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
