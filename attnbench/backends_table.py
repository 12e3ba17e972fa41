"""`attnbench backends`: one row per (backend, device) saying whether it runs here and what it declares.

Rows are plain dicts built from the registry (`backend_rows`), so the same data
renders as a text table (`format_table`) or JSON (`format_json`); plugins that
failed to load are rows too, with status "load error" and the error. A backend
that runs here only under a simulator (triton_blockwise on a CPU, under the
Triton interpreter, as `check` and `perf` run it) is "simulated", with the reason.
The CLI sets the environment as `check` does first, so the table says what `check` would run.
"""
from __future__ import annotations

import json

from attnbench.implementations import Backend

COLUMNS = ("backend", "device", "status", "dtypes", "causal", "masks", "kv", "gqa", "grad", "det", "lse", "source")
ABBREVIATIONS = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64",
                 "top_left": "top_left", "bottom_right": "bottom_right"}


# What the commands do with a simulated backend (sweep.measurable_backends leaves it out of --quick and run).
SIMULATED = "check and conformance run it; perf times the simulator (left out of --quick and run), not the kernel"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def backend_row(backend, device: str, source: str = "") -> dict:
    """One row: availability on `device` (with the reason) and, when available, the declared capabilities."""
    reason = backend.unavailable_reason() or backend.device_unavailable_reason(device)
    simulated = backend.simulated_reason(device) if reason is None else None
    row = {"backend": backend.name, "device": device, "available": reason is None, "reason": reason,
           "simulated": simulated, "source": source, "description": backend.description}
    # An unavailable backend shows what it declares statically; one that probes (declares nothing) shows blanks.
    if reason is not None and backend.caps is Backend.caps:
        return row
    caps = backend.capabilities(device)
    row.update(dtypes=list(caps.dtypes), causal=list(caps.causal), non_causal=caps.non_causal,
               masks=list(caps.masks),
               mask_with_causal=caps.mask_with_causal, cross=caps.cross, gqa=caps.gqa, dv_differs=caps.dv_differs,
               head_dims=list(caps.head_dims), grad=caps.grad, deterministic=caps.deterministic, lse=caps.lse,
               strided=caps.strided, max_seq=caps.max_seq, kv=kv_route(caps))
    return row


def kv_route(caps) -> str:
    """How it reads ragged and paged KV layouts: natively (the layouts, "+append" when it appends keys itself),
    through the pad-and-mask adapter (any backend that takes bool masks), or not at all ("dense")."""
    native = [k for k in caps.kv_layouts if k != "dense"]
    if native:
        return ",".join(native) + ("+append" if caps.kv_append else "")
    return "pad-and-mask" if "bool" in caps.masks else "dense"


def backend_rows(backends, errors: dict[str, str], origin=lambda name: "") -> list[dict]:
    """Every (backend, device) row, then one row per module or plugin that failed to load."""
    rows = [backend_row(b, device, origin(b.name)) for b in backends for device in b.devices]
    rows += [{"backend": name, "device": "-", "available": False, "reason": f"load error: {error}",
              "source": name} for name, error in errors.items()]
    return rows


def _cells(row: dict) -> dict:
    if "device" not in row or row["device"] == "-":
        return {"backend": row["backend"], "device": "-", "status": "load error", "source": row["source"]}
    if "dtypes" not in row:
        return {"backend": row["backend"], "device": row["device"], "status": "unavailable", "source": row["source"]}
    short = lambda items: ",".join(ABBREVIATIONS.get(x, x) for x in items) or "-"   # noqa: E731
    return {"backend": row["backend"], "device": row["device"],
            "status": "simulated" if row.get("simulated") else "available" if row["available"] else "unavailable",
            "dtypes": short(row["dtypes"]), "causal": causal_cell(row, short), "masks": short(row["masks"]),
            "kv": row.get("kv", "-"), "gqa": _yes_no(row["gqa"]), "grad": _yes_no(row["grad"]),
            "det": _yes_no(row["deterministic"]),
            "lse": _yes_no(row["lse"]), "source": row["source"]}


def causal_cell(row: dict, short) -> str:
    """The alignments it takes, "(only)" after them for a causal-only backend (no problem without causal): one word,
    as every cell is."""
    return short(row["causal"]) + ("" if row.get("non_causal", True) else "(only)")


def format_table(rows: list[dict]) -> str:
    """A fixed-width table; each unavailable row is followed by an indented `why:` line with its reason."""
    cells = [_cells(r) for r in rows]
    widths = {c: max([len(c)] + [len(cell.get(c, "")) for cell in cells]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    for row, cell in zip(rows, cells):
        lines.append("  ".join(cell.get(c, "").ljust(widths[c]) for c in COLUMNS).rstrip())
        if not row["available"]:
            lines.append(f"    why: {row['reason']}")
        elif row.get("simulated"):
            lines.append(f"    simulated: {row['simulated']}: {SIMULATED}")
    available = sum(r["available"] for r in rows)
    simulated = sum(bool(r.get("simulated")) for r in rows)
    lines.append(f"{available} of {len(rows)} backend/device pairs available ({simulated} simulated); "
                 'det = deterministic, lse = returns the log-sum-exp; causal "(only)": no non-causal problems; '
                 "an unavailable row shows what it declares")
    return "\n".join(lines)


def format_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
