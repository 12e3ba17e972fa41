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

from . import _hypothesis  # noqa: F401 - registers and loads the hypothesis profiles


def pytest_addoption(parser):
    group = parser.getgroup("attnbench")
    group.addoption("--backend", action="append", default=[], help="check only this backend (repeatable)")
    group.addoption("--plugin", action="append", default=[], metavar="FILE.py",
                    help="import this backend file first (repeatable): its @register backends join the suite")
    group.addoption("--device", action="append", default=[],
                    help="device to check on (repeatable; default: cpu, plus cuda when present)")
    group.addoption("--grid", default=None, choices=("flash",),
                    help="flash: run FlashAttention's whole test grid (conformance/flash_grid.py, 648 problems, "
                         "forward and backward); without it CI runs a slice")
    group.addoption("--mutant", default=None,
                    help="register this deliberately wrong backend from conformance/mutants (or 'twin') and check "
                         "only it: the meta-test's way to prove the suite catches bugs")
    group.addoption("--long", action="store_true",
                    help="add the long-context cases up to N = M = 65,536 (conformance/long_cases.py); a case "
                         "whose (N, M) pattern exceeds 2 GiB runs only for backends named with --backend")


def pytest_configure(config):
    """An unknown --backend, or a --device that cannot run here, is one usage line (exit 4): not a traceback per
    collected module, and not a run where every case skips and the session passes."""
    from attnbench.devices import device_unavailable_reason
    from attnbench.implementations.registry import load_plugins
    from attnbench.reference import AttentionInputError

    try:
        load_plugins(config.getoption("--plugin"))
    except AttentionInputError as exc:
        raise pytest.UsageError(str(exc)) from None
    for name in config.getoption("--backend"):
        try:
            get_backend(name)
        except KeyError as exc:
            raise pytest.UsageError(f"--backend: {exc.args[0]}") from None
    for device in config.getoption("--device"):
        reason = device_unavailable_reason(device)
        if reason:
            raise pytest.UsageError(f"--device {device}: {reason}")


def selected_backends(config):
    mutant = config.getoption("--mutant")
    if mutant:
        from .mutants import make_backend

        register(make_backend(mutant))
        return [get_backend(mutant)]
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


def _too_big(config, problem) -> str | None:
    """A --long case too big for a backend that materialises (N, M), unless the backend was named explicitly."""
    from .long_cases import LONG_PATTERN_BYTES, pattern_bytes

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
                reason = backend.why_not(problem, device, need_grad=need_grad) or _too_big(metafunc.config,
                                                                                           problem)
                marks = [pytest.mark.skip(reason=f"{backend.name}: {reason}")] if reason else []
                params.append(pytest.param(backend, device, problem, marks=marks,
                                           id=f"{backend.name}-{device}-{problem.id}"))
    metafunc.parametrize(("backend", "device", "problem"), params)
