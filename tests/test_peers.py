"""The peers' adapters (examples/peers): without the `peers` extra each backend is unavailable with the reason;
with it, what they declare holds on one cheap problem each. Their conformance is the documented command
(README, "Peers"), not part of CI: CI installs neither transformers nor keras.
"""
import subprocess
import sys
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parents[1] / "examples" / "peers"

# Block the three libraries, import the adapters, print what discovery would show for each backend.
WITHOUT_LIBRARIES = f"""
import sys
sys.modules.update(transformers=None, keras=None, triton=None)
sys.path.insert(0, {str(PEERS)!r})
import attnbench_peers.hf, attnbench_peers.keras_dpa, attnbench_peers.tutorial06
from attnbench.implementations import get_backend
for name in ("hf_sdpa", "hf_eager", "keras_numpy", "triton_tutorial06"):
    print(name, "|", get_backend(name).unavailable_reason())
"""


def test_without_the_extra_every_peer_is_unavailable_with_its_install_line():
    out = subprocess.run([sys.executable, "-c", WITHOUT_LIBRARIES], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    reasons = dict(line.split(" | ", 1) for line in out.stdout.splitlines())
    assert set(reasons) == {"hf_sdpa", "hf_eager", "keras_numpy", "triton_tutorial06"}
    for name in ("hf_sdpa", "hf_eager", "keras_numpy"):
        assert "attnbench[peers]" in reasons[name], reasons[name]
    assert "triton" in reasons["triton_tutorial06"]


def _backend(name):
    pytest.importorskip("attnbench_peers", reason="the peers adapters are not installed (pip install -e examples/peers)")
    from attnbench.implementations import get_backend

    backend = get_backend(name)
    reason = backend.unavailable_reason()
    if reason:
        pytest.skip(f"{name}: {reason}")
    return backend


def test_tutorial06_declares_what_it_cannot_do_so_conformance_never_runs_it():
    """N = 97 is silently wrong and N = 192 aborts the interpreter (issue 17): both are outside the declared
    constraints, whatever the tutorial file, so no suite calls them."""
    pytest.importorskip("attnbench_peers", reason="the peers adapters are not installed (pip install -e examples/peers)")
    from attnbench_peers.tutorial06 import CAPS

    from attnbench.problem import Problem

    inside = Problem(B=1, H=2, N=128, D=64, dtype="float16")
    assert CAPS.why_not(inside) is None
    for n in (97, 192):
        assert "multiples of 128" in CAPS.why_not(inside.replace(N=n, M=n))
    assert "N = M only" in CAPS.why_not(inside.replace(M=256))
    assert CAPS.why_not(inside.replace(dtype="bfloat16")).startswith("dtype")


def test_eager_mask_is_the_one_transformers_builds():
    """hf_eager is called with the additive mask transformers' masking_utils.eager_mask makes for a causal model."""
    _backend("hf_eager")
    import torch
    from attnbench_peers.hf import eager_mask
    from transformers.masking_utils import eager_mask as transformers_eager_mask

    theirs = transformers_eager_mask(batch_size=1, q_length=5, kv_length=5, dtype=torch.float16)
    assert torch.equal(eager_mask(None, "top_left", 5, 5, torch.float16).expand_as(theirs), theirs)


@pytest.mark.parametrize("name, spec", [
    ("hf_eager", "B=1,H=2,N=64,D=128,dtype=float16,inputs=large_logits"),
    ("hf_eager", "B=1,H=2,N=16,D=16,dtype=float64"),
    ("keras_numpy", "B=1,H=2,N=16,D=16,dtype=float64"),
    ("keras_numpy", "B=1,H=2,N=16,M=4097,D=16,dtype=float16"),
])
def test_each_documented_limitation_is_a_skip_with_its_reason(name, spec):
    from attnbench.problem import Problem

    reason = _backend(name).why_not(Problem.parse(spec))
    assert reason and ("not supported" in reason or "float16 einsum" in reason), reason


@pytest.mark.parametrize("name", ["hf_sdpa", "hf_eager", "keras_numpy"])
def test_a_declared_problem_passes(name):
    from attnbench.check import check_forward
    from attnbench.problem import Problem

    verdicts = check_forward(_backend(name), Problem(B=1, H=2, N=17, M=23, D=16, dtype="float32", causal="top_left"))
    assert all(v.passed for v in verdicts), [v.describe() for v in verdicts]
