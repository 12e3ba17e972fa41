"""KV layouts (`attnbench.reference.layouts`): the spec round-trips, the storage holds the logical view, the
dense reference on that view is each sequence's own reference, and bad storage is refused naming the argument."""
import numpy as np
import pytest

from attnbench import reference
from attnbench.check import choose_key_rows, choose_rows
from attnbench.implementations.base import has_empty_rows
from attnbench.problem import Problem, make_inputs
from attnbench.reference import AttentionInputError
from attnbench.reference import layouts
from attnbench.reference.mods import Alibi, Sinks, Softcap, Window

SPECS = [
    "B=4,H=4,Hkv=2,N=30,M=30,D=8,causal=bottom_right,kv=ragged",
    "B=5,H=2,N=12,M=41,D=8,kv=ragged,window=6:0,alibi=batch",
    "B=3,H=2,N=3,M=50,D=8,causal=bottom_right,kv=paged:16",
    "B=3,H=2,N=3,M=50,D=8,kv=paged:1,softcap=5,sinks=1",
    "B=2,H=2,N=2,M=300,D=8,kv=paged:256,append=5",
    "B=4,H=2,N=6,M=40,D=8,causal=bottom_right,kv=ragged,append=3",
    "B=2,H=2,N=4,M=20,D=8,causal=bottom_right,append=4",
]


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trips(spec):
    p = Problem.parse(spec)
    assert Problem.parse(p.spec()) == p
    assert (f"kv={p.kv}" in p.spec()) == (p.kv != "dense") and (f"append={p.append}" in p.spec()) == (p.append > 0)


@pytest.mark.parametrize("spec", SPECS)
def test_storage_holds_the_logical_view(spec):
    p = Problem.parse(spec)
    inputs = make_inputs(p)
    q, k, v = layouts.logical_view(inputs.kv, p)
    assert np.array_equal(q, inputs.q) and np.array_equal(k, inputs.k) and np.array_equal(v, inputs.v)
    layouts.validate(inputs.kv, p, "test")
    rows, cols = layouts.valid(p)                       # outside the sequences: zeros
    assert not inputs.q.swapaxes(1, 2)[~rows].any() and not inputs.k.swapaxes(1, 2)[~cols].any()


