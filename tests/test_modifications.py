"""The modifications' float64 spec (`attnbench.reference.mods`): each against its published definition written
out element by element, every reference path agreeing on them (NaN and -inf included), the backward against
finite differences, and the spec string."""
from __future__ import annotations

import numpy as np
import pytest

from attnbench import reference
from attnbench.problem import Problem, make_inputs
from attnbench.reference import AttentionInputError
from attnbench.reference.mods import Alibi, Sinks, Softcap, Window
from attnbench.reference.mods.alibi import geometric_slopes
from attnbench.reference.mods.document import Document
from attnbench.reference.mods.prefix_lm import PrefixLM


def _bound(mods, B, H, seed=0, N=9, M=13):
    return tuple(m.bind(Problem(B=B, H=H, N=N, M=M, D=1), np.random.default_rng(seed)) for m in mods)


def _by_element(q, k, v, *, window=None, softcap=None, slopes=None, sinks=None, causal=None, documents=None,
                prefix=None):
    """O (B, H, N, Dv) from the definitions as the kernels' docs state them, one (query, key) at a time: FlashAttention's
    window [i + M - N - left, i + M - N + right], softcap cap tanh(s / cap) of the scaled score, ALiBi
    -slope |i + M - N - j| added after it, a sink logit in the denominator, attention-gym's prefix-LM
    `kv_idx < prefix or q_idx >= kv_idx` with q_idx the key position i + M - N. No shared code with the reference."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    out = np.zeros((B, H, N, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hkv)
            for i in range(N):
                logits, values = [], []
                for j in range(M):
                    if causal == "bottom_right" and j > i + M - N:
                        continue
                    if documents is not None and documents[b, max(i + M - N, 0)] != documents[b, j]:
                        continue
                    if prefix is not None and not (j < prefix or i + M - N >= j):
                        continue
                    if window is not None:
                        left, right = window
                        if (left >= 0 and j < i + M - N - left) or (right >= 0 and j > i + M - N + right):
                            continue
                    s = float(q[b, h, i] @ k[b, kv, j]) / np.sqrt(D)
                    if softcap is not None:
                        s = softcap * np.tanh(s / softcap)
                    if slopes is not None:
                        slope = slopes[b, h] if slopes.ndim == 2 else slopes[h]
                        s -= slope * abs(i + M - N - j)
                    logits.append(s)
                    values.append(v[b, kv, j])
                denominator_terms = logits + ([sinks[h]] if sinks is not None else [])
                if not denominator_terms or not logits:
                    continue
                top = max(denominator_terms)
                weights = np.exp(np.array(logits) - top) / np.sum(np.exp(np.array(denominator_terms) - top))
                out[b, h, i] = weights @ np.array(values)
    return out


@pytest.fixture
def qkv():
    rng = np.random.default_rng(3)
    return rng.standard_normal((2, 4, 9, 5)) * 2, rng.standard_normal((2, 2, 13, 5)) * 2, rng.standard_normal((2, 2, 13, 3))


@pytest.mark.parametrize("mods, definition", [
    ((Window(3, 1),), dict(window=(3, 1))),
    ((Window(-1, 0),), dict(window=(-1, 0))),
    ((Window(2, -1),), dict(window=(2, -1))),
    ((Softcap(1.5),), dict(softcap=1.5)),
    ((Alibi("head"),), dict(slopes=geometric_slopes(4))),
    ((Sinks(),), dict()),
    ((Softcap(2.0), Alibi("batch"), Window(4, 0), Sinks()), dict(softcap=2.0, window=(4, 0))),
    ((Document(3),), dict()),
    ((PrefixLM(6),), dict(prefix=6)),                  # queries 0..1 in the prefix (key positions 4, 5), N < M
    ((PrefixLM(0),), dict(prefix=0)),                  # bottom-right causal
    ((PrefixLM(20),), dict(prefix=20)),                # past M: bidirectional
    ((Softcap(2.0), Window(3, 2), PrefixLM(7), Sinks()), dict(softcap=2.0, window=(3, 2), prefix=7)),
])
def test_reference_matches_the_published_definitions(qkv, mods, definition):
    q, k, v = qkv
    bound = _bound(mods, 2, 4)
    for m in bound:                                # the drawn inputs go to the definition too
        if isinstance(m, Alibi):
            definition = {**definition, "slopes": m.slopes}
        if isinstance(m, Sinks):
            definition = {**definition, "sinks": m.logits}
        if isinstance(m, Document):
            definition = {**definition, "documents": m.ids}
    for causal in (None,) if "prefix" in definition else (None, "bottom_right"):    # prefix-LM refuses causal
        np.testing.assert_allclose(reference.sdpa(q, k, v, mods=bound, causal=causal),
                                   _by_element(q, k, v, causal=causal, **definition), rtol=1e-12, atol=1e-12)


def test_alibi_head_slopes_are_the_papers():
    np.testing.assert_allclose(geometric_slopes(8), [2.0 ** -(h + 1) for h in range(8)])


def test_a_window_is_a_band_and_composes_with_causal():
    """Window(2, 0) with N = M is causal within 2 keys: the band, and causal changes nothing more."""
    q, k, v = np.zeros((1, 1, 6, 2)), np.zeros((1, 1, 6, 2)), np.eye(6)[None, None]
    weights = reference.sdpa(q, k, v, mods=(Window(2, 0),))[0, 0]
    expected = np.tril(np.ones((6, 6))) - np.tril(np.ones((6, 6)), -3)
    np.testing.assert_allclose(weights, expected / expected.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(reference.sdpa(q, k, v, mods=(Window(2, 0),), causal="bottom_right")[0, 0],
                               weights)


def _all_paths(q, k, v, g, mods, **kw):
    N, M = q.shape[2], k.shape[2]
    out, lse = reference.sdpa(q, k, v, mods=mods, return_lse=True, **kw)
    rows_out, rows_lse = reference.sdpa_rows(q, k, v, np.arange(N), mods=mods, block_m=4, **kw)
    tiled_out, tiled_lse = reference.blockwise_sdpa(q, k, v, mods=mods, block_n=3, block_m=5, return_lse=True, **kw)
    grads = reference.sdpa_backward(q, k, v, g, mods=mods, **kw)
    rows_grads = reference.sdpa_backward_rows(q, k, v, g, np.arange(N), np.arange(M), mods=mods, block_n=4,
                                              block_m=3, **kw)
    return (out, lse, *grads), (rows_out, rows_lse, *rows_grads), (tiled_out, tiled_lse)


@pytest.mark.parametrize("poison", ["none", "nan_query", "neginf_bias", "empty_rows"])
def test_every_reference_path_agrees_nan_and_inf_included(qkv, poison):
    q, k, v = (x.copy() for x in qkv)
    g = np.random.default_rng(5).standard_normal((2, 4, 9, 3))
    mask = None
    if poison == "nan_query":
        q[1, 2, 4, 0] = np.nan
    if poison == "neginf_bias":
        mask = np.where(np.random.default_rng(1).random((2, 1, 9, 13)) < 0.3, -np.inf, 0.5)
    mods = _bound((Softcap(3.0), Alibi("batch"), Window(5, 2), Sinks()), 2, 4)
    if poison == "empty_rows":
        mods = _bound((Window(0, 0),), 2, 4)             # one key per row, and a bool mask hiding all of row 2
        mask = np.ones((1, 1, 9, 13), dtype=bool)
        mask[..., 2, :] = False                          # row 2 sees nothing at all
    full, rows, tiled = _all_paths(q, k, v, g, mods, mask=mask)
    for a, b in zip(full, rows):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)
    for a, b in zip(full[:2], tiled):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)
    if poison == "nan_query":
        assert np.isnan(full[0][1, 2, 4]).all() and np.isnan(tiled[0][1, 2, 4]).all()


def test_backward_matches_finite_differences_through_every_modification(qkv):
    q, k, v = qkv
    g = np.random.default_rng(6).standard_normal((2, 4, 9, 3))
    mods = _bound((Alibi("head"), Softcap(2.5), Window(6, 3), Sinks()), 2, 4)
    dq, dk, dv = reference.sdpa_backward(q, k, v, g, mods=mods, causal="bottom_right")
    eps = 1e-6

    def loss(**changed):
        args = {**dict(q=q, k=k, v=v), **changed}
        return np.sum(reference.sdpa(args["q"], args["k"], args["v"], mods=mods, causal="bottom_right") * g)

    for name, x, grad, index in (("q", q, dq, (1, 3, 7, 2)), ("k", k, dk, (0, 1, 10, 4)), ("v", v, dv, (1, 0, 8, 1))):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        numeric = (loss(**{name: up}) - loss(**{name: down})) / (2 * eps)
        assert abs(numeric - grad[index]) < 1e-6 * max(1.0, abs(numeric)), (name, numeric, grad[index])


def test_sink_gradient_matches_finite_differences_in_float64(qkv):
    """d sink_h = -sum_n P_sink,n rowsum(dO O)_n (`reference.sdpa_backward`), against central differences of
    sum(O dO) in each head's sink logit, through GQA, a softcap, ALiBi, a window and rows that see no key."""
    q, k, v = qkv
    g = np.random.default_rng(7).standard_normal((2, 4, 9, 3))
    mods = _bound((Softcap(2.5), Alibi("batch"), Window(1, 0), Sinks()), 2, 4)
    mask = np.ones((1, 1, 9, 13), dtype=bool)
    mask[..., 3, :] = False                                            # row 3 sees nothing: O = 0, adds 0
    *_, dsink = reference.sdpa_backward(q, k, v, g, mods=mods, mask=mask, return_sink_grad=True)
    eps = 1e-6
    for h in range(4):
        loss = []
        for step in (eps, -eps):
            logits = mods[-1].logits.astype(np.float64).copy()
            logits[h] += step
            moved = mods[:-1] + (Sinks(logits),)
            loss.append(np.sum(reference.sdpa(q, k, v, mods=moved, mask=mask) * g))
        numeric = (loss[0] - loss[1]) / (2 * eps)
        assert abs(numeric - dsink[h]) < 1e-7 * max(1.0, abs(numeric)), (h, numeric, dsink[h])
    assert np.all(dsink != 0)
    *_, none = reference.sdpa_backward(q, k, v, g, return_sink_grad=True)
    assert np.array_equal(none, np.zeros(4))


