"""Bad input is refused up front, with an error that names the argument and shows the shapes.

Every public entry point: the float64 reference (`sdpa`, `sdpa_backward`), every backend's tensor-level call
(`TorchBackend.__call__`, the numpy backend's `__call__`), every backend's `prepare`/`prepare_backward`
(inputs that do not match the problem, unsupported dtype or device) and `Problem` itself. All raise
`AttentionInputError` (a ValueError) from the one shared validator before any arithmetic, so a torch
RuntimeError from deep inside a kernel never reaches the user. The CLI side is in tests/test_cli.py.
"""
import numpy as np
import pytest

from attnbench import reference
from attnbench.implementations import TorchBackend
from attnbench.problem import Inputs, Problem, make_grad_out, make_inputs
from attnbench.reference import AttentionInputError


def _arrays(B=1, H=2, Hkv=2, N=5, M=7, D=8, Dv=8, dtype="float32"):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((B, H, N, D)).astype(dtype), rng.standard_normal((B, Hkv, M, D)).astype(dtype),
            rng.standard_normal((B, Hkv, M, Dv)).astype(dtype))


def _replace(args, i, new):
    return tuple(new if j == i else a for j, a in enumerate(args))


# (id, build(q, k, v) -> (q, k, v, kwargs), words the message must contain)
BAD_CALLS = [
    ("q-rank-3", lambda q, k, v: (q[0], k, v, {}), ["q", "rank 4", "(2, 5, 8)"]),
    ("k-rank-5", lambda q, k, v: (q, k[None], v, {}), ["k", "rank 4", "(1, 1, 2, 7, 8)"]),
    ("empty-q", lambda q, k, v: (q[:, :, :0], k, v, {}), ["q", "empty", "(1, 2, 0, 8)"]),
    ("empty-v", lambda q, k, v: (q, k, v[..., :0], {}), ["v", "empty"]),
    ("batch-mismatch", lambda q, k, v: (q, np.concatenate([k, k]), v, {}), ["B", "(2, 2, 7, 8)"]),
    ("head-dim-mismatch", lambda q, k, v: (q, k[..., :4], v, {}), ["D", "(1, 2, 7, 4)"]),
    ("kv-length-mismatch", lambda q, k, v: (q, k, v[:, :, :3], {}), ["k, v", "(1, 2, 3, 8)"]),
    ("heads-not-multiple", lambda q, k, v: (np.concatenate([q, q[:, :1]], axis=1), k, v, {}),
     ["H=3", "Hkv=2"]),
    ("mask-wrong-shape", lambda q, k, v: (q, k, v, {"mask": np.ones((1, 1, 5, 6), bool)}),
     ["mask", "(1, 1, 5, 6)", "(1, 2, 5, 7)"]),
    ("mask-rank-5", lambda q, k, v: (q, k, v, {"mask": np.ones((1, 1, 1, 5, 7), bool)}), ["mask", "(1, 1, 1, 5, 7)"]),
    ("mask-int", lambda q, k, v: (q, k, v, {"mask": np.ones((1, 1, 5, 7), np.int64)}), ["mask", "int64"]),
    ("mixed-dtypes", lambda q, k, v: (q, k.astype(np.float64), v, {}), ["dtype", "float64", "float32"]),
    ("integer-inputs", lambda q, k, v: (q.astype(np.int32), k.astype(np.int32), v.astype(np.int32), {}),
     ["q", "int32"]),
    ("bad-causal", lambda q, k, v: (q, k, v, {"causal": "diagonal"}), ["causal", "diagonal"]),
    ("nan-scale", lambda q, k, v: (q, k, v, {"scale": float("nan")}), ["scale", "nan"]),
]
BAD_CALL_IDS = [case[0] for case in BAD_CALLS]
# The reference casts every input to float64 by design, so dtype mixes and integer inputs are fine there.
BAD_CALLS_REFERENCE = [c for c in BAD_CALLS if c[0] not in ("mixed-dtypes", "integer-inputs")]


def _native(backend, device, q, k, v, kwargs):
    """The arrays as the backend's native type (torch tensors on `device` for TorchBackend)."""
    if not isinstance(backend, TorchBackend):
        return q, k, v, kwargs
    import torch

    def t(x):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)

    kwargs = {key: t(val) if isinstance(val, np.ndarray) else val for key, val in kwargs.items()}
    return t(q), t(k), t(v), kwargs


