"""One verdict per (backend, problem, device), whoever asks: `attnbench check`, every conformance test, perf.

    result = evaluate(backend, problem, device, backward=True)
    result.skipped          the backend's reason not to run it (its capabilities), or None
    result.forward          `check.Verdicts` of O (and lse): contract, budget, declared precision, lean
    result.backward         the same for dQ, dK, dV (None unless asked)
    result.passed           True / False, None when skipped
    result.notes            the declared known deviations the verdicts were judged inside
    result.message()        every verdict, the deviations and the repro line of each pass that ran

Everything a verdict depends on is decided here or below (`check.check_forward` / `check_backward`: the
reference, the rows, the call's contract, the known-deviation judgement), so a problem cannot pass on one path
and fail on another.
"""
from __future__ import annotations

from dataclasses import dataclass

from attnbench.check import Verdicts, check_backward, check_forward, failure_message
from attnbench.problem import Inputs, Problem
from attnbench.reference import layouts as kv_layouts


@dataclass
class Evaluation:
    """The outcome of `evaluate`: a skip with its reason, or the forward (and backward) verdicts."""

    backend: str
    problem: Problem
    device: str
    skipped: str | None = None
    forward: Verdicts | None = None
    backward: Verdicts | None = None

    @property
    def passes(self) -> list[tuple[str, Verdicts]]:
        return [(name, v) for name, v in (("forward", self.forward), ("backward", self.backward)) if v is not None]

    @property
    def passed(self) -> bool | None:
        if self.skipped is not None:
            return None
        return all(v.passed for _, verdicts in self.passes for v in verdicts)

    @property
    def max_error(self) -> float:
        """The largest error over every numeric verdict (inf when a pass has none, e.g. a broken contract)."""
        errors = [v.max_error for _, verdicts in self.passes for v in verdicts if v.name != "contract"]
        return max(errors, default=float("inf"))

    @property
    def notes(self) -> list[str]:
        return [note for _, verdicts in self.passes for note in verdicts.notes]

    @property
    def unjudged(self) -> list[str]:
        """What the backend returned that no verdict judged, with the reason (a row-sampled check's d sink)."""
        return [line for _, verdicts in self.passes for line in verdicts.unjudged]

    route: str | None = None      # how a KV layout problem was read: None (natively, or dense), "pad-and-mask"

    def message(self) -> str:
        if self.skipped is not None:
            return f"{self.backend} does not support {self.problem.id}: {self.skipped}"
        route = ([f"kv={self.problem.kv} read via {self.route} (padded to the dense view, a bool mask per sequence)"]
                 if self.route else [])
        return "\n".join(route + [failure_message(self.backend, self.problem, verdicts, self.device,
                                                  backward=name == "backward") for name, verdicts in self.passes])


def evaluate(backend, problem: Problem, device: str = "cpu", *, backward: bool = False, forward: bool = True,
             rows=None, inputs: Inputs | None = None) -> Evaluation:
    """Run `backend` on `problem` and judge it: the forward (unless forward=False) and, with backward, the
    gradients. A problem outside the backend's capabilities is not run: `skipped` says why.

    rows: as in `check.check_forward` (None: all rows at small sizes, a sample at length); inputs: None for the
    problem's own (cached reference), or arrays of the problem's shapes (a metamorphic test's variant).
    """
    result = Evaluation(backend.name, problem, device)
    result.skipped = backend.why_not(problem, device, need_grad=backward)
    if result.skipped is not None:
        return result
    if kv_layouts.needs_storage(problem) and not backend.capabilities(device).reads_kv(problem):
        result.route = "pad-and-mask"
    if forward:
        result.forward = check_forward(backend, problem, device, inputs=inputs, rows=rows)
    if backward:
        result.backward = check_backward(backend, problem, device, inputs=inputs, rows=rows)
    return result
