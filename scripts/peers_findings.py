"""What attention libraries we did not write get wrong, measured: reports/peers/findings.{md,json}.

    pip install -e ".[peers]" -e examples/peers          # transformers, keras and the adapters
    python scripts/peers_findings.py [--out reports/peers] [--only hf_eager,keras_numpy]

Every row is an `attnbench.check` verdict (check_forward / check_backward against the float64 reference), never
a typed number: the library and its version, the problem, the tensor, its max error, the plain formula's error
in the same dtype (the naive yardstick), their ratio, the verdict as conformance gives it (ok, known deviation,
FAIL) and how the adapter declares it. A problem outside what a backend declares (the adapters' documented
limitations) is measured on a probe: the same backend with its capability check lifted, so the row shows the
failure that the limitation keeps out of conformance. A backend that is unavailable here is listed with its
reason. The table renders from the JSON (`--render` re-renders without measuring).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")        # before triton is imported: tutorial 06 on a CPU
os.environ.setdefault("KERAS_BACKEND", "numpy")

from attnbench.check import check_backward, check_forward  # noqa: E402
from attnbench.deviations import deviations_for  # noqa: E402
from attnbench.implementations import get_backend  # noqa: E402
from attnbench.problem import Problem  # noqa: E402

LARGE = "inputs=large_logits"


@dataclass(frozen=True)
class Finding:
    """One measured problem: backend, problem spec, backward or not, and what it shows (in words)."""

    backend: str
    spec: str
    shows: str
    backward: bool = False


FINDINGS = (
    Finding("hf_sdpa", "B=2,H=4,N=97,M=113,D=80,dtype=float16", "control: torch SDPA under transformers"),
    Finding("hf_sdpa", "B=2,H=4,N=97,M=113,D=80,dtype=float64", "control: float64 kept"),
    Finding("hf_eager", "B=2,H=4,N=97,M=113,D=80,dtype=float16", "(Q Kᵀ) * scaling in float16"),
    Finding("hf_eager", "B=1,H=2,N=97,M=113,D=80,dtype=float16,seed=1", "(Q Kᵀ) * scaling in float16 (witness)"),
    Finding("hf_eager", "B=1,H=2,N=127,M=193,D=80,dtype=float16,causal=bottom_right,seed=2",
            "(Q Kᵀ) * scaling in float16"),
    Finding("hf_eager", "B=2,H=4,N=97,M=113,D=80,dtype=float16", "(Q Kᵀ) * scaling in float16, backward",
            backward=True),
    Finding("hf_eager", f"B=1,H=2,N=64,M=64,D=128,dtype=float16,{LARGE}", "Q Kᵀ overflows float16 before scaling"),
    Finding("hf_eager", f"B=1,H=2,N=64,M=64,D=128,dtype=bfloat16,{LARGE}", "Q Kᵀ rounded to bfloat16 before scaling"),
    Finding("hf_eager", "B=2,H=4,N=97,M=113,D=80,dtype=float64", "softmax forced to float32"),
    Finding("keras_numpy", "B=2,H=4,N=97,M=113,D=80,dtype=float16", "float16 einsum accumulates in float16"),
    Finding("keras_numpy", "B=1,H=2,N=1,M=200,D=64,dtype=float16", "float16 einsum accumulates in float16 (witness)"),
    Finding("keras_numpy", "B=1,H=2,N=61,M=77,D=64,dtype=float16,inputs=tiny", "float16 einsum, subnormal products"),
    Finding("keras_numpy", "B=1,H=2,N=128,M=1024,D=64,dtype=float16,seed=5", "float16 einsum accumulates in float16"),
    Finding("keras_numpy", "B=1,H=2,N=1,M=1024,D=64,dtype=float16", "float16 einsum accumulates in float16"),
    Finding("keras_numpy", "B=1,H=2,N=64,M=1024,D=64,dtype=float16,inputs=tiny", "float16 einsum, subnormal products"),
    Finding("keras_numpy", "B=1,H=2,N=128,M=16385,D=64,dtype=float16,seed=43", "float16 einsum accumulates in float16"),
    Finding("keras_numpy", "B=2,H=4,N=97,M=113,D=80,dtype=float64", "softmax forced to float32"),
    Finding("triton_tutorial06", "B=1,H=2,N=128,M=128,D=64,dtype=float16", "control: inside its constraints"),
    Finding("triton_tutorial06", "B=1,H=2,N=97,M=97,D=64,dtype=float16", "N not a multiple of 128"),
)


def library_version(backend: str) -> str:
    """'transformers 5.24.0', 'keras 3.15.1', 'triton 3.9.0 tutorial 06' (what the backend runs)."""
    from importlib.metadata import PackageNotFoundError, version

    package = {"hf": "transformers", "ke": "keras", "tr": "triton"}[backend[:2]]
    try:
        found = f"{package} {version(package)}"
    except PackageNotFoundError:
        found = f"{package} (not installed)"
    return found + (" tutorial 06" if backend == "triton_tutorial06" else "")


def probe(backend):
    """The backend with its capability check lifted (availability kept): it runs what it does not declare."""
    lifted = copy.copy(backend)
    lifted.why_not = lambda problem, device="cpu", *, need_grad=False: backend.unavailable_reason()
    return lifted


def declared(backend, problem: Problem, verdict_name: str, backward: bool) -> str:
    """How the adapter declares this: a known deviation's name, a limitation's reason, or 'declared'."""
    reason = backend.why_not(problem, "cpu", need_grad=backward)
    if reason:
        return f"limitation: {reason}"
    entry = next((d for d in deviations_for(backend.name, "cpu")
                  if verdict_name in d.tensors and d.applies(problem, backward)), None)
    return f"known deviation {entry.name}" if entry else "declared"


def _number(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def measure(finding: Finding) -> list[dict]:
    """One row per tensor checked (output, or dQ/dK/dV)."""
    backend = get_backend(finding.backend)
    problem = Problem.parse(finding.spec)
    base = dict(library=library_version(finding.backend), backend=finding.backend, problem=problem.spec(),
                pass_="backward" if finding.backward else "forward", shows=finding.shows)
    unavailable = backend.unavailable_reason()
    if unavailable:
        return [base | dict(tensor="-", verdict="unavailable", declared=unavailable)]
    check = check_backward if finding.backward else check_forward
    outside = backend.why_not(problem, "cpu", need_grad=finding.backward) is not None
    try:
        verdicts = check(probe(backend) if outside else backend, problem)
    except Exception as exc:  # noqa: BLE001 - a crash outside the declared problems is a finding too
        return [base | dict(tensor="-", verdict=f"raised {type(exc).__name__}: {exc}"[:200],
                            declared=declared(backend, problem, "output", finding.backward))]
    rows = []
    for v in verdicts:
        if v.name == "contract":
            continue
        ratio = v.max_error / v.naive_error if v.naive_error else None
        verdict = "ok" if v.passed else "FAIL"
        verdict = "known deviation" if v.passed and v.reason.startswith("known deviation") else verdict
        rows.append(base | dict(tensor=v.name, error=_number(v.max_error), naive_error=_number(v.naive_error),
                                ratio=_number(ratio), verdict=verdict, reason=v.reason,
                                declared=declared(backend, problem, v.name, finding.backward)))
    return rows


def _fmt(x) -> str:
    if x is None:
        return "-"
    return "nan/inf" if isinstance(x, float) and not math.isfinite(x) else f"{x:.3g}"


def render(rows: list[dict], meta: dict) -> str:
    head = ("| library | backend | problem | pass | tensor | error | plain-formula error | ratio | verdict | "
            "declared as |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['library']} | {r['backend']} | `{r['problem']}` | {r['pass_']} | {r['tensor']} | "
             f"{_fmt(r.get('error'))} | {_fmt(r.get('naive_error'))} | {_fmt(r.get('ratio'))} | {r['verdict']} | "
             f"{r['declared']} |" for r in rows]
    return (f"# Peers: what attnbench found in attention we did not write\n\n"
            f"Generated by `python scripts/peers_findings.py` from `attnbench.check` verdicts ({meta['when']}, "
            f"torch {meta['torch']}, numpy {meta['numpy']}, {meta['seconds']:.0f} s). ratio = error / the plain "
            f"formula's error in the same dtype (the budget's naive yardstick; conformance fails above 2x unless "
            f"a known deviation declares it). A row whose `declared as` is a limitation was measured outside "
            f"what the adapter declares (a probe), to show why it is left out.\n\n" + head + "\n".join(lines)
            + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/peers")
    parser.add_argument("--only", default=None, help="comma-separated backends")
    parser.add_argument("--render", action="store_true", help="re-render findings.md from findings.json only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        data = json.loads((out / "findings.json").read_text())
        (out / "findings.md").write_text(render(data["rows"], data["meta"]))
        return 0
    import time

    import numpy
    import torch

    only = set(args.only.split(",")) if args.only else None
    start, rows = time.time(), []
    for finding in FINDINGS:
        if only is None or finding.backend in only:
            rows += measure(finding)
            print(json.dumps(rows[-1]), file=sys.stderr)
    meta = dict(when=time.strftime("%Y-%m-%d"), torch=torch.__version__, numpy=numpy.__version__,
                seconds=time.time() - start)
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    (out / "findings.md").write_text(render(rows, meta))
    print(f"wrote {out / 'findings.md'} and findings.json ({len(rows)} rows, {meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
