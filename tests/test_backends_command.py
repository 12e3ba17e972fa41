"""`attnbench backends` says what `check` would run (a simulated backend as such), and loads without perf."""
import subprocess
import sys

import pytest

from attnbench.backends_table import backend_row, format_table
from attnbench.implementations import Backend, Capabilities


class Simulated(Backend):
    """simulated: a stand-in for a kernel that runs here under a simulator."""

    name = "simulated_stub"
    caps = Capabilities(dtypes=("float16",))

    def simulated_reason(self, device):
        return "runs under the Triton interpreter on the CPU"

    def prepare(self, inputs, problem, *, device="cpu", return_lse=False):
        raise NotImplementedError

    def to_numpy(self, value):
        raise NotImplementedError


def test_a_backend_that_runs_under_a_simulator_is_listed_as_simulated_with_what_the_commands_do():
    row = backend_row(Simulated(), "cpu")
    assert row["available"] and row["simulated"] == "runs under the Triton interpreter on the CPU"
    lines = format_table([row]).splitlines()
    assert lines[1].split()[:3] == ["simulated_stub", "cpu", "simulated"]
    assert lines[2].strip().startswith("simulated: runs under the Triton interpreter on the CPU: check and")
    assert "(1 simulated)" in lines[-1]


@pytest.mark.parametrize("argv", [["backends"], ["check", "numpy", "--problem", "N=4"], ["--version"], ["--help"]])
def test_commands_outside_perf_build_their_parser_without_importing_perf(argv):
    code = ("import sys; from attnbench.cli import _command, build_parser; "
            f"build_parser(_command({argv!r})); "
            "print(sorted(m for m in sys.modules if m.startswith('attnbench.perf')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_perf_command_still_gets_its_options():
    from attnbench.cli import build_parser

    args = build_parser("perf").parse_args(["perf", "--quick", "--backends", "numpy"])
    assert args.quick and args.backends == "numpy" and args.func.__name__ == "run_perf"
    args = build_parser("compare").parse_args(["compare", "--interleaved", "numpy", "torch_eager"])
    assert args.interleaved and args.func.__name__ == "run_compare"


@pytest.mark.parametrize("argv, absent", [
    (["--version"], ("numpy", "torch", "importlib.metadata", "attnbench.reference")),
    (["--help"], ("numpy", "torch", "importlib.metadata", "attnbench.reference")),
    (["backends"], ("jax", "attnbench.perf")),      # a backend's heavy package is imported when it is used
])
def test_a_command_imports_only_what_it_needs(argv, absent):
    """`--version` and `--help` in well under 0.3 s: no NumPy (attnbench.errors), no importlib.metadata."""
    code = ("import sys\nfrom attnbench.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in %r if m in sys.modules), file=sys.stderr)") % (argv, absent)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "[]", done.stderr
