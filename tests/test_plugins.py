"""Adding a backend: a file dropped into implementations/ or a package's entry point is found, listed, checked
and timed; a plugin that fails to load is reported and skipped, never fatal."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
import torch

from attnbench.cli import main
from attnbench.implementations import registry
from attnbench.implementations.torch_eager import TorchEager

REPO = Path(__file__).resolve().parents[1]
DROPPED_MODULE = "aa_dropped_for_test"   # sorts first, so it imports torch_eager before discovery does
DROPPED_NAME = "dropped_for_test"
DROPPED_SOURCE = f'''"""{DROPPED_NAME}: torch eager attention under a new name, written by tests/test_plugins.py."""
from attnbench.implementations import Capabilities, TorchBackend, register
from attnbench.implementations.torch_eager import eager_attention


@register
class Dropped(TorchBackend):
    name = "{DROPPED_NAME}"
    caps = Capabilities(grad=True, lse=True)

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return eager_attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse)
'''


class GoodPluginBackend(TorchEager):
    """good_plugin: torch eager under another name, loaded as a Backend class through an entry point."""

    name = "good_plugin"


@pytest.fixture
def isolated_registry(monkeypatch):
    """The registry's state, restored after the test, so what a test registers does not leak."""
    registry.discover()   # snapshot a discovered registry: modules import once, so it could not be rebuilt later
    monkeypatch.setattr(registry, "_discovered", True)
    for attr in ("_BACKENDS", "_LOAD_ERRORS", "_ORIGINS"):
        monkeypatch.setattr(registry, attr, dict(getattr(registry, attr)))
    return registry


def overlay_package(root: Path, extra: Path) -> Path:
    """A copy of the attnbench package made of symlinks, whose implementations/ also holds the files in `extra`.

    A subprocess with `root` first on PYTHONPATH imports attnbench from here (ahead of the installed
    package), so it discovers the extra backend files as if dropped into implementations/.
    """
    package = root / "attnbench"
    package.mkdir(parents=True)
    for entry in (REPO / "attnbench").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for sub in ("reference", "perf"):
        (package / sub).symlink_to(REPO / sub)
    implementations = package / "implementations"
    implementations.mkdir()
    for entry in [*(REPO / "implementations").iterdir(), *extra.iterdir()]:
        if entry.name != "__pycache__":
            (implementations / entry.name).symlink_to(entry)
    return root


@pytest.fixture
def dropped_backend(isolated_registry, tmp_path, monkeypatch):
    """A new backend file "dropped into implementations/" for the test's duration: its backend name.

    Never written into the repo's implementations/, where other pytest-xdist workers (and their
    subprocesses) would discover it too: this process finds it in a temporary directory added to the
    package's search path; subprocesses import an overlay of the package through PYTHONPATH.
    """
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / f"{DROPPED_MODULE}.py").write_text(DROPPED_SOURCE)
    package = importlib.import_module("attnbench.implementations")
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(extra)])
    root = overlay_package(tmp_path / "overlay", extra)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    try:
        isolated_registry.rediscover()
        yield DROPPED_NAME
    finally:
        sys.modules.pop(f"attnbench.implementations.{DROPPED_MODULE}", None)


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_dropped_backend_file_is_registered_with_its_origin(dropped_backend):
    assert registry.get_backend(dropped_backend).name == dropped_backend
    assert registry.origin(dropped_backend) == f"implementations/{DROPPED_MODULE}.py"