@pytest.mark.parametrize("case", BAD_CALLS, ids=BAD_CALL_IDS)
def test_backend_call_rejects_bad_arguments_naming_them(backend, device, case):
    if not callable(backend):
        pytest.skip(f"{backend.name}: no tensor-level entry point")
    _, build, words = case
    q, k, v, kwargs = _native(backend, device, *build(*_arrays()))
    with pytest.raises(AttentionInputError) as exc:
        backend(q, k, v, **kwargs)
    assert backend.name in str(exc.value) and all(w in str(exc.value) for w in words), str(exc.value)


@pytest.mark.parametrize("case", BAD_CALLS_REFERENCE, ids=[c[0] for c in BAD_CALLS_REFERENCE])
def test_reference_rejects_bad_arguments_naming_them(case):
    _, build, words = case
    q, k, v, kwargs = build(*_arrays())
    with pytest.raises(AttentionInputError) as exc:
        reference.sdpa(q, k, v, **kwargs)
    assert all(w in str(exc.value) for w in words), str(exc.value)


def test_reference_backward_rejects_grad_out_of_the_wrong_shape():
    q, k, v = _arrays()
    with pytest.raises(AttentionInputError, match=r"grad_out: expected shape \(1, 2, 5, 8\), got \(1, 2, 5, 7\)"):
        reference.sdpa_backward(q, k, v, np.zeros((1, 2, 5, 7)))


def test_backend_call_rejects_a_device_it_does_not_run_on(backend, device):
    if not isinstance(backend, TorchBackend):
        pytest.skip(f"{backend.name}: takes NumPy arrays, which have no device")
    import torch

    q, k, v = (torch.empty(x.shape, device="meta") for x in _arrays())
    with pytest.raises(AttentionInputError, match="device meta not supported"):
        backend(q, k, v)


def test_prepare_rejects_inputs_that_do_not_match_the_problem(backend, device):
    problem = Problem(B=1, H=2, N=5, M=7, D=8)
    if backend.why_not(problem, device):
        pytest.skip(f"{backend.name}: {backend.why_not(problem, device)}")
    other = make_inputs(problem.replace(M=6))
    with pytest.raises(AttentionInputError, match=r"do not match problem.*'k': \(1, 2, 7, 8\).*'k': \(1, 2, 6, 8\)"):
        backend.prepare(other, problem, device=device)


def test_prepare_rejects_problems_the_backend_does_not_declare(backend, device):
    caps = backend.capabilities(device)
    missing = [d for d in ("float16", "bfloat16", "float32", "float64") if d not in caps.dtypes]
    problem = Problem(B=1, H=2, N=5, M=7, D=8, dtype=missing[0]) if missing else None
    unsupported_device = next(d for d in ("cuda", "mps", "xpu") if backend.device_unavailable_reason(d))
    # The error must name the dtype and refuse it; backends may say why (triton: the interpreter's bf16).
    cases = ([(problem, device, f"{missing[0]} not supported")] if problem else []) + [
        (Problem(B=1, H=2, N=5, M=7, D=8), unsupported_device, unsupported_device)]
    for p, dev, words in cases:
        with pytest.raises(AttentionInputError, match=words):
            backend.prepare(make_inputs(p), p, device=dev)


def test_prepare_backward_rejects_backends_without_grad_or_bad_inputs(backend, device):
    problem = Problem(B=1, H=2, N=5, M=7, D=8)
    if backend.why_not(problem, device):
        pytest.skip(f"{backend.name}: {backend.why_not(problem, device)}")
    error = (AttentionInputError if backend.capabilities(device).grad else (AttentionInputError, NotImplementedError))
    with pytest.raises(error):
        backend.prepare_backward(make_inputs(problem.replace(D=4)), problem, make_grad_out(problem), device=device)


@pytest.mark.parametrize("fields, words", [
    (dict(N=0), "sizes must be integers >= 1"),
    (dict(H=3, Hkv=2), "multiple of Hkv"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(mask="triangle"), "mask must be one of"),
    (dict(layout="diagonal"), "layout must be one of"),
    (dict(inputs="uniform"), "inputs must be one of"),
    (dict(causal="diagonal"), "causal"),
    (dict(scale=float("inf")), "scale must be a finite number"),
])
def test_problem_rejects_bad_fields_naming_them(fields, words):
    with pytest.raises(AttentionInputError, match=words):
        Problem(**fields)
