"""The conformance suite's pytest options, hypothesis profiles and settings: one definition, wherever it runs.

    pytest conformance --backend torch_eager               # a checkout: the conftests register them
    attnbench conformance --backend my_attn --plugin my_attn.py   # installed: pytest on the packaged suite
    pytest --pyargs attnbench.conformance --backend my_attn       # installed: the pytest11 entry point

`attnbench conformance` (and pytest given the suite's directory) loads `conformance/conftest.py` before
parsing the command line, and the conftest registers `SuiteOptions`. pytest loads no conftest of a
`--pyargs` package that early, so this module is also the `pytest11` entry point `attnbench_conformance`:
it registers `SuiteOptions` when `--pyargs` names the suite, and otherwise adds nothing. The options have
plain names (`--backend`, `--device`) that another project's conftest may define too; registered in every
pytest session of an environment holding attnbench, they would break that project's tests.

`register()` is idempotent by plugin name, so the options are defined once when both the entry point and
a conftest (or the repository's root conftest) ask for them.

Hypothesis profiles:

    ci        (default) few examples, derandomized, no example database: the same
              examples on every run and machine, so CI is reproducible and bounded.
    thorough  many random examples, for a night run or before a release.

Pick one with `ATTNBENCH_HYPOTHESIS_PROFILE=thorough` or `pytest --hypothesis-profile thorough` (the
flag wins: hypothesis' pytest plugin loads it at configure, after `register()` ran).
`ATTNBENCH_THOROUGH_EXAMPLES=N` sets the thorough profile's examples per test (default 500).
"""
from __future__ import annotations

import os

import pytest

NAME = "attnbench-conformance-options"
SUITE = "attnbench.conformance"


class SuiteOptions:
    """The suite's command-line options and what they do at configure time, as one pytest plugin object."""

    def pytest_addoption(self, parser):
        group = parser.getgroup("attnbench")
        group.addoption("--backend", action="append", default=[], help="check only this backend (repeatable)")
        group.addoption("--plugin", action="append", default=[], metavar="FILE.py",
                        help="import this backend file first (repeatable): its @register backends join the suite")
        group.addoption("--device", action="append", default=[],
                        help="device to check on (repeatable; default: cpu, plus cuda when present)")
        group.addoption("--grid", default=None, choices=("flash",),
                        help="flash: run FlashAttention's whole test grid (conformance/flash_grid.py, 5,184 problems, "
                             "forward and backward); without it CI runs a slice")
        group.addoption("--mutant", default=None,
                        help="register this deliberately wrong backend from conformance/mutants (or 'twin') and "
                             "check only it: the meta-test's way to prove the suite catches bugs")
        group.addoption("--long", action="store_true",
                        help="add the long-context cases up to N = M = 65,536 (conformance/long_cases.py); a case "
                             "whose (N, M) pattern exceeds 2 GiB runs only for backends named with --backend")

    def pytest_configure(self, config):
        """An unknown --backend, or a --device that cannot run here, is one usage line (exit 4): not a traceback
        per collected module, and not a run where every case skips and the session passes."""
        # torch's warning for its lower-right causal bias, on every bottom_right case; the suite checks the result.
        config.addinivalue_line("filterwarnings", "ignore:Lower right causal bias:UserWarning")
        plugins, names, devices = (config.getoption(o) for o in ("--plugin", "--backend", "--device"))
        if not (plugins or names or devices):
            return
        from attnbench.cli import use_triton_interpreter_without_cuda
        from attnbench.devices import device_unavailable_reason
        from attnbench.implementations import get_backend
        from attnbench.implementations.registry import load_plugins
        from attnbench.reference import AttentionInputError

        # Before the backends below import triton: under --pyargs the suite's conftest has not run yet.
        use_triton_interpreter_without_cuda()
        try:
            load_plugins(plugins)
        except AttentionInputError as exc:
            raise pytest.UsageError(str(exc)) from None
        for name in names:
            try:
                get_backend(name)
            except (KeyError, AttentionInputError) as exc:   # AttentionInputError: a function that cannot load
                raise pytest.UsageError(f"--backend: {exc.args[0]}") from None
        for device in devices:
            reason = device_unavailable_reason(device)
            if reason:
                raise pytest.UsageError(f"--device {device}: {reason}")


def _register_hypothesis_profiles() -> None:
    from hypothesis import HealthCheck, settings

    # Drawing whole problems is slow-ish and filtering by capabilities rejects some draws; neither is a bug.
    quiet = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=25, derandomize=True, database=None, deadline=None,
                              suppress_health_check=quiet, print_blob=True)
    settings.register_profile("thorough", max_examples=int(os.environ.get("ATTNBENCH_THOROUGH_EXAMPLES", "500")),
                              deadline=None, suppress_health_check=quiet, print_blob=True)
    settings.load_profile(os.environ.get("ATTNBENCH_HYPOTHESIS_PROFILE", "ci"))


def register(pluginmanager) -> None:
    """Define the suite's options and load its hypothesis profile, once per pytest session (any caller)."""
    if pluginmanager.has_plugin(NAME):
        return
    _register_hypothesis_profiles()
    pluginmanager.register(SuiteOptions(), NAME)


def _names_suite(arg: str) -> bool:
    module = arg.split("::")[0]
    return module == SUITE or module.startswith(SUITE + ".")


def pytest_load_initial_conftests(early_config, parser, args):
    """The entry point's one hook: `--pyargs attnbench.conformance[.module]` gets the suite's options."""
    namespace = early_config.known_args_namespace
    if namespace.pyargs and any(_names_suite(arg) for arg in namespace.file_or_dir):
        register(early_config.pluginmanager)
