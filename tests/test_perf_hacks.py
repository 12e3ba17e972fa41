"""A kernel cannot fake its speed: perf flags every reward hack of plugins/hack_mutants.py and no correct backend.

One tiny sweep (N 512, H 2, D 16, float32, CPU, 2 processes of 5 timed calls, fwd and fwd+bwd) holds every
hack that runs here beside three correct backends, loaded with `--plugin` as an author would load them. Each
hack must come out implausible (beyond the roofline) or inaccurate (a timed call wrong) and never fastest;
the perf mutation score is printed in the terminal summary like the conformance one. The CUDA-only hack
(side stream) is listed as not run on a machine without CUDA.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from attnbench.implementations import registry
from attnbench.perf import integrity, records
from attnbench.perf.analysis import fastest_rows, problem_rows, suspicious
from attnbench.perf.spec import load_plugins
from attnbench.perf.measure import time_callable

from perf_helpers import perf, synthetic

HACK_FILE = Path(__file__).resolve().parent / "plugins" / "hack_mutants.py"
CORRECT = ("torch_eager", "torch_sdpa_flash", "numpy")
FLAGS = ("implausible", "inaccurate")


def flag(r) -> str | None:
    """How perf flagged a point: implausible, inaccurate, or None (trusted or otherwise failed)."""
    if r.status == "implausible":
        return "implausible"
    return "inaccurate" if r.status == "ok" and r.accurate is False else None


@contextlib.contextmanager
def hacks_registered():
    """Every hack registered (as `--plugin` does in the sweep's process) for the block; yields their names.
    The registry is left as it was."""
    registry.discover()                                              # the built-in backends are not the plugin's
    saved = dict(registry._BACKENDS)
    try:
        load_plugins([str(HACK_FILE)])                               # once per process, the sweep's too
        yield sorted(name for name in registry._BACKENDS if name not in saved)
    finally:
        registry._BACKENDS.clear()
        registry._BACKENDS.update(saved)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(records of the sweep, every hack's name, {hack: why it did not run here})."""
    with hacks_registered() as hacks:
        not_run = {name: registry._BACKENDS[name].device_unavailable_reason("cpu") for name in hacks}
        not_run = {name: why for name, why in not_run.items() if why}
        runnable = [name for name in hacks if name not in not_run]
        code, run_dir = perf(tmp_path_factory.mktemp("hacks"), "--plugin", str(HACK_FILE), "--seq-lens", "512",
                             "--pass", "fwd,fwd+bwd", "--backends", ",".join([*runnable, *CORRECT]))
    assert code == 1                                                 # implausible and inaccurate points fail
    return [r for r in records.read(run_dir / "results.jsonl") if r.status != "skipped"], hacks, not_run


def score_table(results, not_run: dict) -> str:
    hacks = sorted({r.backend for r in results if r.backend.startswith("hack_")})
    lines, flagged = [], 0
    for name in hacks:
        points = [r for r in results if r.backend == name]
        caught = all(flag(r) for r in points)
        flagged += caught
        how = ", ".join(f"{r.pass_} {flag(r) or 'NOT FLAGGED (' + r.status + ')'}" for r in points)
        lines.append(f"  {name:28s} {'flagged' if caught else 'SURVIVED':9s} {how}")
    lines += [f"  {name:28s} not run   {why}" for name, why in sorted(not_run.items())]
    return "\n".join([f"perf mutation score: {flagged}/{len(hacks)} flagged", *lines])


def test_every_hack_is_flagged_and_never_fastest(sweep, record_property):
    results, names, not_run = sweep
    record_property("summary", score_table(results, not_run))       # printed by the root conftest
    hacks = [r for r in results if r.backend in names]
    assert len(names) >= 6 and {r.backend for r in hacks} == set(names) - set(not_run)
    unflagged = [(r.backend, r.pass_, r.status, r.message) for r in hacks if flag(r) not in FLAGS]
    assert not unflagged, f"hacks perf trusted:\n{score_table(results, not_run)}"
    ranked = {row[7].split()[0] for row in fastest_rows(results)[1:]}
    assert not ranked & {r.backend for r in hacks}, ranked
    # Each flag says why: the roofline's numbers, or which timed call was wrong.
    for r in hacks:
        assert ("roofline" in r.message) if r.status == "implausible" else ("timed call" in r.message), r.message
    # The hack that only does less work is caught by its timed calls alone, gradients included.
    half = {r.pass_: r for r in hacks if r.backend == "hack_half_keys_after_two"}
    assert set(half) == {"fwd", "fwd+bwd"} and all(r.status == "ok" and r.accurate is False for r in half.values())
    assert "dq" in half["fwd+bwd"].message or "dk" in half["fwd+bwd"].message or "dv" in half["fwd+bwd"].message
    # A cached or reused output is memory the caller still held.
    for name in ("hack_cache_on_address", "hack_reused_buffer"):
        assert all(r.integrity["reused_storage"] for r in hacks if r.backend == name), name


def test_correct_backends_are_not_flagged(sweep):
    results, _, _ = sweep
    correct = [r for r in results if r.backend in CORRECT]
    assert {r.backend for r in correct} == set(CORRECT)
    for r in correct:
        assert r.status == "ok" and r.accurate is True, (r.backend, r.pass_, r.status, r.message)
        i = r.integrity
        assert i["input_sets"] == integrity.INPUT_SETS and i["timed_calls_checked"] >= 2 * 2, i
        assert i["failure"] is None and i["reused_storage"] is None and i["aliases_input"] is None, i
    assert not set(suspicious(correct))
    assert {row[7] for row in fastest_rows(correct)[1:]} <= set(CORRECT)


@pytest.mark.parametrize("n, checked", [(0, []), (1, [0]), (2, [0, 1]), (3, [0, 1, 2]), (33, [0, 16, 32]),
                                        (40, [0, 32, 39])])
def test_checked_calls_are_first_a_middle_and_last(n, checked):
    assert integrity.checked_calls(n) == checked


def test_implausible_is_listed_first_and_never_fastest_and_a_far_faster_peer_is_suspicious():
    honest = synthetic("honest", 256, [1e-3] * 9)
    fake = synthetic("fake", 256, [1e-6] * 9, status="implausible", message="implausible: 9x the roofline")
    far = synthetic("far", 512, [1e-5] * 9)
    peer = synthetic("peer", 512, [1e-3] * 9)
    results = [honest, far, peer, fake]
    assert [row[7] for row in fastest_rows(results)[1:]] == ["honest", "far (" + suspicious(results)[far.key] + ")"]
    rows = problem_rows(results)[1:]
    assert rows[0][:5:4] == ["fake", "implausible"] and "roofline" in rows[0][5]
    assert rows[-1][:5:4] == ["far", "suspicious: look"] and "100x faster than peer" in rows[-1][5]


def test_roofline_margin_decides_implausible():
    flops, attainable = 10 ** 9, 1e11
    at_margin = flops / (integrity.ROOFLINE_MARGIN * attainable)                 # seconds of a call at the margin
    assert integrity.implausible_reason(flops, 1.01 * at_margin, attainable) is None
    assert "roofline" in integrity.implausible_reason(flops, at_margin / 1.01, attainable)


INPUT = torch.zeros(4)


def _watched(calls, n=5):
    """Time `calls` in rotation (no warm-up, n timed calls) under a TimedCalls watching them; the watcher."""
    rotation = integrity.Rotation(calls)
    watch = integrity.TimedCalls(rotation, integrity.storage_addresses(INPUT))
    time_callable(rotation, warmup=0, min_repeats=n, max_repeats=n, budget_s=0, after=watch)
    return watch


def right_for(which: int, result) -> str | None:
    """A stand-in check: input set i's right answer is a tensor of i."""
    return None if float(result[0]) == which else f"holds {float(result[0])}"


def test_timed_calls_are_checked_against_the_input_set_each_was_given():
    honest = _watched([lambda i=i: torch.full((4,), float(i)) for i in range(3)]).findings(right_for)
    assert honest["checked"] == [1, 3, 5] and honest["failure"] is None and honest["reused_storage"] is None
    stuck = _watched([lambda: torch.zeros(4)] * 3).findings(right_for)              # right for set 0 only
    assert stuck["failure"].startswith("timed call 3 of 5 wrong (input set 2): holds 0.0")


def test_an_output_in_held_or_input_memory_is_reported():
    cached = torch.ones(4)
    found = _watched([lambda: cached, lambda: torch.ones(4), lambda: torch.ones(4)]).findings(right_for)
    assert "memory the caller still held" in found["reused_storage"] and found["aliases_input"] is None
    found = _watched([lambda: INPUT[1:]] * 3).findings(right_for)                    # a view of an input
    assert "input's memory" in found["aliases_input"]


class _ReadLater(torch.Tensor):
    """A tensor subclass, as a kernel returning work still in flight would use: its own code runs on every read."""


def test_an_output_that_runs_its_own_code_when_read_fails_the_timing():
    """Work on a thread of the kernel's own, or deferred until the harness reads the output, is right when the
    output is read and checked, yet was not inside the timing: a tensor subclass is what lets it wait then."""
    later = _watched([lambda i=i: torch.full((4,), float(i)).as_subclass(_ReadLater) for i in range(3)])
    found = later.findings(right_for)
    assert "timed call 1 returned a torch.Tensor subclass (_ReadLater)" in found["failure"], found
    plain = _watched([lambda i=i: (torch.full((4,), float(i)), torch.zeros(2)) for i in range(3)])
    assert plain.findings(lambda which, result: right_for(which, result[0]))["failure"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream hack needs CUDA")
def test_work_on_a_side_stream_is_implausible_on_cuda(tmp_path):
    with hacks_registered():
        code, run_dir = perf(tmp_path, "--plugin", str(HACK_FILE), "--device", "cuda", "--seq-lens", "4096",
                             "--heads", "8", "--head-dim", "64", "--pass", "fwd",
                             "--backends", "hack_side_stream,hack_cache_on_address,torch_sdpa_flash")
    assert code == 1
    rows = {r.backend: r for r in records.read(run_dir / "results.jsonl")}
    assert rows["hack_side_stream"].status == "implausible", rows["hack_side_stream"].message
    assert rows["hack_cache_on_address"].status == "implausible", rows["hack_cache_on_address"].message
    assert rows["torch_sdpa_flash"].status == "ok" and rows["torch_sdpa_flash"].accurate is True


def test_the_roofline_is_the_best_rate_in_any_dtype_so_a_kernel_computing_half_in_float32_is_plausible():
    """torch's CPU kernels compute float16 in float32; where float16 has no fast path (0.27 GFLOP/s measured on
    one machine) its own matmul rate would call every correct float16 point implausible."""
    from attnbench.perf.integrity import implausible_reason
    from attnbench.perf.machine import roofline_flops

    machine = {"peak_flops": {"float16": 2.7e8, "float32": 8e10}}
    assert roofline_flops(machine) == 8e10
    flops, seconds = 1e9, 0.05                                   # 20 GFLOP/s: 74x float16's rate, 0.25x float32's
    assert implausible_reason(flops, seconds, roofline_flops(machine)) is None
    assert implausible_reason(flops, 1e-4, roofline_flops(machine)) is not None


def test_the_fastest_table_says_when_its_ranking_rests_on_noisy_points():
    from attnbench.perf.report import format_summary

    quiet, loud = synthetic("quiet", 256, [1e-3] * 9), synthetic("loud", 256, [2e-3] * 9, noisy=True)
    assert fastest_rows([quiet])[1][-1] == "clean"
    assert fastest_rows([quiet, loud])[1][-1] == "noisy: next"
    assert fastest_rows([loud])[1][-1] == "noisy: fastest"
    assert "1 of 2 measured points flagged noisy" in format_summary([quiet, loud])
    skipped = synthetic("narrow", 256, [1e-3], status="skipped", message="skipped: float32 not declared")
    assert "1 of 2 measured points flagged noisy" in format_summary([quiet, loud, skipped])   # skips not counted
    assert "flagged noisy" not in format_summary([quiet])


@pytest.mark.parametrize("spec, backward", [("B=3,H=2,N=9,M=20,D=8,dtype=float32,kv=ragged", False),
                                            ("B=3,H=2,N=3,M=40,D=8,dtype=float16,kv=paged:16,append=2", False),
                                            ("B=3,H=2,N=9,M=20,D=8,dtype=float32,kv=ragged", True),
                                            ("B=1,H=2,N=9,M=20,D=8,dtype=float32", True)])
def test_every_input_a_timed_call_reads_is_watched_for_an_alias(spec, backward):
    """An output in an input's memory is reported on the layout paths (the converted storage a kernel reads
    natively) and in the backward (dO) too, not only for dense q, k, v."""
    from attnbench.check import grad_out_for
    from attnbench.implementations import get_backend
    from attnbench.perf.measure import input_addresses
    from attnbench.problem import Problem, make_inputs

    p, backend = Problem.parse(spec), get_backend("torch_blockwise")
    run = (backend.prepare_backward(make_inputs(p), p, grad_out_for(p)) if backward
           else backend.prepare(make_inputs(p), p))
    read = [*getattr(run, "native_inputs", ()), *getattr(run, "native_kv", {}).values()]
    read += [run.native_grad_out] if backward else []
    assert read and set().union(*(integrity.storage_addresses(x) for x in read)) <= input_addresses([run])
