"""Parametrize conformance tests over (backend, device, problem) from the registry's capabilities.

A test that takes the fixtures `backend` and `device` but not `problem` (the
property, invariant and bad-input suites, which draw or build their own
problems) is generated once per available backend x device.

A test that takes the fixtures `backend`, `device` and `problem` is generated
for every registered backend x device x problem in the module's `PROBLEMS`
(and with `NEEDS_GRAD = True`, only problems checked for gradients). A problem
a backend does not declare is a skip carrying its reason, so `pytest -ra`
lists what was not checked and why.

    pytest conformance --backend torch_eager --backend numpy
    pytest conformance --device cuda
    pytest conformance --mutant no_rescale    # a deliberately wrong backend (conformance/mutants) alone
    pytest conformance --mutant no_rescale,mean_v   # several, each stopped at its first failure (one start-up)
    attnbench conformance --plugin my_attn.py --backend my_attn   # the suite as installed, from any directory
"""
from __future__ import annotations

import os

import torch

# Without CUDA, Triton kernels can only run under the interpreter, which triton.jit picks when a kernel is
# decorated: set it here, before any backend module (and so triton) is imported. An explicit setting wins.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from attnbench.implementations import all_backends, get_backend  # noqa: E402
from attnbench.implementations.registry import register  # noqa: E402
from attnbench.pytest_plugin import register as register_suite_options  # noqa: E402


def pytest_addoption(parser, pluginmanager):
    """The suite's options (--backend, --device, --plugin, --long, ...) and hypothesis profiles live in
    attnbench/pytest_plugin.py, defined once whether this conftest, the repository's or the entry point asks."""
    register_suite_options(pluginmanager)


def selected_mutants(config) -> list[str]:
    """The names given to --mutant (comma-separated), or []."""
    return [name for name in (config.getoption("--mutant") or "").split(",") if name]


def selected_backends(config):
    mutants = selected_mutants(config)
    if mutants:
        from .mutants import make_backend

        for name in mutants:
            register(make_backend(name))
        return [get_backend(name) for name in mutants]
    names = config.getoption("--backend")
    return [get_backend(n) for n in names] if names else all_backends()


def selected_devices(config):
    devices = config.getoption("--device")
    if devices:
        return devices
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def backend_device_params(config):
    """pytest params (backend, device) for every selected backend x device; unusable pairs skip with the reason."""
    params = []
    for backend in selected_backends(config):
        for device in selected_devices(config):
            reason = backend.unavailable_reason() or backend.device_unavailable_reason(device)
            marks = [pytest.mark.skip(reason=f"{backend.name}: {reason}")] if reason else []
            params.append(pytest.param(backend, device, marks=marks, id=f"{backend.name}-{device}"))
    return params


def _too_big(config, problem, backend: str = "") -> str | None:
    """A --long case too big for a backend that materialises (N, M), unless the backend was named explicitly, or
    one that needs more memory than the machine has (`long_cases.memory_short`)."""
    from .long_cases import LONG_PATTERN_BYTES, memory_short, pattern_bytes

    short = memory_short(problem, backend, bool(config.getoption("--backend")))
    if short:
        return short
    if config.getoption("--backend") or config.getoption("--mutant") or pattern_bytes(problem) <= LONG_PATTERN_BYTES:
        return None
    return (f"(N, M) pattern of {pattern_bytes(problem) / 2**30:.0f} GiB: name an O(N)-memory backend with "
            "--backend to run it")


def pytest_generate_tests(metafunc):
    if {"backend", "device"} <= set(metafunc.fixturenames) and "problem" not in metafunc.fixturenames:
        metafunc.parametrize(("backend", "device"), backend_device_params(metafunc.config))
        return
    if not {"backend", "problem"} <= set(metafunc.fixturenames):
        return
    problems = getattr(metafunc.module, "PROBLEMS")
    if callable(problems):                       # chosen by command-line options (the flash grid)
        problems = problems(metafunc.config)
    problems = list(problems)
    if metafunc.config.getoption("--long"):
        problems += getattr(metafunc.module, "LONG_PROBLEMS", [])
    need_grad = getattr(metafunc.module, "NEEDS_GRAD", False)
    params = []
    for backend in selected_backends(metafunc.config):
        for device in selected_devices(metafunc.config):
            for problem in problems:
                reason = (backend.why_not(problem, device, need_grad=need_grad)
                          or _too_big(metafunc.config, problem, backend.name))
                marks = [pytest.mark.skip(reason=f"{backend.name}: {reason}")] if reason else []
                params.append(pytest.param(backend, device, problem, marks=marks,
                                           id=f"{backend.name}-{device}-{problem.id}"))
    metafunc.parametrize(("backend", "device", "problem"), params)


# --- several mutants in one session: each stops at its first failure, as `-x` stops a session of one -------------

_killed: set[str] = set()


def _backend_of(item) -> str | None:
    backend = getattr(item, "callspec", None) and item.callspec.params.get("backend")
    return getattr(backend, "name", None)


def pytest_runtest_setup(item):
    """With several --mutant names, a mutant already failed by a test is not run again: its first failure is its
    killer, and the session costs one start-up instead of one per mutant (tests/test_mutation_score.py)."""
    if len(selected_mutants(item.config)) > 1 and _backend_of(item) in _killed:
        pytest.skip(f"{_backend_of(item)} already killed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and len(selected_mutants(item.config)) > 1 and _backend_of(item) is not None:
        _killed.add(_backend_of(item))


def pytest_collection_modifyitems(config, items):
    """With --mutant, only the tests that run a backend: the others (the Triton launch configs under the
    interpreter, the known deviations of torch's kernels) never call a mutant or a twin, so they can neither kill
    one nor fail a correct twin, and they cost each of the meta-test's six sessions about 45 s."""
    if not selected_mutants(config):
        return
    runs_a_backend = ["backend" in getattr(item, "fixturenames", ()) for item in items]
    if not all(runs_a_backend):
        config.hook.pytest_deselected(items=[item for item, keep in zip(items, runs_a_backend) if not keep])
        items[:] = [item for item, keep in zip(items, runs_a_backend) if keep]
