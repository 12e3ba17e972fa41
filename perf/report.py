"""Stage 6, report: render what analysis.py found, for the terminal, report.md and a self-contained report.html.

In: the records of a run directory's results.jsonl (records.py) and analysis.py's rows. Out: report.md,
report.html and the PNG plots (plots.py) in the run directory, and the summary `attnbench perf` prints.

Every table of perf, the audit's too, is rows of strings, header first, rendered by one of `text_table`
(terminal), `markdown_table` or `html_table`.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from attnbench.reference import AttentionInputError

from . import records
from .analysis import fastest_rows, noisy_table, problem_rows, slopes
from .integrity import INPUT_SETS, ROOFLINE_MARGIN, SUSPICIOUS_SPEEDUP
from .machine import describe as describe_machine
from .machine import machine_label
from .noise import METHOD as NOISE_METHOD
from .records import DECODE_BYTES, DECODE_MAX_N, FLOP_CONVENTION, PointResult, is_decode

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


def status_cell(r: PointResult) -> str:
    return ("ok" if not r.noisy else "**ok, noisy**") if r.status == "ok" else f"**{r.status}**"


def points_table(results: list[PointResult]) -> list[list[str]]:
    head = ["backend", "pass", "dtype", "B", "H", "N", "M", "D", "causal", "status", "median ms", "IQR ms",
            "first call ms", "peak MiB", "N² MiB", "TFLOP/s", "TFLOP/s (FA)", "GB/s", "of peak", "max err", "ok"]
    rows = [head]
    for r in results:
        if r.status == "skipped":
            continue
        ms = lambda s: None if s is None else s * 1e3  # noqa: E731
        mib = lambda b: None if b is None else b / 2 ** 20  # noqa: E731
        rows.append([r.backend, r.pass_, r.dtype, str(r.B), str(r.H), str(r.N), str(r.M), str(r.D), r.causal or "-",
                     status_cell(r), _fmt(ms(r.time_median_s)),
                     _fmt(ms(r.time_iqr_s), ".2g"), _fmt(ms(r.first_call_s)), _fmt(mib(r.peak_bytes)),
                     _fmt(mib(r.predicted_pattern_bytes)), _fmt(r.tflops), _fmt(r.tflops_fa2), _fmt(r.gbps),
                     _fmt(r.fraction_of_peak, ".1%"), _fmt(r.error_vs_ref, ".1e"),
                     {True: "yes", False: "NO", None: "-"}[r.accurate]])
    return rows


# What `attnbench run` prints of every point (`columns` of `points_table`).
RUN_COLUMNS = ("backend", "pass", "H", "N", "status", "median ms", "TFLOP/s", "peak MiB", "max err", "ok")


def columns(rows: list[list[str]], names) -> list[list[str]]:
    """The columns called `names` of rows (header first), in that order."""
    index = [rows[0].index(name) for name in names]
    return [[row[i] for i in index] for row in rows]


def decode_table(results: list[PointResult]) -> list[list[str]]:
    """Rows (header first) of the decode points (N <= DECODE_MAX_N against a longer cache): time, GB/s, the
    fraction of the machine's measured copy bandwidth, and the bytes one cached token holds."""
    rows = [["backend", "KV layout", "dtype", "B", "H", "Hkv", "N", "M", "D", "status", "median ms", "GB/s",
             "of measured bandwidth", "KV bytes/token", "ok"]]
    for r in results:
        if r.status == "skipped" or not is_decode(r.N, r.M):
            continue
        rows.append([r.backend, r.kv_layout, r.dtype, str(r.B), str(r.H), str(r.Hkv), str(r.N), str(r.M), str(r.D),
                     status_cell(r), _fmt(r.time_median_s and r.time_median_s * 1e3), _fmt(r.gbps),
                     _fmt(r.bandwidth_fraction, ".1%"), _fmt(r.kv_bytes_per_token, "d"),
                     {True: "yes", False: "NO", None: "-"}[r.accurate]])
    return rows


def _decode_section(results: list[PointResult]) -> list[tuple[str, list[list[str]]]]:
    """The decode regime's table, where the run has decode points (none otherwise)."""
    rows = decode_table(results)
    if len(rows) < 2:
        return []
    peak = _machine(results).get("peak_bandwidth")
    return [(f"Decode regime (N <= {DECODE_MAX_N} against M cached keys): GB/s against the measured bandwidth "
             f"({_fmt(peak and peak / 1e9)} GB/s)", rows)]


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


