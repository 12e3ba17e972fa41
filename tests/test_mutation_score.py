"""Mutation testing of the conformance suite: it must fail every mutant and pass their correct twin.

Each mutant (`conformance/mutants`) is the correct blockwise twin with one
realistic bug. For each, `pytest conformance -x --mutant NAME` runs in a
subprocess (as many at a time as this process's share of the cores); exit code 1 means a test
caught the bug ("killed"), 0 means the whole suite passed it (a survivor, i.e.
a hole in the suite: strengthen the cases, never delete the mutant). The table
printed with `pytest -s` names the test that killed each mutant.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:         # conformance/ is the repo's test suite, not an installed package
    sys.path.insert(0, str(ROOT))

from conformance.mutants import MUTANTS, TWINS  # noqa: E402


def side_by_side() -> int:
    """Suite runs at once: the cores this process may use, shared with the other pytest-xdist workers."""
    xdist_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, len(os.sched_getaffinity(0)) // xdist_workers)


KILLED, PASSED = 1, 0          # pytest exit codes; anything else (usage, collection error) is a broken run
FAILED_LINE = re.compile(r"^FAILED (\S+?)(?: - .*)?$", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    """One run of the conformance suite against one backend from conformance/mutants."""

    mutant: str
    returncode: int
    killer: str | None     # the first FAILED test id, if any
    seconds: float
    tail: str              # end of pytest's output, for a readable assertion message


def run_suite(mutant: str, *pytest_args: str, paths=("conformance",)) -> Outcome:
    """Run the conformance suite `paths` (stopping at the first failure) against `mutant`."""
    cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-x", "-p", "no:cacheprovider",
           "--mutant", mutant, *pytest_args]
    start = time.perf_counter()
    # One thread per run: the runs side by side already fill the cores; more threads only contend.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    found = FAILED_LINE.search(output)
    return Outcome(mutant, proc.returncode, found.group(1) if found else None, time.perf_counter() - start,
                   output[-3000:])


def run_all(names, *pytest_args: str) -> list[Outcome]:
    with ThreadPoolExecutor(side_by_side()) as pool:
        return list(pool.map(lambda name: run_suite(name, *pytest_args), names))


def survivors(outcomes: list[Outcome]) -> list[str]:
    return [o.mutant for o in outcomes if o.returncode == PASSED]


def score_table(outcomes: list[Outcome]) -> str:
    """The mutation score, then one line per mutant: killed or SURVIVED, by which test, in how long."""
    killed = sum(o.returncode == KILLED for o in outcomes)
    lines = [f"mutation score: {killed}/{len(outcomes)} killed"]
    for o in sorted(outcomes, key=lambda o: o.mutant):
        verdict = {KILLED: "killed", PASSED: "SURVIVED"}.get(o.returncode, f"BROKEN RUN (exit {o.returncode})")
        lines.append(f"  {o.mutant:28s} {verdict:9s} {o.seconds:5.1f}s  {o.killer or ''}")
    return "\n".join(lines)


@pytest.mark.starts_first
def test_suite_passes_the_twins_and_kills_every_mutant(record_property):
    outcomes = run_all([*TWINS, *sorted(MUTANTS)])
    twins, mutants = outcomes[:len(TWINS)], outcomes[len(TWINS):]
    # The score belongs in every CI log, not only in failures: the root conftest prints this property in the
    # terminal summary, which works under pytest-xdist too (a worker's stdout never reaches the log).
    record_property("summary", score_table(mutants))
    for twin in twins:     # the plain twin, and one rounding P to the input dtype as FlashAttention does
        assert twin.returncode == PASSED, f"the correct {twin.mutant} must pass the suite:\n{twin.tail}"
        # Mutants share the twin's capabilities, so a case the twin skips is one no mutant is ever checked on.
        assert "skipped" not in twin.tail, f"{twin.mutant} must run every case:\n{twin.tail}"
    broken = [o for o in mutants if o.returncode not in (KILLED, PASSED)]
    assert not broken, "runs that neither passed nor failed a test:\n" + "\n".join(o.tail for o in broken)
    assert not survivors(mutants), f"the suite lets these mutants pass: {survivors(mutants)}\n{score_table(mutants)}"


def test_meta_test_reports_a_survivor_when_the_suite_cannot_see_the_bug():
    """Blind the suite to causal cases: the causal off-by-one mutant must then be reported as surviving."""
    no_causal = "not top_left and not bottom_right"     # causal problem ids name the alignment
    outcomes = [run_suite("causal_off_by_one", "-k", no_causal, paths=("conformance/test_agreement.py",))]
    table = score_table(outcomes)
    print("\n" + table)
    assert survivors(outcomes) == ["causal_off_by_one"]
    assert "mutation score: 0/1" in table and "SURVIVED" in table


@pytest.mark.parametrize("output, killer", [
    ("FAILED conformance/test_agreement.py::test_forward[m-cpu-float32-B2] - AssertionError: x\n",
     "conformance/test_agreement.py::test_forward[m-cpu-float32-B2]"),
    ("1 passed in 0.1s\n", None),
])
def test_killer_is_the_first_failed_line(output, killer):
    found = FAILED_LINE.search(output)
    assert (found.group(1) if found else None) == killer