def test_spec_round_trips_and_keeps_the_order():
    spec = "B=2,H=4,Hkv=2,N=97,M=113,D=64,dtype=float16,causal=bottom_right,alibi=batch,softcap=30,window=256:0,sinks=1"
    problem = Problem.parse(spec)
    assert [m.key for m in problem.mods] == ["alibi", "softcap", "window", "sinks"]
    assert Problem.parse(problem.spec()) == problem
    assert "window256:0" in problem.id


@pytest.mark.parametrize("spec, words", [
    ("N=8,window=abc", "window: expected LEFT:RIGHT"),
    ("N=8,window=-2:0", "window: left must be an integer >= -1"),
    ("N=8,softcap=-1", "softcap: expected a finite number > 0"),
    ("N=8,softcap=x", "softcap: expected a number"),
    ("N=8,alibi=row", "alibi: expected one of"),
    ("N=8,softcap=1,softcap=2", "each modification at most once"),
    ("N=8,blur=3", "expected key=value with key in"),
    ("N=8,document=0", "document: expected a count of documents >= 1"),
    ("N=8,M=3,document=4", "4 documents need M >= 4"),
    ("N=8,prefix_lm=-1", "prefix_lm: expected a prefix length >= 0"),
    ("N=8,prefix_lm=x", "prefix_lm: expected a prefix length"),
    ("N=8,causal=bottom_right,prefix_lm=4", "prefix_lm=4: is causal past its prefix already; drop causal"),
])
def test_bad_modification_specs_are_one_line_errors(spec, words):
    with pytest.raises(AttentionInputError, match=words) as err:
        Problem.parse(spec)
    assert "\n" not in str(err.value)