def test_dropped_backend_file_is_listed_checked_and_run_by_conformance(dropped_backend, tmp_path):
    # Run from tmp_path: from the repo, `-m` would put the repo's attnbench/ ahead of the overlay.
    listed = run_cli("-m", "attnbench", "backends", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    sources = {row["backend"]: row["source"] for row in json.loads(listed.stdout)}
    assert sources[dropped_backend] == f"implementations/{DROPPED_MODULE}.py"
    assert sources["torch_eager"] == "implementations/torch_eager.py"      # not the file that imported it first
    # The table says what `check` below would run: without CUDA, triton_blockwise under the interpreter.
    triton = next(r for r in json.loads(listed.stdout) if (r["backend"], r["device"]) == ("triton_blockwise", "cpu"))
    if not torch.cuda.is_available() and importlib.util.find_spec("triton"):
        assert triton["available"] and "Triton interpreter" in triton["simulated"], triton
    checked = run_cli("-m", "attnbench", "check", dropped_backend, "--problem", "B=2,N=33,M=40,causal=bottom_right",
                      cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # `-p attnbench` imports the overlay's package before pytest puts the repo on sys.path for the conftest.
    conformance = run_cli("-m", "pytest", "-p", "attnbench", str(REPO / "conformance"), "-v", "-rN",
                          "--backend", dropped_backend, "-k", "float32 and N97", cwd=tmp_path)
    assert conformance.returncode == 0, conformance.stdout[-3000:]
    assert f"[{dropped_backend}-cpu-float32-B1-H2-N97-M113-D80" in conformance.stdout


def test_dropped_backend_file_is_swept_by_attnbench_perf(dropped_backend, tmp_path):
    """The perf workers are fresh processes: they find the file by discovery, with no --plugin."""
    done = run_cli("-m", "attnbench", "perf", "--backends", dropped_backend, "--seq-lens", "64", "--pass", "fwd",
                   "--time-budget", "0.05", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in next(tmp_path.glob("run-*/results.jsonl")).read_text().splitlines()]
    mine = [r for r in records if r["backend"] == dropped_backend]
    assert mine and all(r["status"] == "ok" and r["time_median_s"] > 0 and r["accurate"] for r in mine), mine


def fake_entry_points(*declared: EntryPoint):
    return lambda group=None: [ep for ep in declared if group in (None, ep.group)]


def test_failing_plugin_is_reported_and_discovery_continues(isolated_registry, monkeypatch, capsys):
    group = registry.ENTRY_POINT_GROUP
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(
        EntryPoint("broken", "attnbench_no_such_plugin_module", group),
        EntryPoint("good", f"{__name__}:GoodPluginBackend", group),
    ))
    isolated_registry.rediscover()
    errors = registry.load_errors()
    assert "ModuleNotFoundError" in errors["plugin:broken"]
    assert registry.origin("good_plugin") == f"plugin good = {__name__}:GoodPluginBackend"
    assert registry.get_backend("torch_eager")                               # in-repo discovery went on
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "plugin:broken" in out and "load error" in out and "good_plugin" in out


def test_only_declared_entry_point_groups_are_loaded(isolated_registry, monkeypatch):
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(
        EntryPoint("elsewhere", "attnbench_no_such_plugin_module", "some.other.group")))
    isolated_registry.rediscover()
    assert "plugin:elsewhere" not in registry.load_errors()


def test_example_einsum_plugin_is_picked_up_from_its_entry_point():
    declared = {ep.name: ep.value for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert declared.get("torch_einsum") == "attnbench_einsum", "pip install -e examples/einsum_plugin"
    backend = registry.get_backend("torch_einsum")
    assert type(backend).__module__ == "attnbench_einsum"
    assert registry.origin("torch_einsum") == "plugin torch_einsum = attnbench_einsum"


def test_backends_json_has_a_row_per_backend_and_device_with_reasons(capsys):
    assert main(["backends", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_key = {(r["backend"], r["device"]): r for r in rows}
    assert by_key[("torch_eager", "cpu")]["available"] and by_key[("torch_eager", "cpu")]["grad"]
    assert all(r["reason"] for r in rows if not r["available"])


@pytest.mark.parametrize("module, flag, package", [
    ("jax_dpa", "HAS_JAX", "jax"),
    ("xformers_mea", "HAS_XFORMERS", "xformers"),
    ("flash_attn2", "HAS_FLASH_ATTN", "flash_attn"),
    ("torch_flex", "HAS_FLEX", "flex_attention"),
])
def test_optional_backend_without_its_package_is_unavailable_not_crashed(monkeypatch, module, flag, package):
    import importlib

    mod = importlib.import_module(f"attnbench.implementations.{module}")
    monkeypatch.setattr(mod, flag, False)
    backends = [b for b in registry.all_backends() if type(b).__module__ == mod.__name__]
    assert backends and all(package in b.unavailable_reason() for b in backends)


def test_backends_table_gives_the_reason_under_every_unavailable_row(capsys):
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    unavailable = [i for i, line in enumerate(lines) if "  unavailable  " in line or line.endswith("unavailable")]
    assert unavailable and all(lines[i + 1].strip().startswith("why: ") for i in unavailable)
