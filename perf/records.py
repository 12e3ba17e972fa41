"""Frozen point results and the JSONL file that is the single source of truth of a run.

One JSON object per line, appended and flushed as soon as a point is measured,
so an interrupted sweep loses nothing and `--resume` knows what is done.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .sweep import Case

STATUSES = ("ok", "oom", "timeout", "error", "skipped")


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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pass"] = d.pop("pass_")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PointResult":
        d = dict(d)
        d["pass_"] = d.pop("pass")
        d["samples"] = tuple(d.get("samples") or ())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def base_fields(case: Case) -> dict:
    """The identifying fields of a case's record."""
    p = case.problem
    return dict(key=case.key, backend=case.backend, device=case.device, dtype=p.dtype, B=p.B, H=p.H, Hkv=p.Hkv,
                N=p.N, M=p.M, D=p.D, Dv=p.Dv, causal=p.causal, pass_=case.pass_)


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


def read(path: Path) -> list[PointResult]:
    """Every record of a results.jsonl; a torn last line (the run was killed mid-write) is ignored."""
    results = []
    for line in Path(path).read_text().splitlines():
        try:
            results.append(PointResult.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
    return results


def done_keys(path: Path) -> set[str]:
    """Keys of the points already recorded (any status)."""
    return {r.key for r in read(path)} if Path(path).exists() else set()
