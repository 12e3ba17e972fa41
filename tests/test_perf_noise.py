"""Noise control: detection of noisy timings, between-process statistics, the pre-call check's reuse of probed caps.

Pure functions on synthetic samples, so each property is pinned exactly; the
end-to-end behaviour under a real load is in test_perf_trust.py.
"""
import numpy as np
import pytest

from attnbench.perf import noise
from attnbench.perf.records import flops, flops_fa2
from attnbench.problem import Problem


def test_timer_quantized_samples_are_detected():
    # Seen under load: samples in ~4 ms steps (scheduler ticks) instead of a continuous spread.
    rng = np.random.default_rng(0)
    ticks = 20e-3 + 4e-3 * rng.integers(0, 4, size=30) + rng.normal(0, 20e-6, size=30)
    assert noise.quantum(ticks) == pytest.approx(4e-3, rel=0.05)


@pytest.mark.parametrize("samples", [
    np.random.default_rng(1).normal(20e-3, 0.5e-3, size=30),          # a continuous spread
    np.full(30, 20e-3) + np.random.default_rng(2).normal(0, 1e-6, 30),  # one tight cluster
])
def test_continuous_or_tight_samples_are_not_called_quantized(samples):
    assert noise.quantum(samples) is None


def test_a_worker_that_lost_its_cpu_is_noisy():
    reasons = noise.verdict({"cpu_share": 0.6, "robust_cv": 0.02, "between_cv": 0.01})
    assert len(reasons) == 1 and "60%" in reasons[0]
    assert noise.verdict({"cpu_share": 0.99, "robust_cv": 0.02, "between_cv": 0.01, "quantum_s": None}) == []


def test_processes_that_disagree_make_a_point_noisy_and_set_its_interval():
    # The torch_eager: identical fresh processes read 25 / 55 / 69 ms while each was tight inside.
    runs = [{"samples": list(m * (1 + 0.001 * np.arange(10))), "first_call_s": m, "peak_bytes": 1 << 20,
             "cpu_share": 1.0, "minor_faults_per_call": 0.0, "error_vs_ref": 1e-7, "accurate": True}
            for m in (25e-3, 55e-3, 69e-3)]
    fields = noise.merge(runs)
    lo, hi = fields["time_ci95_s"]
    assert lo < 25e-3 and hi > 69e-3                       # the interval covers what reruns read
    assert fields["time_median_s"] == pytest.approx(55e-3 * 1.0045)      # the middle process's median
    assert fields["noisy"] and "disagree" in fields["noise"]["reasons"][0]


def test_a_point_whose_calls_keep_faulting_says_it_is_not_steady():
    runs = [{"samples": [1e-3] * 10, "first_call_s": 1e-3, "peak_bytes": 1 << 20, "cpu_share": 1.0,
             "minor_faults_per_call": 16352.0}]                # the torch_eager N=1024 without the fix
    assert noise.merge(runs)["noise"]["steady_state"] is False


def test_fa2_flop_convention_is_recorded_beside_ours():
    p = Problem(B=1, H=4, N=256, M=256, D=64, dtype="float32")
    assert flops_fa2(p, "fwd") == flops(p, "fwd")
    assert flops_fa2(p, "fwd+bwd") / flops(p, "fwd+bwd") == pytest.approx(3.5 / 3.0)


def test_child_pre_call_check_uses_the_parents_capabilities(monkeypatch):
    # why_not -> device_unavailable_reason used to re-run the SDPA kernel probes (1-2 s per point) in every worker.
    from attnbench.implementations import get_backend, torch_sdpa
    from attnbench.perf.spec import Case
    from attnbench.perf.worker import _reuse_capabilities
    import dataclasses

    backend = get_backend("torch_sdpa_flash")
    known = backend.capabilities("cpu")
    caps = dataclasses.asdict(known)
    problem = Problem(B=1, H=2, N=64, M=64, D=16, dtype="float32")

    def no_probe(*args):
        raise AssertionError("probed again in the worker")

    monkeypatch.setattr(torch_sdpa, "probe_capabilities", no_probe)
    monkeypatch.setattr(backend, "_adopted", {})                           # what it adopts is undone afterwards
    _reuse_capabilities(Case("torch_sdpa_flash", problem), caps)
    assert backend.why_not(problem, "cpu") is None
    assert backend.capabilities("cpu") == known
    # The backend declares the reuse (adopt_capabilities); the worker used to shadow its methods with lambdas.
    assert not {"capabilities", "device_unavailable_reason"} & set(vars(backend))
