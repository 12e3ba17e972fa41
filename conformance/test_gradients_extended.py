"""Backward, more widely: dQ, dK, dV against the float64 reference on every mask kind, GQA/MQA, both causal
alignments with cross-attention and a bias together with causal; and `torch.autograd.gradcheck` (finite
differences in float64) through each grad backend's public call, which checks the backward is the
derivative of the forward the backend actually computes, independently of our reference backward.
"""
import pytest
import torch

from attnbench.implementations import TorchBackend
from attnbench.problem import MASK_FORMS, Problem

from ._verdict import assert_passes

NEEDS_GRAD = True
PROBLEMS = (
    [Problem(B=2, H=2, N=37, M=45, D=32, mask=m, dtype=d, seed=20 + i)
     for i, m in enumerate(MASK_FORMS) for d in ("float32", "float16")]
    + [Problem(B=1, H=6, Hkv=2, N=29, M=51, D=40, causal=c, dtype=d, seed=30)
       for c in (None, "top_left", "bottom_right") for d in ("float32", "bfloat16")]
    + [Problem(B=1, H=4, Hkv=1, N=60, M=33, D=32, causal="bottom_right", mask="bias", dtype=d, seed=31)
       for d in ("float32", "float16")]
    + [Problem(B=1, H=2, N=45, M=45, D=24, Dv=40, causal="top_left", mask="padding", dtype="float64", seed=32)]
)


def test_backward_matches_reference_on_masks_gqa_and_causal(backend, device, problem):
    assert_passes(backend, problem, device, backward=True)


GRADCHECK_CASES = [
    dict(H=2, Hkv=2, N=5, M=6, D=8, causal=None, mask=None),
    dict(H=4, Hkv=2, N=6, M=5, D=8, causal="bottom_right", mask=None),           # a row with no key
    dict(H=2, Hkv=1, N=5, M=7, D=8, causal="top_left", mask="bias"),
    dict(H=2, Hkv=2, N=5, M=6, D=8, causal=None, mask="bool"),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: f"H{c['H']}-Hkv{c['Hkv']}-{c['causal']}-{c['mask']}")
def test_float64_backward_is_the_derivative_of_the_forward(backend, device, case):
    problem = Problem(B=1, H=case["H"], Hkv=case["Hkv"], N=case["N"], M=case["M"], D=case["D"], dtype="float64",
                      causal=case["causal"], mask=case["mask"] and ("bias" if case["mask"] == "bias" else "bool"))
    reason = backend.why_not(problem, device, need_grad=True)
    if reason or not isinstance(backend, TorchBackend):
        pytest.skip(f"{backend.name}: {reason or 'not a torch backend'}")
    gen = torch.Generator().manual_seed(0)
    B, H, Hkv, N, M, D = 1, problem.H, problem.Hkv, problem.N, problem.M, problem.D
    q, k, v = (torch.randn(*s, generator=gen, dtype=torch.float64, device=device, requires_grad=True)
               for s in ((B, H, N, D), (B, Hkv, M, D), (B, Hkv, M, D)))
    mask = None
    if case["mask"] == "bias":
        mask = torch.randn(B, 1, N, M, generator=gen, dtype=torch.float64).to(device)
    elif case["mask"] == "bool":
        mask = (torch.rand(B, 1, N, M, generator=gen) < 0.7).to(device)
        mask[..., 0] = True

    def f(q, k, v):
        return backend(q, k, v, mask=mask, causal=problem.causal)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)
