"""Mutation testing of the conformance suite: it must fail every mutant and pass their correct twins.

Each mutant (`conformance/mutants`) is the correct blockwise twin with one
realistic bug. For each, `pytest conformance -x --mutant NAME` runs in a
subprocess; exit code 1 means a test caught the bug ("killed"), 0 means the
whole suite passed it (a survivor, i.e. a hole in the suite: strengthen the
cases, never delete the mutant). Each twin and each mutant is its own test, so
pytest-xdist spreads the runs over every worker (one serial test was CI's
critical path), and a failure names the survivor. The score, with the test that
killed each mutant, is printed in the terminal summary by the root conftest.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:         # conformance/ is the repo's test suite, not an installed package
    sys.path.insert(0, str(ROOT))

from conformance.mutants import MUTANTS, TWINS  # noqa: E402


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
    # One thread per run: pytest-xdist's workers already fill the cores; more threads only contend.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    found = FAILED_LINE.search(output)
    return Outcome(mutant, proc.returncode, found.group(1) if found else None, time.perf_counter() - start,
                   output[-3000:])


def survivors(outcomes: list[Outcome]) -> list[str]:
    return [o.mutant for o in outcomes if o.returncode == PASSED]


def score_line(o: Outcome) -> str:
    """One mutant's line of the score: killed or SURVIVED, by which test, in how long."""
    verdict = {KILLED: "killed", PASSED: "SURVIVED"}.get(o.returncode, f"BROKEN RUN (exit {o.returncode})")
    return f"  {o.mutant:28s} {verdict:9s} {o.seconds:5.1f}s  {o.killer or ''}"


def score_table(outcomes: list[Outcome]) -> str:
    """The mutation score, then one line per mutant."""
    killed = sum(o.returncode == KILLED for o in outcomes)
    return "\n".join([f"mutation score: {killed}/{len(outcomes)} killed",
                      *(score_line(o) for o in sorted(outcomes, key=lambda o: o.mutant))])


@pytest.mark.starts_first
@pytest.mark.parametrize("twin", sorted(TWINS))
def test_the_suite_passes_the_correct_twin(twin):
    """The plain twin, and one rounding P to the input dtype as FlashAttention does: no false alarm."""
    outcome = run_suite(twin)
    assert outcome.returncode == PASSED, f"the correct {twin} must pass the suite:\n{outcome.tail}"
    # Mutants share the twin's capabilities, so a case the twin skips is one no mutant is ever checked on.
    assert "skipped" not in outcome.tail, f"{twin} must run every case:\n{outcome.tail}"


@pytest.mark.starts_first
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_suite_kills_the_mutant(mutant, record_property):
    outcome = run_suite(mutant)
    # The score belongs in every CI log, not only in failures: the root conftest gathers these lines into the
    # terminal summary, which works under pytest-xdist too (a worker's stdout never reaches the log).
    record_property("mutation", score_line(outcome))
    assert outcome.returncode in (KILLED, PASSED), f"{mutant}: neither passed nor failed a test:\n{outcome.tail}"
    assert outcome.returncode == KILLED, f"the suite lets {mutant} pass (a hole in the suite):\n{outcome.tail}"


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
