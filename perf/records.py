"""Frozen point results and the JSONL file that is the single source of truth of a run.

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

from . import derived
from .spec import Case

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
                kv_layout=derived.kv_layout_label(p))


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