def test_inputs_bind_the_modifications_without_changing_q_k_v():
    plain = make_inputs(Problem(B=2, H=4, N=8, D=4))
    modified = make_inputs(Problem(B=2, H=4, N=8, D=4, mods=(Alibi("batch"), Sinks())))
    assert np.array_equal(plain.q, modified.q) and np.array_equal(plain.v, modified.v)
    alibi, sinks = modified.mods
    assert alibi.slopes.shape == (2, 4) and sinks.logits.shape == (4,)
    assert np.array_equal(alibi.slopes, alibi.slopes.astype(np.float32))     # float32, as kernels take them


def test_a_backend_without_a_modification_skips_with_its_reason():
    from attnbench.implementations import get_backend

    reason = get_backend("torch_sdpa_math").why_not(Problem(N=8, D=16, mods=(Window(2, 0),)))
    assert reason.startswith("modification window=2:0 not supported")


def test_keys_far_below_a_sink_underflow_within_budget_and_a_missing_sink_still_fails():
    """Every key ~130 below the sink: a float32 kernel's weights exp(s - m) ~ 1e-57 flush to 0, an output error of
    1e-58 that the budget's flush term (`budget.FLUSH_THRESHOLD`) allows; leaving the sink out is still caught."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from attnbench.check import check_forward
    from conformance.mutants import make_backend

    problem = Problem.parse("B=1,H=1,N=1,D=24,M=1,dtype=float32,scale=1.0,inputs=peaked,seed=6842,sinks=1")
    assert all(v.passed for v in check_forward(make_backend("twin"), problem))
    assert not all(v.passed for v in check_forward(make_backend("sink_missing"), problem))


def test_document_boundaries_sit_on_tile_edges_and_differ_per_batch():
    bounds = Document(4).boundaries(3, 1000)
    assert bounds[0].tolist() == [240, 496, 736] and bounds[1].tolist() == [241, 497, 737]
    assert (np.diff(Document(5).boundaries(2, 6), axis=1) > 0).all()            # stays increasing when M is small


def test_prefix_lm_is_attention_gyms_mask_when_n_equals_m_and_bottom_right_otherwise():
    """N = M: exactly `or_masks(kv_idx < P, q_idx >= kv_idx)`; N > M: the first N - M queries (before the first key)
    see the prefix alone; a decode step sees every key. Keys are one-hot in V, so O is the visible set's weights."""
    for n, m, prefix in ((7, 7, 3), (9, 5, 2), (1, 6, 2)):
        q, k, v = np.zeros((1, 1, n, 2)), np.zeros((1, 1, m, 2)), np.eye(m)[None, None]
        got = reference.sdpa(q, k, v, mods=(PrefixLM(prefix),))[0, 0] > 0
        i, j = np.arange(n)[:, None], np.arange(m)[None, :]
        want = (j < prefix) | (j <= i + m - n)
        assert np.array_equal(got, want), (n, m, prefix)
        if n == m:
            assert np.array_equal(got, (j < prefix) | (i >= j))


