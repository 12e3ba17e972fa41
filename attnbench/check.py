"""Check one backend on one problem against the float64 reference: the one compare both suites use.

    verdicts = check_forward(backend, problem)            # output (+ lse if the backend returns it)
    verdicts = check_backward(backend, problem)           # dQ, dK, dV
    all(v.passed for v in verdicts)

Each `Verdict` carries the worst element, its index, the error in budget units
and, through `repro_command`, the one line that reproduces it.
"""
from __future__ import annotations

import numpy as np

from attnbench import reference
from attnbench.budget import Verdict, compare, forward_bound, lse_bound
from attnbench.problem import Inputs, Problem, make_grad_out, make_inputs


def repro_command(backend_name: str, problem: Problem, device: str = "cpu", *, backward: bool = False) -> str:
    """A shell line that re-runs this exact check."""
    extra = " --backward" if backward else ""
    return f'attnbench check {backend_name} --problem "{problem.spec()}" --device {device}{extra}'


def naive_forward(inputs: Inputs, problem: Problem) -> np.ndarray:
    """The plain formula in the problem's own dtype (torch eager on CPU): the yardstick of budget condition 2."""
    from attnbench.implementations._torch_common import to_tensors
    from attnbench.implementations.torch_eager import eager_attention

    q, k, v, mask = to_tensors(inputs, problem.replace(layout="contiguous"), "cpu")
    out = eager_attention(q, k, v, mask=mask, causal=problem.causal, scale=problem.scale)
    return out.double().numpy()


def naive_backward(inputs: Inputs, problem: Problem, grad_out: np.ndarray) -> tuple[np.ndarray, ...]:
    """(dQ, dK, dV) of the plain formula through torch autograd in the problem's dtype."""
    from attnbench.implementations.torch_eager import TorchEager

    run = TorchEager().prepare_backward(inputs, problem.replace(layout="contiguous"), grad_out)
    return tuple(g.double().numpy() for g in run())


def reference_bias(inputs: Inputs, problem: Problem):
    """The float64 additive bias (mask and causal folded) the reference uses, broadcastable to (B, H, N, M)."""
    return reference.mask_to_bias(inputs.mask, problem.causal, problem.N, problem.M)


def _effective_scale(problem: Problem) -> float:
    return 1.0 / np.sqrt(problem.D) if problem.scale is None else problem.scale


def check_forward(backend, problem: Problem, device: str = "cpu", *, inputs: Inputs | None = None) -> list[Verdict]:
    """Compare the backend's output (and lse, where it declares one) with the reference."""
    inputs = make_inputs(problem) if inputs is None else inputs
    want_lse = backend.capabilities(device).lse
    expected, lse_ref = reference.sdpa(inputs.q, inputs.k, inputs.v, return_lse=True,
                                       **inputs.reference_kwargs(problem))
    result = backend.prepare(inputs, problem, device=device, return_lse=want_lse)()
    out, lse = result if want_lse else (result, None)
    bias = reference_bias(inputs, problem)
    scale = _effective_scale(problem)
    verdicts = [compare("output", backend.to_numpy(out), expected, dtype=problem.dtype,
                        bound=forward_bound(inputs.q, inputs.k, inputs.v, bias, scale, problem.dtype),
                        naive=naive_forward(inputs, problem), reduction_length=problem.D + problem.M)]
    if want_lse:
        verdicts.append(compare("lse", backend.to_numpy(lse), lse_ref, dtype=problem.dtype,
                                bound=lse_bound(inputs.q, inputs.k, lse_ref, bias, scale, problem.dtype)))
    return verdicts


def backward_magnitudes(inputs: Inputs, problem: Problem, grad_out: np.ndarray) -> tuple[float, float, float]:
    """Largest sum of |terms| behind one element of dQ, dK and dV: the magnitude rounding is relative to.

    With P (B, H, N, M), dP = dO V^T and delta = rowsum(dO * O) (B, H, N):
        dQ = scale [P (dP - delta)] K      terms  scale P (|dO| |V|^T + |delta|) |K|
        dK = scale [P (dP - delta)]^T Q    terms  scale (...)^T |Q|, summed over the query heads of a KV head
        dV = P^T dO                        terms  P^T |dO|, likewise summed
    """
    q, k, v = inputs.q, inputs.k, inputs.v
    out, p = reference.sdpa(q, k, v, return_weights=True, **inputs.reference_kwargs(problem))
    group = problem.H // problem.Hkv
    kr, vr = (np.repeat(x, group, axis=1) for x in (k, v))                      # (B, H, M, .)
    delta = np.abs(np.sum(grad_out * out, axis=-1, keepdims=True))             # (B, H, N, 1)
    terms = p * (np.abs(grad_out) @ np.abs(vr).swapaxes(-1, -2) + delta)       # (B, H, N, M)
    scale = abs(_effective_scale(problem))

    def per_kv_head(x):                                                        # (B, H, M, .) -> (B, Hkv, M, .)
        return x.reshape(problem.B, problem.Hkv, group, *x.shape[2:]).sum(axis=2)

    mq = scale * (terms @ np.abs(kr))
    mk = scale * per_kv_head(terms.swapaxes(-1, -2) @ np.abs(q))
    mv = per_kv_head(p.swapaxes(-1, -2) @ np.abs(grad_out))
    return tuple(float(np.max(np.where(np.isfinite(m), m, 0.0))) for m in (mq, mk, mv))


def check_backward(backend, problem: Problem, device: str = "cpu", *, inputs: Inputs | None = None) -> list[Verdict]:
    """Compare the backend's dQ, dK, dV with the float64 reference backward, against the naive same-dtype one."""
    inputs = make_inputs(problem) if inputs is None else inputs
    grad_out = make_grad_out(problem)
    expected = reference.sdpa_backward(inputs.q, inputs.k, inputs.v, grad_out, **inputs.reference_kwargs(problem))
    actual = backend.prepare_backward(inputs, problem, grad_out, device=device)()
    naive = naive_backward(inputs, problem, grad_out)
    magnitudes = backward_magnitudes(inputs, problem, grad_out)
    return [compare(name, backend.to_numpy(a), e, naive=n, dtype=problem.dtype,
                    reduction_length=problem.D + problem.Dv + max(problem.N, problem.M), magnitude=mag)
            for name, a, e, n, mag in zip(("dq", "dk", "dv"), actual, expected, naive, magnitudes)]


def failure_message(backend_name: str, problem: Problem, verdicts: list[Verdict], device: str = "cpu", *,
                    backward: bool = False) -> str:
    """Every verdict on one line each, then the repro command."""
    lines = [v.describe() for v in verdicts]
    lines.append("repro: " + repro_command(backend_name, problem, device, backward=backward))
    return "\n".join(lines)
