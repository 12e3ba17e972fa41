"""Stage 4, records: a measured point becomes a frozen `PointResult`, with the figures derived from it, appended to
the JSONL file that is the single source of truth of a run. In: a `Case`, its status and measured fields, the
machine that measured it (runner.py). Out: results.jsonl, read back by analysis.py, report.py and compare.py.

Derived figures: FLOPs, minimum bytes moved, rates, the roofline's attainable rate and the fraction of it, the
decode regime's bytes (`FLOP_CONVENTION` and `DECODE_BYTES` say how each is counted); a point faster than the
roofline allows is `implausible` (integrity.py).

One JSON object per line, appended and flushed as soon as a point is measured,
so an interrupted sweep loses nothing and `--resume` knows what is done. Each
record carries `schema` (SCHEMA_VERSION when written; records from before the
field read as 0). A line that cannot be read is reported, never dropped silently.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.problem import Problem
from attnbench.reference import attention_flops, attention_pattern_size

from .integrity import implausible_reason
from .machine import roofline_flops
from .spec import Case

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
FA2_BACKWARD_FACTOR = 2.5     # FlashAttention's benchmarks count the backward as 2.5x the forward (S recomputed)
FLOP_CONVENTION = ("FLOPs are the matmuls' (multiply + add = 2): forward 2·pairs·(D + Dv); the backward counted "
                   "as 2x the forward (dV, dP, dQ, dK: no recomputation), so fwd+bwd = 3x forward. Causal counts "
                   "only attended pairs. FlashAttention's published TFLOP/s count the backward as 2.5x (it "
                   "recomputes S), fwd+bwd = 3.5x: the `TFLOP/s (FA)` column uses that, for comparison with "
                   "published figures; it is the same time, read 1.17x higher.")


def sequences(problem: Problem) -> list[tuple[int, int]]:
    """(N_b, M_b) of each sequence: B times (N, M) for a dense problem; a ragged or paged batch's own lengths
    (`attnbench.reference.layouts.geometry`, drawn from the seed), appended keys included."""
    from attnbench.reference import layouts

    p = problem
    if not layouts.needs_storage(p):
        return [(p.N, p.M)] * p.B
    g = layouts.geometry(p)
    return list(zip(g.seq_q.tolist(), g.seq_k.tolist()))


def flops(problem: Problem, pass_: str) -> int:
    """Matmul FLOPs of the pass, counting only the pairs a query may attend (causal, windows), each sequence of
    a ragged or paged batch at its own lengths."""
    p = problem
    return sum(attention_flops(1, p.H, n, m, p.D, p.Dv, pass_=pass_, mods=p.reference_mods)
               for n, m in sequences(p))


def flops_fa2(problem: Problem, pass_: str) -> int:
    """FLOPs of the pass in FlashAttention's convention: the forward's, backward 2.5x it (fwd+bwd = 3.5x)."""
    forward = flops(problem, "fwd")
    return {"fwd": forward, "bwd": int(FA2_BACKWARD_FACTOR * forward),
            "fwd+bwd": int((1 + FA2_BACKWARD_FACTOR) * forward)}[pass_]


def min_bytes(problem: Problem, pass_: str) -> int:
    """Bytes a perfect kernel must move: read q, k, v (and dO), write o (and dQ, dK, dV), each once."""
    p, lengths = problem, sequences(problem)
    queries, keys = sum(n for n, _ in lengths), sum(m for _, m in lengths)   # a ragged batch: its real tokens
    q, o = p.H * queries * p.D, p.H * queries * p.Dv
    k, v = p.Hkv * keys * p.D, p.Hkv * keys * p.Dv
    elements = q + k + v + o
    if pass_ != "fwd":
        elements += o + q + k + v                                            # dO read; dQ, dK, dV written
    return elements * ITEMSIZE[p.dtype]


# A decode step is bound by memory, not FLOPs (tritonbench's decoding_attention reports GB/s): its figure is the
# bytes a perfect kernel moves, K and V read once, Q read and O written once, over the time.
DECODE_MAX_N = 16
DECODE_BYTES = ("bytes = (Hkv·ΣM_b·(D + Dv) + H·ΣN_b·(D + Dv)) · itemsize: K and V read once, Q read, O written "
                "(a dense batch: ΣM_b = B·M; ragged and paged: each sequence's own length)")


def decode_bytes(problem: Problem) -> int:
    """Bytes of one forward decode step (`DECODE_BYTES`): the forward's `min_bytes`, K and V dominating."""
    return min_bytes(problem, "fwd")