def test_prefix_lm_visible_range_holds_every_visible_key():
    """The tile-skipping range never cuts a visible key (and is tight at the last query of each range)."""
    from attnbench.reference.mods.base import Block

    for n, m, prefix in ((80, 100, 45), (100, 80, 5), (16, 16, 40)):
        mod = PrefixLM(prefix)
        keep = mod.keep(Block(np.arange(n), np.arange(m), n, m, 1, 1))
        for lo, hi in ((0, 15), (16, 31), (n - 7, n - 1)):
            first, last = mod.visible_range(lo, hi, n, m)
            cols = np.flatnonzero(keep[lo:hi + 1].any(axis=0))
            assert cols.size == 0 or (first <= cols.min() and cols.max() == last)


def test_a_sink_gradient_is_judged_where_declared_and_a_wrong_one_fails():
    """torch_eager, torch_blockwise and the twin return d sink (sink_grad) and pass its verdict; a sign slip fails."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from attnbench.check import check_backward
    from attnbench.implementations import get_backend
    from conformance.mutants import make_backend

    problem = Problem.parse("B=2,H=4,Hkv=2,N=17,M=23,D=16,dtype=float32,sinks=1,softcap=5")
    for backend in (get_backend("torch_eager"), get_backend("torch_blockwise"), make_backend("twin")):
        verdicts = check_backward(backend, problem)
        assert [v.name for v in verdicts if v.name == "dsink"] == ["dsink"] and all(v.passed for v in verdicts)
    wrong = {v.name: v for v in check_backward(make_backend("sink_grad_sign_flipped"), problem)}
    assert not wrong["dsink"].passed and wrong["dq"].passed


def test_a_sink_far_below_the_scores_leaves_a_d_sink_no_float32_holds():
    """bfloat16 large logits put the sink ~700 below each row's lse: d sink ~ 1e-294, 0 in the float32 every
    kernel returns it in. The bound allows the flushed P_sink (it failed torch_blockwise and twin_flash, 11-21x)."""
    from attnbench.check import check_backward
    from attnbench.implementations import get_backend

    problem = Problem.parse("B=2,H=2,N=17,M=9,D=8,dtype=bfloat16,sinks=1,inputs=large_logits")
    verdicts = check_backward(get_backend("torch_blockwise"), problem)
    dsink = next(v for v in verdicts if v.name == "dsink")
    assert 0 < abs(dsink.worst_expected) < 1e-200 and dsink.worst_actual == 0
    assert all(v.passed for v in verdicts), [v.describe() for v in verdicts]


def test_a_d_sink_of_the_wrong_sign_fails_in_half_precision_without_a_declared_precision():
    """torch_eager declares no precision: its d sink's first-order bound is at float16's u, 4-900x |d sink|, and a
    sign slip passed it in float16 and bfloat16. Condition 2 (twice the plain formula's d sink error) fails it."""
    from attnbench.check import check_backward
    from attnbench.implementations.torch_eager import TorchEager

    class Flipped(TorchEager):
        name = "eager_dsink_flipped"

        def prepare_backward(self, *args, **kwargs):
            run = super().prepare_backward(*args, **kwargs)
            return lambda: (lambda g: (*g[:3], -g[3]))(run())

    for dtype in ("float16", "bfloat16"):
        problem = Problem.parse(f"B=2,H=4,Hkv=2,N=33,M=47,D=16,dtype={dtype},sinks=1,seed=3")
        verdicts = {v.name: v for v in check_backward(Flipped(), problem)}
        assert not verdicts["dsink"].passed and "naive" in verdicts["dsink"].reason, verdicts["dsink"].describe()
        assert all(verdicts[n].passed for n in ("dq", "dk", "dv"))
        assert all(v.passed for v in check_backward(TorchEager(), problem))