@pytest.mark.parametrize("spec", SPECS)
def test_dense_reference_on_the_view_is_each_sequence_alone(spec):
    """Right alignment keeps each sequence's bottom-right rules: row for row, the view's reference is the
    reference of sequence b as an ordinary problem with N_b queries and M_b keys."""
    p = Problem.parse(spec)
    inputs = make_inputs(p)
    out, lse = reference.sdpa(inputs.q, inputs.k, inputs.v, return_lse=True, **inputs.reference_kwargs(p))
    g = layouts.geometry(p)
    for b in range(p.B):
        n, m = int(g.seq_q[b]), int(g.seq_k[b])
        mods = tuple(_one_batch(mod, b) for mod in inputs.mods)
        alone, alone_lse = reference.sdpa(inputs.q[b:b + 1, :, p.N - n:], inputs.k[b:b + 1, :, p.M - m:],
                                          inputs.v[b:b + 1, :, p.M - m:], causal=p.causal, scale=p.scale,
                                          mods=mods, return_lse=True)
        np.testing.assert_allclose(out[b:b + 1, :, p.N - n:], alone, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(lse[b:b + 1, :, p.N - n:], alone_lse, rtol=1e-12, atol=1e-12)
        assert not out[b, :, :p.N - n].any()                                  # padding rows: O = 0


def _one_batch(mod, b):
    """A bound modification with its per-batch inputs cut to batch b (ALiBi (B, H) slopes)."""
    if isinstance(mod, Alibi) and np.ndim(mod.slopes) == 2:
        return Alibi(mod.per, slopes=mod.slopes[b:b + 1])
    return mod


def test_pages_are_permuted_and_spare_slots_hold_garbage():
    p = Problem.parse("B=3,H=2,N=3,M=50,D=8,kv=paged:4")
    g, s = layouts.geometry(p), make_inputs(p).kv
    used = np.concatenate([g.block_table[b, :-(-int(g.seq_k[b]) // 4)] for b in range(p.B)])
    assert len(set(used.tolist())) == len(used) and not np.array_equal(used, np.sort(used))
    assert g.num_pages > len(used)
    spare = np.setdiff1d(np.arange(g.num_pages), used)
    assert np.all(s.k[spare] != 0)


def test_appended_keys_are_the_last_of_each_sequence_and_their_slots_garbage():
    p = Problem.parse("B=3,H=2,N=2,M=30,D=8,kv=ragged,append=4")
    inputs, g = make_inputs(p), layouts.geometry(p)
    assert np.array_equal(inputs.kv.k_new, inputs.k[:, :, -4:].swapaxes(1, 2))
    assert np.array_equal(inputs.kv.cache_seqlens, g.seq_k - 4)
    for b in range(p.B):       # the slots the new keys go to are not already the new keys: appending matters
        slots = g.cu_k[b] + g.cache[b] + np.arange(4)
        assert not np.allclose(inputs.kv.k[slots], inputs.kv.k_new[b])


def test_physical_and_logical_results_round_trip():
    p = Problem.parse("B=4,H=2,N=7,M=9,D=8,Dv=4,kv=ragged")
    rows, cols = layouts.valid(p)
    rng = np.random.default_rng(0)
    out = np.where(rows[:, None, :, None], rng.standard_normal((p.B, p.H, p.N, p.Dv)), 0.0)
    lse = np.where(rows[:, None, :], rng.standard_normal((p.B, p.H, p.N)), -np.inf)
    dk = np.where(cols[:, None, :, None], rng.standard_normal((p.B, p.Hkv, p.M, p.D)), 0.0)
    shapes = layouts.result_shapes(p)
    for name, x in (("out", out), ("lse", lse)):
        physical = layouts.to_physical(p, name, x)
        assert physical.shape == shapes[name] and np.array_equal(layouts.to_logical(p, name, physical), x)
    assert np.array_equal(layouts.to_logical(p, "dk", layouts.keys_to_physical(p, dk)), dk)


def test_rows_at_length_include_sequence_page_and_append_edges():
    p = Problem.parse("B=3,H=2,N=700,M=900,D=8,kv=ragged")
    g = layouts.geometry(p)
    rows, keys = set(choose_rows(p).tolist()), set(choose_key_rows(p).tolist())
    assert {p.N - int(n) for n in g.seq_q} <= rows and {p.M - int(m) for m in g.seq_k} <= keys
    paged = Problem.parse("B=2,H=2,N=4,M=900,D=8,kv=paged:16,append=3")
    g = layouts.geometry(paged)
    keys = set(choose_key_rows(paged).tolist())
    starts = [paged.M - int(m) for m in g.seq_k]
    assert {s + 16 * t + d for s in starts for t in (1, 20) for d in (-1, 0)} <= keys      # page edges
    assert {s + int(c) for s, c in zip(starts, g.cache)} <= keys                            # first appended key


def test_empty_rows_are_asked_per_sequence():
    p = Problem.parse("B=4,H=2,N=20,M=8,D=8,kv=ragged")
    assert not has_empty_rows(p)
    causal = p.replace(causal="bottom_right")
    g = layouts.geometry(causal)
    assert has_empty_rows(causal) == bool(np.any(g.seq_q > g.seq_k))


def test_validate_names_the_argument():
    p = Problem.parse("B=3,H=2,N=4,M=20,D=8,kv=paged:4")
    storage = make_inputs(p).kv
    storage.block_table = storage.block_table.copy()
    storage.block_table[2, 0] = 10_000
    with pytest.raises(AttentionInputError, match=r"^who: block_table points at page 10000, outside the pool"):
        layouts.validate(storage, p, "who")
    with pytest.raises(AttentionInputError, match="needs Inputs.kv"):
        layouts.validate(None, p, "who")


@pytest.mark.parametrize("backend", ["torch_blockwise", "twin"])
def test_native_reader_cuts_per_batch_modifications_per_sequence(backend):
    """A dense cache with appended keys is read one sequence at a time (`implementations/kv_torch.py`): the
    per-batch inputs of its modifications (ALiBi's (B, H) slopes, a document's (B, M) ids) cut to that sequence."""
    from attnbench.conformance.mutants import make_backend
    from attnbench.evaluate import evaluate
    from attnbench.implementations import get_backend

    chosen = make_backend(backend) if backend == "twin" else get_backend(backend)
    problem = Problem.parse("B=3,H=2,N=4,M=40,D=8,dtype=float32,append=3,document=3,alibi=batch")
    result = evaluate(chosen, problem)
    assert result.route is None and result.passed, result.message()


def test_a_backward_check_on_given_inputs_reads_the_logical_upstream_gradient():
    """check_backward(..., inputs=) of a ragged problem: the backend gets dO packed like O, the reference the
    logical (B, H, N, Dv) one (it raised on the packed one)."""
    from attnbench.check import check_backward
    from attnbench.implementations import get_backend

    problem = Problem.parse("B=3,H=2,N=9,M=9,D=8,dtype=float32,kv=ragged,causal=bottom_right")
    verdicts = check_backward(get_backend("torch_blockwise"), problem, inputs=make_inputs(problem))
    assert verdicts and all(v.passed for v in verdicts), [v.describe() for v in verdicts]