def kv_bytes_per_token(problem: Problem) -> int:
    """Bytes one cached token holds, per sequence and layer: Hkv · (D + Dv) · itemsize (its K and V rows)."""
    p = problem
    return p.Hkv * (p.D + p.Dv) * ITEMSIZE[p.dtype]


def is_decode(n: int, m: int) -> bool:
    """A decode point: a few queries (N <= DECODE_MAX_N) against a longer cache."""
    return n <= DECODE_MAX_N and n < m


def kv_layout_label(problem: Problem) -> str:
    """How the point's KV cache is stored, for labels: the problem's `kv` ("dense", "ragged", "paged:16"), with
    "+append K" when new keys are written into the cache by the call."""
    return problem.kv + (f"+append {problem.append}" if problem.append else "")


def bandwidth_fraction(byte_count: int, seconds: float, peak_bandwidth: float | None) -> float | None:
    """Achieved bytes/s over the machine's measured copy bandwidth (None when it was not measured)."""
    return byte_count / seconds / peak_bandwidth if peak_bandwidth else None


def predicted_pattern_bytes(problem: Problem) -> int:
    """One (B, H, N, M) attention pattern in the problem's dtype: the N^2 buffer a naive kernel materialises."""
    p = problem
    return attention_pattern_size(p.N, p.M, batch=p.B, heads=p.H) * ITEMSIZE[p.dtype]


def attainable_flops(flop_count: int, byte_count: int, peak_flops: float, peak_bandwidth: float) -> float:
    """The roofline's attainable FLOP/s for a pass: min(peak FLOP/s, bandwidth * FLOPs per byte moved)."""
    return min(peak_flops, peak_bandwidth * flop_count / byte_count)


# implausible: measured faster than the machine's roofline allows (integrity.py); timed, never ranked.
# Bump when a field changes meaning; readers refuse records newer than they know.
# 2: status implausible; `accurate` covers the timed calls too; `integrity`.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class PointResult:
    """One point's record. Time fields are seconds; memory bytes; rates per second; None where not measured."""

    key: str
    backend: str
    device: str
    dtype: str
    B: int
    H: int
    Hkv: int
    N: int
    M: int
    D: int
    Dv: int
    causal: str | None
    pass_: str
    status: str
    message: str = ""
    time_median_s: float | None = None
    time_iqr_s: float | None = None
    time_ci95_s: tuple[float, float] | None = None
    first_call_s: float | None = None
    samples: tuple[float, ...] = ()
    peak_bytes: int | None = None
    predicted_pattern_bytes: int | None = None
    flops: int | None = None
    tflops: float | None = None
    bytes_moved: int | None = None
    gbps: float | None = None
    fraction_of_peak: float | None = None
    error_vs_ref: float | None = None
    accurate: bool | None = None
    machine: dict = field(default_factory=dict)
    # noise control (perf/noise.py): per-process medians, the verdict and its evidence
    process_medians_s: tuple[float, ...] = ()
    noisy: bool | None = None
    noise: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)                  # MeasureOptions the point was measured with
    tflops_fa2: float | None = None                              # FlashAttention's convention: backward = 2.5x fwd
    # what the timing passed (integrity.combine): input sets rotated, timed calls checked, the first wrong one,
    # an output in memory the caller still held or in an input's memory
    integrity: dict = field(default_factory=dict)
    # memory-bound figures (the decode regime): bytes/s over the machine's measured copy bandwidth, the bytes one
    # cached token holds, and the KV cache's layout ("dense"; ragged and paged points say so)
    bandwidth_fraction: float | None = None
    kv_bytes_per_token: int | None = None
    kv_layout: str = "dense"
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pass"] = d.pop("pass_")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PointResult":
        d = {"schema": 0, **d}
        if d["schema"] > SCHEMA_VERSION:
            raise ValueError(f"schema {d['schema']} is newer than this attnbench reads ({SCHEMA_VERSION})")
        d["pass_"] = d.pop("pass")
        d["samples"] = tuple(d.get("samples") or ())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def base_fields(case: Case) -> dict:
    """The identifying fields of a case's record."""
    p = case.problem
    return dict(key=case.key, backend=case.backend, device=case.device, dtype=p.dtype, B=p.B, H=p.H, Hkv=p.Hkv,
                N=p.N, M=p.M, D=p.D, Dv=p.Dv, causal=p.causal, pass_=case.pass_,
                kv_layout=kv_layout_label(p))


