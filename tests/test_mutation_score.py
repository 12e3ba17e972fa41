"""Mutation testing of the conformance suite: it must fail every mutant and pass their correct twins.

Each mutant (`conformance/mutants`) is the correct blockwise twin with one
realistic bug. `pytest conformance --mutant A,B,...` runs a group of them in a
subprocess, each stopped at its first failure as `-x` stops a session of one
(conformance/conftest.py): a mutant with a FAILED test is "killed", one without
passed the whole suite (a survivor, i.e. a hole in the suite: strengthen the
cases, never delete the mutant). A group pays one pytest start-up (about 6 s of
the 7-20 s a mutant's own run took) and the groups and twins are separate tests,
so pytest-xdist spreads them over every worker; a failure names the survivor.
The score, with the test that killed each mutant, is printed in the terminal
summary by the root conftest.
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
    return _outcomes([mutant], *_run(mutant, "-x", *pytest_args, paths=paths))[0]


def run_group(mutants: tuple[str, ...]) -> list[Outcome]:
    """Run the whole conformance suite once against every mutant of `mutants`, each to its first failure."""
    return _outcomes(mutants, *_run(",".join(mutants)))


def _run(mutants: str, *pytest_args: str, paths=("conformance",)) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", "--mutant", mutants, *pytest_args]
    start = time.perf_counter()
    # One thread per run: pytest-xdist's workers already fill the cores; more threads only contend.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def _outcomes(mutants, returncode: int, output: str, seconds: float) -> list[Outcome]:
    """Each mutant's outcome from one run's exit code and output: its killer is the first FAILED test whose id
    names it (`test_x[NAME-cpu-...]`); none in a run that ended normally (exit 0 or 1) means it survived."""
    failed = FAILED_LINE.findall(output)
    outcomes = []
    for mutant in mutants:
        killer = next((t for t in failed if re.search(rf"\[{re.escape(mutant)}-(cpu|cuda)\b", t)), None)
        if len(mutants) == 1 and killer is None and failed:      # a run of one: any failure is its own
            killer = failed[0]
        code = KILLED if killer else (PASSED if returncode in (KILLED, PASSED) else returncode)
        outcomes.append(Outcome(mutant, code, killer, seconds, output[-3000:]))
    return outcomes


def survivors(outcomes: list[Outcome]) -> list[str]:
    return [o.mutant for o in outcomes if o.returncode == PASSED]


def score_line(o: Outcome) -> str:
    """One mutant's line of the score: killed or SURVIVED, by which test, in how long."""
    verdict = {KILLED: "killed", PASSED: "SURVIVED"}.get(o.returncode, f"BROKEN RUN (exit {o.returncode})")
    return f"  {o.mutant:30s} {verdict:9s} (run {o.seconds:5.1f}s)  {o.killer or ''}"


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


GROUPS = 4     # mutant runs: enough tests for pytest-xdist to spread over CI's 2 workers beside the twins


def mutant_groups(names, groups: int = GROUPS) -> list[tuple[str, ...]]:
    """`names` sorted and dealt into `groups` runs."""
    names = sorted(names)
    return [tuple(names[i::groups]) for i in range(min(groups, len(names)))]


@pytest.mark.starts_first
@pytest.mark.parametrize("group", mutant_groups(MUTANTS), ids=lambda g: f"{g[0]}..{g[-1]}")
def test_the_suite_kills_every_mutant(group, record_property):
    outcomes = run_group(group)
    # The score belongs in every CI log, not only in failures: the root conftest gathers these lines into the
    # terminal summary, which works under pytest-xdist too (a worker's stdout never reaches the log).
    for outcome in outcomes:
        record_property("mutation", score_line(outcome))
    broken = [o for o in outcomes if o.returncode not in (KILLED, PASSED)]
    assert not broken, "a run that neither passed nor failed a test:\n" + broken[0].tail if broken else ""
    assert not survivors(outcomes), (f"the suite lets {survivors(outcomes)} pass (a hole in the suite):\n"
                                     f"{score_table(outcomes)}")


def test_a_group_run_names_each_mutants_own_killer_and_its_survivors():
    """A group of two mutants, the suite narrowed to causal-free agreement cases: the causal mutant survives
    (nothing can see it), the scale mutant is killed by a test whose id names it, not by the other's."""
    no_causal = "not top_left and not bottom_right"
    outcomes = _outcomes(("causal_off_by_one", "scale_missing"),
                         *_run("causal_off_by_one,scale_missing", "-k", no_causal,
                               paths=("conformance/test_agreement.py",)))
    assert survivors(outcomes) == ["causal_off_by_one"]
    assert outcomes[1].returncode == KILLED and "[scale_missing-cpu" in outcomes[1].killer


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


def test_the_hand_written_backward_the_accumulator_mutants_share_is_correct():
    """`TiledBackwardTwin` is no suite twin, so nothing else shows that its mutants die of their own bug: it must
    pass the ragged backward case with per-batch ALiBi slopes (one `attention` call per sequence before any
    backward: it read the last sequence's slopes and sizes for all of them, and crashed). The suite's other
    backward cases and CI's flash grid slice it passes too (about a minute: not in CI)."""
    from attnbench.evaluate import evaluate
    from conformance.cases import BACKWARD_PROBLEMS
    from conformance.mutants.twin import TiledBackwardTwin

    chosen = [p for p in BACKWARD_PROBLEMS if p.kv == "ragged" and p.mod("alibi") is not None]
    assert chosen
    for problem in chosen[:1]:
        result = evaluate(TiledBackwardTwin(), problem, backward=True, forward=False)
        assert result.skipped is None and result.passed, result.message()
