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
from attnbench.problem import DTYPES, Inputs, Problem, make_grad_out, make_inputs
from attnbench.reference import AttentionInputError


# The shapes of the bad calls; a backend with shape constraints gets the nearest shapes it declares, and a
# dtype it takes, so a bad call is refused for what is wrong with it and nothing else.
BASE = dict(B=1, H=2, Hkv=2, N=5, M=7, D=8, Dv=8, dtype="float32")


def shape_for(caps=None) -> dict:
    """BASE within `caps`: N, M rounded up to its multiple (N = M where required), D and Dv its smallest
    allowed head dim if 8 is not, its first dtype if float32 is not."""
    if caps is None:
        return dict(BASE)
    multiple = caps.seq_multiple
    up = lambda n: -(-n // multiple) * multiple                        # noqa: E731
    N, M = up(BASE["N"]), up(BASE["M"]) if caps.cross and not caps.same_length else up(BASE["N"])
    if M == N and caps.cross and not caps.same_length:
        M = N + multiple                                               # keep N != M: the length checks need it
    allowed = [d for d in (caps.head_dim_choices or (BASE["D"], caps.head_dims[0]))
               if caps.head_dims[0] <= d <= caps.head_dims[1]]
    D = BASE["D"] if BASE["D"] in allowed else min(allowed)
    dtype = BASE["dtype"] if BASE["dtype"] in caps.dtypes else caps.dtypes[0]
    return dict(BASE, N=N, M=M, D=D, Dv=D, dtype=dtype)


def _arrays(B=1, H=2, Hkv=2, N=5, M=7, D=8, Dv=8, dtype="float32", **_):
    """q, k, v as NumPy arrays (bfloat16, which NumPy lacks, travels as float32: `_native` converts it)."""
    rng = np.random.default_rng(0)
    carrier = "float32" if dtype == "bfloat16" else dtype
    return (rng.standard_normal((B, H, N, D)).astype(carrier), rng.standard_normal((B, Hkv, M, D)).astype(carrier),
            rng.standard_normal((B, Hkv, M, Dv)).astype(carrier))


def _replace(args, i, new):
    return tuple(new if j == i else a for j, a in enumerate(args))


# (id, build(q, k, v) -> (q, k, v, kwargs), words the message must contain: templates over `shape_for`)
BAD_CALLS = [
    ("q-rank-3", lambda q, k, v: (q[0], k, v, {}), ["q", "rank 4", "({H}, {N}, {D})"]),
    ("k-rank-5", lambda q, k, v: (q, k[None], v, {}), ["k", "rank 4", "(1, 1, 2, {M}, {D})"]),
    ("empty-q", lambda q, k, v: (q[:, :, :0], k, v, {}), ["q", "empty", "(1, 2, 0, {D})"]),
    ("empty-v", lambda q, k, v: (q, k, v[..., :0], {}), ["v", "empty"]),
    ("batch-mismatch", lambda q, k, v: (q, np.concatenate([k, k]), v, {}), ["B", "(2, 2, {M}, {D})"]),
    ("head-dim-mismatch", lambda q, k, v: (q, k[..., :4], v, {}), ["D", "(1, 2, {M}, 4)"]),
    ("kv-length-mismatch", lambda q, k, v: (q, k, v[:, :, :3], {}), ["k, v", "(1, 2, 3, {Dv})"]),
    ("heads-not-multiple", lambda q, k, v: (np.concatenate([q, q[:, :1]], axis=1), k, v, {}),
     ["H=3", "Hkv=2"]),
    ("mask-wrong-shape", lambda q, k, v: (q, k, v, {"mask": np.ones((1, 1, q.shape[2], k.shape[2] - 1), bool)}),
     ["mask", "(1, 1, {N}, {Mm1})", "(1, 2, {N}, {M})"]),
    ("mask-rank-5", lambda q, k, v: (q, k, v, {"mask": np.ones((1, 1, 1, q.shape[2], k.shape[2]), bool)}),
     ["mask", "(1, 1, 1, {N}, {M})"]),
    ("mask-int", lambda q, k, v: (q, k, v, {"mask": np.ones((1, 1, q.shape[2], k.shape[2]), np.int64)}),
     ["mask", "int64"]),
    ("mixed-dtypes", lambda q, k, v: (q, k.astype(np.float64 if q.dtype != np.float64 else np.float32), v, {}),
     ["dtype", "{dtype}", "{other}"]),
    ("integer-inputs", lambda q, k, v: (q.astype(np.int32), k.astype(np.int32), v.astype(np.int32), {}),
     ["q", "int32"]),
    ("bad-causal", lambda q, k, v: (q, k, v, {"causal": "diagonal"}), ["causal", "diagonal"]),
    ("nan-scale", lambda q, k, v: (q, k, v, {"scale": float("nan")}), ["scale", "nan"]),
]
BAD_CALL_IDS = [case[0] for case in BAD_CALLS]
# The reference casts every input to float64 by design, so dtype mixes and integer inputs are fine there.
BAD_CALLS_REFERENCE = [c for c in BAD_CALLS if c[0] not in ("mixed-dtypes", "integer-inputs")]


def _words(templates, shape: dict) -> list[str]:
    other = "float32" if shape["dtype"] == "float64" else "float64"           # the mixed-dtypes case's k
    return [w.format(**{"Mm1": shape["M"] - 1, "other": other, **shape}) for w in templates]


def _native(backend, device, dtype, q, k, v, kwargs):
    """The arrays as the backend's native type (torch tensors on `device` for TorchBackend; float32 carriers of
    a bfloat16 problem become bfloat16)."""
    if not isinstance(backend, TorchBackend):
        return q, k, v, kwargs
    import torch

    def t(x):
        tensor = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        return tensor.to(torch.bfloat16) if dtype == "bfloat16" and x.dtype == np.float32 else tensor

    kwargs = {key: t(val) if isinstance(val, np.ndarray) else val for key, val in kwargs.items()}
    return t(q), t(k), t(v), kwargs


@pytest.mark.parametrize("case", BAD_CALLS, ids=BAD_CALL_IDS)
def test_backend_call_rejects_bad_arguments_naming_them(backend, device, case):
    if not callable(backend):
        pytest.skip(f"{backend.name}: no tensor-level entry point")
    _, build, words = case
    shape = shape_for(backend.capabilities(device))
    q, k, v, kwargs = _native(backend, device, shape["dtype"], *build(*_arrays(**shape)))
    with pytest.raises(AttentionInputError) as exc:
        backend(q, k, v, **kwargs)
    assert backend.name in str(exc.value) and all(w in str(exc.value) for w in _words(words, shape)), str(exc.value)


@pytest.mark.parametrize("case", BAD_CALLS_REFERENCE, ids=[c[0] for c in BAD_CALLS_REFERENCE])
def test_reference_rejects_bad_arguments_naming_them(case):
    _, build, words = case
    q, k, v, kwargs = build(*_arrays())
    with pytest.raises(AttentionInputError) as exc:
        reference.sdpa(q, k, v, **kwargs)
    assert all(w in str(exc.value) for w in _words(words, shape_for())), str(exc.value)


def test_reference_backward_rejects_grad_out_of_the_wrong_shape():
    q, k, v = _arrays()
    with pytest.raises(AttentionInputError, match=r"grad_out: expected shape \(1, 2, 5, 8\), got \(1, 2, 5, 7\)"):
        reference.sdpa_backward(q, k, v, np.zeros((1, 2, 5, 7)))


def test_backend_call_rejects_a_device_it_does_not_run_on(backend, device):
    if not isinstance(backend, TorchBackend):
        pytest.skip(f"{backend.name}: takes NumPy arrays, which have no device")
    import torch

    shape = shape_for(backend.capabilities(device))
    q, k, v = (torch.empty(x.shape, dtype=getattr(torch, shape["dtype"]), device="meta") for x in _arrays(**shape))
    with pytest.raises(AttentionInputError, match="device meta not supported"):
        backend(q, k, v)


def _problem_for(backend, device) -> Problem:
    """The bad calls' shapes as a Problem the backend declares (causal for a causal-only backend)."""
    caps = backend.capabilities(device)
    shape = shape_for(caps)
    causal = None if caps.non_causal or not caps.causal else caps.causal[0]
    return Problem(**{key: shape[key] for key in ("B", "H", "Hkv", "N", "M", "D", "Dv", "dtype")}, causal=causal)


def test_prepare_rejects_inputs_that_do_not_match_the_problem(backend, device):
    problem = _problem_for(backend, device)
    if backend.why_not(problem, device):
        pytest.skip(f"{backend.name}: {backend.why_not(problem, device)}")
    other = make_inputs(problem.replace(M=problem.M - 1))
    p = problem
    with pytest.raises(AttentionInputError, match=rf"do not match problem.*'k': \(1, 2, {p.M}, {p.D}\).*'k': "
                                                  rf"\(1, 2, {p.M - 1}, {p.D}\)"):
        backend.prepare(other, problem, device=device)


def test_prepare_rejects_problems_the_backend_does_not_declare(backend, device):
    caps = backend.capabilities(device)
    missing = [d for d in DTYPES if d not in caps.dtypes]
    supported = _problem_for(backend, device)
    problem = supported.replace(dtype=missing[0]) if missing else None
    unsupported_device = next(d for d in ("cuda", "mps", "xpu") if backend.device_unavailable_reason(d))
    # The error must name the dtype and refuse it; backends may say why (triton: the interpreter's bf16).
    cases = ([(problem, device, f"{missing[0]} not supported")] if problem else []) + [
        (supported, unsupported_device, unsupported_device)]
    for p, dev, words in cases:
        with pytest.raises(AttentionInputError, match=words):
            backend.prepare(make_inputs(p), p, device=dev)


def test_prepare_backward_rejects_backends_without_grad_or_bad_inputs(backend, device):
    problem = _problem_for(backend, device)
    if backend.why_not(problem, device):
        pytest.skip(f"{backend.name}: {backend.why_not(problem, device)}")
    error = (AttentionInputError if backend.capabilities(device).grad else (AttentionInputError, NotImplementedError))
    with pytest.raises(error):
        backend.prepare_backward(make_inputs(problem.replace(D=4, Dv=4)), problem, make_grad_out(problem),
                                 device=device)


@pytest.mark.parametrize("fields, words", [
    (dict(N=0), "sizes must be integers >= 1"),
    (dict(H=3, Hkv=2), "multiple of Hkv"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(mask="triangle"), "mask must be one of"),
    (dict(layout="diagonal"), "layout must be one of"),
    (dict(inputs="uniform"), "inputs must be one of"),
    (dict(causal="diagonal"), "causal"),
    (dict(scale=float("inf")), "scale must be a finite number"),
    (dict(kv="sparse"), "kv: expected one of dense, paged, ragged"),
    (dict(kv="paged:0"), "page size must be an integer >= 1"),
    (dict(kv="ragged:4"), "kv=ragged takes no argument"),
    (dict(append=-1), "append must be an integer >= 0"),
    (dict(N=4, M=8, append=True), "append must be an integer >= 0, got True"),
    (dict(N=4, M=8, append=9), "append=9: 0..M=8"),
    (dict(kv="ragged", causal="top_left"), "causal is bottom_right in each sequence"),
    (dict(kv="paged:16", mask="bool"), "mask=bool cannot be added"),
    (dict(N=4, M=8, append=2, mask="bool"), "append=2: the layout is its own mask; mask=bool cannot be added"),
])
def test_problem_rejects_bad_fields_naming_them(fields, words):
    with pytest.raises(AttentionInputError, match=words):
        Problem(**fields)


# KV layout storage (`attnbench.reference.layouts.validate`): (id, problem spec, corrupt(storage), words)
def _set(name, index, value):
    def corrupt(s):
        array = np.array(getattr(s, name))
        array[index] = value
        setattr(s, name, array)
    return corrupt


BAD_STORAGE = [
    ("block-table-past-pool", "kv=paged:4", lambda s: _set("block_table", (0, 0), len(s.k))(s),
     ["block_table", "outside the pool"]),
    ("block-table-negative", "kv=paged:4", _set("block_table", (1, 0), -1), ["block_table", "page -1"]),
    ("pages-of-another-size", "kv=paged:4", lambda s: setattr(s, "k", s.k.reshape(-1, 2, *s.k.shape[2:])),
     ["k must be pages", "(num_pages, 4, Hkv, D)"]),
    ("cu-seqlens-not-increasing", "kv=ragged", _set("cu_seqlens_k", 2, 0), ["cu_seqlens_k", "increase"]),
    ("cu-seqlens-not-from-0", "kv=ragged", _set("cu_seqlens_q", 0, 1), ["cu_seqlens_q", "start at 0"]),
    ("cu-seqlens-do-not-add-up", "kv=ragged", _set("cu_seqlens_q", -1, 10_000), ["cu_seqlens_q", "do not add up"]),
    ("cache-seqlens", "kv=paged:4,append=2", _set("cache_seqlens", 0, 99), ["cache_seqlens"]),
    ("k-new-missing", "kv=ragged,append=2", lambda s: setattr(s, "k_new", None), ["k_new", "(B, K, Hkv, D)"]),
    ("v-new-missing", "kv=ragged,append=2", lambda s: setattr(s, "v_new", None), ["v_new", "(B, K, Hkv, Dv)"]),
    ("k-new-head-dim", "kv=paged:4,append=2", lambda s: setattr(s, "k_new", s.k_new[..., :3]), ["k_new", "got (3, 2"]),
    ("v-rows-short", "kv=ragged", lambda s: setattr(s, "v", s.v[:-1]), ["v must be", "for kv=ragged"]),
    ("k-head-dim", "kv=ragged", lambda s: setattr(s, "k", s.k[..., :3]), ["k must be", "for kv=ragged"]),
    ("v-pages-head-dim", "kv=paged:4", lambda s: setattr(s, "v", s.v[..., :3]), ["v must be pages", "k and v"]),
    ("v-pool-short", "kv=paged:4", lambda s: setattr(s, "v", s.v[:-1]), ["v must be pages", "k and v"]),
]


@pytest.mark.parametrize("case", BAD_STORAGE, ids=[c[0] for c in BAD_STORAGE])
def test_prepare_rejects_bad_kv_storage_naming_the_argument(backend, device, case):
    _, spec, corrupt, words = case
    problem = Problem.parse(f"B=3,H=2,N=5,M=20,D=8,{spec}")
    inputs = make_inputs(problem)
    corrupt(inputs.kv)
    with pytest.raises(AttentionInputError) as exc:
        backend.prepare(inputs, problem, device=device)
    assert all(w in str(exc.value) for w in words) and len(str(exc.value).splitlines()) == 1, str(exc.value)


def test_prepare_rejects_a_layout_problem_without_its_storage(backend, device):
    problem = Problem.parse("B=3,H=2,N=5,M=20,D=8,kv=ragged")
    inputs = make_inputs(problem)
    with pytest.raises(AttentionInputError, match="needs Inputs.kv"):
        backend.prepare(Inputs(inputs.q, inputs.k, inputs.v, inputs.mask), problem, device=device)