def text_table(rows: list[list[str]]) -> str:
    """Rows (header first) as aligned columns for a terminal; markdown's **bold** marks dropped."""
    rows = [[str(c).replace("**", "") for c in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown_table(rows: list[list[str]]) -> str:
    """Rows (header first) as a markdown table; "(none)" without a row below the header."""
    if len(rows) < 2:
        return "(none)\n"
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def inline_html(text: str) -> str:
    """Markdown's inline marks as HTML: `code` and **bold**; everything else escaped."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


# Cell colours by what a cell says: the status column, the accuracy column ("NO") and the summary's verdicts.
BAD_CELLS = {"error": "bad", "inaccurate": "bad", "implausible": "bad", "NO": "bad", "oom": "warn",
             "timeout": "warn", "suspicious: look": "warn", "ok": "good", "yes": "good"}


def html_table(rows: list[list[str]]) -> str:
    """Rows (header first) as an HTML table, status and accuracy cells coloured by what they say."""
    if len(rows) < 2:
        return "<p>(none)</p>"
    colour = {i for i, name in enumerate(rows[0]) if name in ("status", "ok")}

    def td(i: int, c: str) -> str:
        cls = BAD_CELLS.get(c.strip("*")) if i in colour else None
        return f"<td class='{cls}'>" + inline_html(c) + "</td>" if cls else f"<td>{inline_html(c)}</td>"

    def tr(row: list[str]) -> str:
        bad = any(BAD_CELLS.get(row[i].strip("*")) in ("bad", "warn") for i in colour)
        return ("<tr class='flagged'>" if bad else "<tr>") + "".join(td(i, c) for i, c in enumerate(row)) + "</tr>"

    head = "".join(f"<th>{inline_html(c)}</th>" for c in rows[0])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(tr(r) for r in rows[1:])}</tbody></table>"


def _method(device: str) -> str:
    return (f"Time: {TIMING_METHOD.get(device, '')}. {NOISE_METHOD} Peak memory: {MEMORY_METHOD.get(device, '')}. "
            f"{FLOP_CONVENTION} Bytes are the minimum a "
            "perfect kernel moves (q, k, v, o, plus dO, dQ, dK, dV for fwd+bwd); fraction of peak is "
            "achieved FLOP/s over min(measured matmul peak, measured bandwidth × FLOPs/byte). N² MiB is "
            f"the predicted B·H·N·M pattern in the dtype. Decode points (N <= {DECODE_MAX_N} < M) are memory-bound: "
            f"{DECODE_BYTES}; their bandwidth fraction is GB/s over the machine's measured copy bandwidth. "
            "Accuracy: `check_forward` at the point's own N and M (every row up to 512 x 512, else rows sampled "
            "where tiles break, float64 reference), and in "
            "every process the first, a middle and the last timed call, the timed calls rotating among "
            f"{INPUT_SETS} input sets, against the row-sampled reference of the set each was given. A point "
            f"faster than {ROOFLINE_MARGIN:g}x the measured roofline is implausible; one more than "
            f"{SUSPICIOUS_SPEEDUP:g}x faster than the fastest trusted peer, or whose outputs lie in memory "
            "the caller still held or in an input, is suspicious.")


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
    return describe_machine(m)


def _sections(results: list[PointResult]) -> list[tuple[str, list[list[str]] | str]]:
    groups = by_machine(results)
    if len(groups) > 1:                                          # never mix machines in one table or fit
        per_machine = []
        for label, rs in groups.items():
            per_machine += [(f"Machine {label}", _machine_text(_machine(rs))), *_decode_section(rs),
                            (f"Points on {label}", points_table(rs)),
                            (f"Fitted slopes on {label}", slopes_table(rs)),
                            (f"Noisy points on {label}", noisy_table(rs))]
        device = _machine(results).get("device", "cpu")
        return [*_verdicts(results), ("How it was measured", _method(device)), *per_machine,
                ("Skipped (not declared by the backend)", skipped_table(results))]
    m = _machine(results)
    device = m.get("device", "cpu")
    machine = _machine_text(m)
    return [*_verdicts(results), ("Machine", machine), ("How it was measured", _method(device)),
            *_decode_section(results), ("Points", points_table(results)),
            ("Fitted slopes (log-log vs N) and largest N reached", slopes_table(results)),
            ("Noisy points (timings not to be trusted)", noisy_table(results)),
            ("Skipped (not declared by the backend)", skipped_table(results))]


def _verdicts(results: list[PointResult]) -> list[tuple[str, list[list[str]]]]:
    """What a reader needs first: every point that went wrong, then the fastest accurate backend per size."""
    return [("Implausible, inaccurate, suspicious or failed (faster than the roofline; outside the error budget, "
             "first or timed calls; error, oom, timeout)", problem_rows(results)),
            ("Fastest accurate backend per size", fastest_rows(results))]


def render(run_dir: Path, results: list[PointResult] | None = None) -> list[Path]:
    """Write report.md, the PNGs and report.html into run_dir from its results.jsonl (`results`, if the caller
    read them already); returns the paths."""
    from .plots import PLOTS                     # matplotlib: only when a report is drawn

    run_dir = Path(run_dir)
    results = records.read(run_dir / "results.jsonl") if results is None else results
    if not results:
        raise AttentionInputError(f"{run_dir / 'results.jsonl'} holds no readable records: nothing to report")
    groups = by_machine(results)
    if len(groups) > 1:                                          # one set of plots per machine
        pngs = {f"m{i}-{name}": plot(rs) for i, rs in enumerate(groups.values(), 1) for name, plot in PLOTS.items()}
    else:
        pngs = {name: plot(results) for name, plot in PLOTS.items()}
    for name, data in pngs.items():
        if isinstance(data, bytes):
            (run_dir / name).write_bytes(data)
        else:                                                    # no plot, a sentence why; no stale image left
            (run_dir / name).unlink(missing_ok=True)
    md = [f"# attnbench perf report: {run_dir.name}\n"]
    page = [f"<h1>attnbench perf report: {html.escape(run_dir.name)}</h1>"]
    for title, body in _sections(results):
        md.append(f"## {title}\n\n" + (body + "\n" if isinstance(body, str) else markdown_table(body)))
        page.append(f"<h2>{html.escape(title)}</h2>" +
                    (f"<p>{inline_html(body)}</p>" if isinstance(body, str) else html_table(body)))
    md.append("## Plots\n\n" + "\n\n".join(f"![{n}]({n})" if isinstance(d, bytes) else f"{n}: {d}"
                                             for n, d in pngs.items()) + "\n")
    page.append("<h2>Plots</h2>" + "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"></figure>'
        if isinstance(d, bytes) else f"<p class='note'>{inline_html(d)}</p>" for n, d in pngs.items()))
    style = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;font-size:13px;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f0f0f0}"
             "tr.flagged{background:#fff4f4}td.bad{background:#f8c8c8;font-weight:bold}"
             "td.warn{background:#fde3b0;font-weight:bold}td.good{color:#176917}"
             "code{background:#f2f2f2;padding:0 3px;border-radius:3px}"
             "figure{margin:1em 0}img{width:100%;max-width:1100px;display:block}p.note{color:#555}")
    (run_dir / "report.md").write_text("\n".join(md))
    (run_dir / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>attnbench "
                                         f"{html.escape(run_dir.name)}</title><style>{style}</style></head>"
                                         f"<body>{''.join(page)}</body></html>\n")
    return [run_dir / "report.md", run_dir / "report.html",
            *(run_dir / n for n, d in pngs.items() if isinstance(d, bytes))]


def format_summary(results: list[PointResult]) -> str:
    """The console summary printed after a sweep."""
    fastest, bad = fastest_rows(results), problem_rows(results)
    parts = [text_table(fastest) if len(fastest) > 1 else "no accurate point was measured"]
    measured = [r for r in results if r.status == "ok"]
    noisy = sum(bool(r.noisy) for r in measured)
    if noisy:
        # Out of the measured points: skipped ones (outside a backend's capabilities) cannot be noisy.
        parts.append(f"{noisy} of {len(measured)} measured points flagged noisy (the evidence column): their ranking "
                     "is a hint, not a measurement; re-run on a quiet machine or gate with `compare --interleaved`")
    if len(bad) > 1:
        parts.append(f"{len(bad) - 1} points implausible, inaccurate, suspicious or failed:\n" + text_table(bad))
    else:
        parts.append("every measured point is accurate and plausible; no error, oom or timeout")
    return "\n\n".join(parts)
