"""The conformance suite ships with the package: from the built wheel, installed into a fresh venv, a user runs it
on their own backend file from a directory outside the repository, by `attnbench conformance` and by
`pytest --pyargs attnbench.conformance`.

The venv sees the wheel's attnbench first and this environment's third-party packages (torch, pytest,
hypothesis, ...) after it, through a .pth listing their directories: a .pth's directories are appended
to sys.path without their own .pth files being run, so the editable attnbench's import finder, which sits
beside torch in a checkout's site-packages, never activates there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the suite imports from outside attnbench: the directories holding them (here, one site-packages) go on the
# venv's sys.path behind the wheel's attnbench.
THIRD_PARTY = ("torch", "numpy", "scipy", "matplotlib", "tqdm", "pytest", "_pytest", "pluggy", "hypothesis")

USER_PLUGIN = '''"""my_attn: a user's file outside the checkout (torch eager); my_attn_wrong forgets 1/sqrt(D)."""
from attnbench.implementations import Capabilities, TorchBackend, register
from attnbench.implementations.torch_eager import eager_attention


@register
class MyAttn(TorchBackend):
    name = "my_attn"
    caps = Capabilities(grad=True, lse=True)

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return eager_attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse)


@register
class MyAttnWrong(MyAttn):
    name = "my_attn_wrong"

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return eager_attention(q, k, v, mask=mask, causal=causal, scale=1.0, return_lse=return_lse)
'''
SELECTION = "test_agreement and float32"       # a dozen fixed forward cases per backend: seconds, and every
                                               # one with D > 1 fails a forgotten scale


def _can_build_wheels() -> str | None:
    """Why `pip wheel --no-build-isolation` cannot build here, or None. setuptools builds wheels itself from 70.1
    (the README's install brings a newer one with torch); an older one needs the `wheel` package."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    if (major, minor) < (70, 1) and find_spec("wheel") is None:
        return f"setuptools {major}.{minor} without the wheel package cannot build a wheel without isolation"
    return None


def _source_copy(root: Path) -> Path:
    """The files the wheel is built from, copied: a build in the checkout would reuse its stale build/ tree."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    for folder in folders:
        if "/" not in folder:                                    # a subpackage comes with its parent
            shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", project["project"]["readme"]):
        shutil.copy(REPO / name, root / name)
    return root


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    reason = _can_build_wheels()
    if reason:
        pytest.skip(reason)
    source = _source_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (path,) = out.glob("attnbench-*.whl")
    return path


def test_the_wheel_holds_the_suite_and_its_pytest_plugin(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    suite = {Path(p).name for p in (REPO / "conformance").glob("*.py")}
    mutants = {Path(p).name for p in (REPO / "conformance" / "mutants").glob("*.py")}
    assert {f"attnbench/conformance/{name}" for name in suite} <= names
    assert {f"attnbench/conformance/mutants/{name}" for name in mutants} <= names
    assert "attnbench/pytest_plugin.py" in names
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]\nattnbench_conformance = attnbench.pytest_plugin" in text, text


def _third_party_dirs() -> list[str]:
    return sorted({str(Path(find_spec(name).origin).parent.parent) for name in THIRD_PARTY})


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A venv holding only the installed wheel, with this environment's third-party packages behind it."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "zz_third_party.pth").write_text("\n".join(_third_party_dirs()) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    where = subprocess.run([python, "-c", "import attnbench.conformance as c; print(c.__file__)"],
                           capture_output=True, text=True, cwd=root, env=_clean_env())
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(root), f"attnbench imported from {where.stdout.strip()}"
    assert not Path(where.stdout.strip()).is_relative_to(REPO)
    return root


def _clean_env() -> dict[str, str]:
    """This environment without what would lead a child to the checkout or change its pytest options."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    return {**env, "OMP_NUM_THREADS": "1"}


KINDS = {"failure": "failed", "error": "error", "skipped": "skipped"}


def _outcomes(junit: Path) -> dict[str, str]:
    """test name -> passed / failed / error / skipped, from pytest's JUnit XML."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [KINDS[child.tag] for child in case if child.tag in KINDS]
        result[case.get("name")] = kinds[0] if kinds else "passed"
    return result


def _run_suite(workdir: Path, command: list[str], backend: str, *extra: str) -> tuple[int, dict[str, str], str]:
    junit = workdir / f"{backend}.xml"
    done = subprocess.run([*command, "--plugin", "my_attn.py", "--backend", backend, "-k", SELECTION, "-q",
                           f"--junitxml={junit}", *extra], cwd=workdir, capture_output=True, text=True, timeout=600,
                          env=_clean_env())
    return done.returncode, _outcomes(junit) if junit.exists() else {}, done.stdout[-3000:] + done.stderr[-2000:]


def test_the_installed_suite_passes_a_right_backend_and_fails_a_wrong_one(venv, tmp_path):
    """`attnbench conformance` (the suite's own conftest) on a correct backend file; `pytest --pyargs` (the pytest11
    entry point) on a wrong one; both from a directory that is not the repository."""
    (tmp_path / "my_attn.py").write_text(USER_PLUGIN)
    assert not tmp_path.is_relative_to(REPO)
    rc, outcomes, log = _run_suite(tmp_path, [str(venv / "bin" / "attnbench"), "conformance"], "my_attn")
    assert rc == 0, log
    assert list(outcomes.values()).count("passed") >= 8 and set(outcomes.values()) <= {"passed", "skipped"}, log
    assert all("[my_attn-cpu-float32" in name for name in outcomes), sorted(outcomes)
    rc, outcomes, log = _run_suite(tmp_path, [str(venv / "bin" / "python"), "-m", "pytest", "--pyargs",
                                              "attnbench.conformance"], "my_attn_wrong", "-x")
    assert rc == 1, log
    assert "failed" in outcomes.values() and "error" not in outcomes.values(), log
    assert all("[my_attn_wrong-cpu-float32" in name for name in outcomes), sorted(outcomes)


OWN_CONFTEST = '''def pytest_addoption(parser):
    parser.addoption("--device", default="cpu")
    parser.addoption("--backend", default="mine")
'''
OWN_TEST = '''def test_its_own_options(request):
    assert (request.config.getoption("--device"), request.config.getoption("--backend")) == ("gpu", "mine")
'''


def test_another_project_keeps_its_own_device_and_backend_options(venv, tmp_path):
    """The entry point is loaded by every pytest run in the venv; it adds the suite's options to no other run, so
    a project defining `--device` itself still runs (pytest refuses an option defined twice)."""
    (tmp_path / "conftest.py").write_text(OWN_CONFTEST)
    (tmp_path / "test_own.py").write_text(OWN_TEST)
    done = subprocess.run([venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", "gpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_clean_env())
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
