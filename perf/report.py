"""Render report.md, the PNG plots and a self-contained report.html from results.jsonl alone."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from attnbench.reference import AttentionInputError

from . import records
from .analysis import slopes
from .machine import machine_label
from .plots import PLOTS
from .records import PointResult

MEMORY_METHOD = {
    "cpu": "growth of `ru_maxrss` across the first call, in a fresh process per point, inputs prepared "
           "before the baseline is read and the peak-RSS mark reset (/proc/self/clear_refs) just before it",
    "cuda": "`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus the memory allocated "
            "before the call, in a fresh process per point",
}
TIMING_METHOD = {
    "cpu": "wall clock (perf_counter) per call after a warm-up; repeats until the time budget or count",
    "cuda": "CUDA events around each call, a 256 MB buffer written between calls to flush L2, synchronised; "
            "warm-up first; compile/autotune time of the first call kept separately as first_call_s",
}


def _fmt(x, spec: str = ".3g", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _machine(results: list[PointResult]) -> dict:
    return next((r.machine for r in results if r.machine), {})


def points_table(results: list[PointResult]) -> list[list[str]]:
    head = ["backend", "pass", "dtype", "B", "H", "N", "D", "causal", "status", "median ms", "IQR ms",
            "first call ms", "peak MiB", "N² MiB", "TFLOP/s", "GB/s", "of peak", "max err", "ok"]
    rows = [head]
    for r in results:
        if r.status == "skipped":
            continue
        ms = lambda s: None if s is None else s * 1e3  # noqa: E731
        mib = lambda b: None if b is None else b / 2 ** 20  # noqa: E731
        rows.append([r.backend, r.pass_, r.dtype, str(r.B), str(r.H), str(r.N), str(r.D), r.causal or "-",
                     r.status if r.status == "ok" else f"**{r.status}**", _fmt(ms(r.time_median_s)),
                     _fmt(ms(r.time_iqr_s), ".2g"), _fmt(ms(r.first_call_s)), _fmt(mib(r.peak_bytes)),
                     _fmt(mib(r.predicted_pattern_bytes)), _fmt(r.tflops), _fmt(r.gbps),
                     _fmt(r.fraction_of_peak, ".1%"), _fmt(r.error_vs_ref, ".1e"),
                     {True: "yes", False: "NO", None: "-"}[r.accurate]])
    return rows


def slopes_table(results: list[PointResult]) -> list[list[str]]:
    rows = [["series", "time slope", "memory slope", "largest N ok", "stopped by"]]
    for s in slopes(results):
        rows.append([s["series"], _fmt(s["time_slope"], ".2f"), _fmt(s["memory_slope"], ".2f"),
                     _fmt(s["largest_ok_N"], "d"), s["first_failure"] or "-"])
    return rows


def skipped_table(results: list[PointResult]) -> list[list[str]]:
    seen, rows = set(), [["backend", "pass", "reason"]]
    for r in results:
        if r.status == "skipped" and (r.backend, r.pass_, r.message) not in seen:
            seen.add((r.backend, r.pass_, r.message))
            rows.append([r.backend, r.pass_, r.message])
    return rows


def failures_table(results: list[PointResult]) -> list[list[str]]:
    rows = [["backend", "pass", "N", "status", "message"]]
    rows += [[r.backend, r.pass_, str(r.N), r.status, r.message] for r in results
             if r.status not in ("ok", "skipped")]
    return rows


def _md_table(rows: list[list[str]]) -> str:
    if len(rows) < 2:
        return "(none)\n"
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[list[str]]) -> str:
    if len(rows) < 2:
        return "<p>(none)</p>"
    cell = lambda tag, c: f"<{tag}>{html.escape(c).replace('**', '')}</{tag}>"  # noqa: E731
    head = "".join(cell("th", c) for c in rows[0])
    body = "".join("<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _method(device: str) -> str:
    return (f"Time: {TIMING_METHOD.get(device, '')}. Peak memory: {MEMORY_METHOD.get(device, '')}. "
            "FLOPs from `attention_flops` (causal counts only attended pairs); bytes are the minimum a "
            "perfect kernel moves (q, k, v, o, plus dO, dQ, dK, dV for fwd+bwd); fraction of peak is "
            "achieved FLOP/s over min(measured matmul peak, measured bandwidth × FLOPs/byte). N² MiB is "
            "the predicted B·H·N·M pattern in the dtype. Accuracy: `check_forward` at the point's own N "
            "and M (every row up to 512 x 512, else rows sampled where tiles break, float64 reference).")


def by_machine(results: list[PointResult]) -> dict[str, list[PointResult]]:
    """Measured records grouped by the machine that measured them (label: host, device name, device).

    Points whose worker died before it could say where it ran go under "unknown machine".
    """
    groups: dict[str, list[PointResult]] = {}
    for r in results:
        if r.status != "skipped":
            groups.setdefault(machine_label(r.machine) if r.machine.get("host") else "unknown machine", []).append(r)
    return groups


def _machine_text(m: dict) -> str:
    peaks = ", ".join(f"{dt} {v / 1e12:.3g} TFLOP/s" for dt, v in m.get("peak_flops", {}).items())
    return (f"{m.get('host', '?')}: {m.get('device_name', '?')} ({m.get('device', '?')}, {m.get('cpus', '?')} CPUs, "
            f"{m.get('threads', '?')} torch threads), "
            f"torch {m.get('torch', '?')}. Measured peaks: {peaks or '?'}; memory bandwidth "
            f"{(m.get('peak_bandwidth') or 0) / 1e9:.3g} GB/s ({m.get('peaks_measured_by', '')}).")


def _sections(results: list[PointResult]) -> list[tuple[str, list[list[str]] | str]]:
    groups = by_machine(results)
    if len(groups) > 1:                                          # never mix machines in one table or fit
        per_machine = []
        for label, rs in groups.items():
            per_machine += [(f"Machine {label}", _machine_text(_machine(rs))), (f"Points on {label}", points_table(rs)),
                            (f"Fitted slopes on {label}", slopes_table(rs)),
                            (f"Failures on {label}", failures_table(rs))]
        device = _machine(results).get("device", "cpu")
        return [("How it was measured", _method(device)), *per_machine,
                ("Skipped (not declared by the backend)", skipped_table(results))]
    m = _machine(results)
    device = m.get("device", "cpu")
    machine = _machine_text(m)
    return [("Machine", machine), ("How it was measured", _method(device)), ("Points", points_table(results)),
            ("Fitted slopes (log-log vs N) and largest N reached", slopes_table(results)),
            ("Failures (oom, timeout, error)", failures_table(results)),
            ("Skipped (not declared by the backend)", skipped_table(results))]


def render(run_dir: Path) -> list[Path]:
    """Write report.md, the PNGs and report.html into run_dir from its results.jsonl; returns the paths."""
    run_dir = Path(run_dir)
    results = records.read(run_dir / "results.jsonl")
    if not results:
        raise AttentionInputError(f"{run_dir / 'results.jsonl'} holds no readable records: nothing to report")
    groups = by_machine(results)
    if len(groups) > 1:                                          # one set of plots per machine
        pngs = {f"m{i}-{name}": plot(rs) for i, rs in enumerate(groups.values(), 1) for name, plot in PLOTS.items()}
    else:
        pngs = {name: plot(results) for name, plot in PLOTS.items()}
    for name, data in pngs.items():
        (run_dir / name).write_bytes(data)
    md = [f"# attnbench perf report: {run_dir.name}\n"]
    page = [f"<h1>attnbench perf report: {html.escape(run_dir.name)}</h1>"]
    for title, body in _sections(results):
        md.append(f"## {title}\n\n" + (body + "\n" if isinstance(body, str) else _md_table(body)))
        page.append(f"<h2>{html.escape(title)}</h2>" +
                    (f"<p>{html.escape(body)}</p>" if isinstance(body, str) else _html_table(body)))
    md.append("## Plots\n\n" + "\n".join(f"![{n}]({n})" for n in pngs) + "\n")
    page.append("<h2>Plots</h2>" + "".join(
        f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}">' for n, d in pngs.items()))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:49%}")
    (run_dir / "report.md").write_text("\n".join(md))
    (run_dir / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>attnbench "
                                         f"{html.escape(run_dir.name)}</title><style>{style}</style></head>"
                                         f"<body>{''.join(page)}</body></html>\n")
    return [run_dir / "report.md", run_dir / "report.html", *(run_dir / n for n in pngs)]