def append(path: Path, result: PointResult) -> None:
    """Append one record and flush it to disk now."""
    torn = _ends_mid_line(path)
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(result.to_dict()) + "\n")   # never glue onto a torn line
        f.flush()


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last line lacks its newline (a run killed mid-write)."""
    try:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except OSError:                                              # missing or empty
        return False


def read_all(path: Path) -> tuple[list[PointResult], list[str]]:
    """(every readable record, one message per line that is not) of a results.jsonl."""
    results, bad = [], []
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            results.append(PointResult.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as exc:
            torn = (" (a torn write from a killed run; --resume measures that point again)"
                    if isinstance(exc, json.JSONDecodeError) else "")
            bad.append(f"{path}:{number}: unreadable record{torn}: {type(exc).__name__}: {exc}"[:300])
    return results, bad


def read(path: Path, *, warn=lambda line: print(f"attnbench: warning: {line}", file=sys.stderr)) -> list[PointResult]:
    """Every readable record of a results.jsonl; each unreadable line is passed to `warn`."""
    results, bad = read_all(path)
    for line in bad:
        warn(line)
    return results


def duplicate_keys(results: list[PointResult]) -> list[str]:
    """Keys recorded more than once (two writers on one run, or runs concatenated by hand)."""
    seen, dup = set(), []
    for r in results:
        if r.key in seen and r.key not in dup:
            dup.append(r.key)
        seen.add(r.key)
    return dup


def done_keys(path: Path) -> set[str]:
    """Keys of the points already recorded (any status)."""
    return {r.key for r in read(path, warn=lambda _: None)} if Path(path).exists() else set()


def result_of(case: Case, status: str, fields: dict, machine: dict) -> PointResult:
    """The record of a measured case, with its derived figures."""
    p = case.problem
    flop_count, byte_count = flops(p, case.pass_), min_bytes(p, case.pass_)
    extra = {}
    if status == "ok":
        t = fields["time_median_s"]
        peak = roofline_flops(machine)                       # the best rate in any dtype: see machine.roofline_flops
        attainable = peak and attainable_flops(flop_count, byte_count, peak, machine["peak_bandwidth"])
        extra = dict(tflops=flop_count / t / 1e12, gbps=byte_count / t / 1e9,
                     tflops_fa2=flops_fa2(p, case.pass_) / t / 1e12,
                     fraction_of_peak=attainable and flop_count / t / attainable,
                     bandwidth_fraction=bandwidth_fraction(byte_count, t, machine.get("peak_bandwidth")))
        impossible = attainable and implausible_reason(flop_count, t, attainable)
        if impossible:
            status, fields = "implausible", {**fields, "message": "; ".join(filter(None, [impossible,
                                                                                         fields.get("message")]))}
    measured = {k: v for k, v in fields.items() if k != "repeats"}
    if "time_ci95_s" in measured:
        measured["time_ci95_s"] = tuple(measured["time_ci95_s"])
    measured["samples"] = tuple(measured.get("samples", ()))
    return PointResult(**base_fields(case), status=status, flops=flop_count, bytes_moved=byte_count,
                       predicted_pattern_bytes=predicted_pattern_bytes(p), machine=machine,
                       kv_bytes_per_token=kv_bytes_per_token(p),
                       **measured, **extra)
