"""The one check on sampled rows: rows are chosen where tiled kernels break, a row-sampled verdict sees a kernel
that drops far keys, and the call's contract (dtype, shape, device, inputs unchanged) fails wrong kernels."""
import numpy as np
import pytest
import torch

from attnbench.check import (RowSample, check_backward, check_forward, choose_key_rows, choose_rows,
                             failure_message)
from attnbench.implementations import Capabilities, TorchBackend
from attnbench.implementations.torch_eager import eager_attention
from attnbench.problem import Problem


class _Eager(TorchBackend):
    """The plain formula; subclasses plant one bug each."""

    name = "eager_under_test"
    caps = Capabilities(grad=True, lse=True)

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return eager_attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse)


class _DropsKeysBeyond256(_Eager):
    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return super().attention(q, k[:, :, :256], v[:, :, :256], mask=mask if mask is None else mask[..., :256],
                                 causal=causal, scale=scale, return_lse=return_lse)


class _Float32Output(_Eager):
    def attention(self, q, k, v, **kw):
        return _Eager.attention(self, q.float(), k.float(), v.float(), **kw)


class _WritesQ(_Eager):
    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        out = super().attention(q, k, v, mask=mask, causal=causal, scale=scale, return_lse=return_lse)
        q.mul_(2.0)                                                  # a scratch buffer that was really the input
        return out


def test_rows_cover_both_sides_of_every_tile_edge_the_ends_and_the_bottom_right_diagonal():
    p = Problem(N=3000, M=1000, D=16, causal="bottom_right")
    rows = set(choose_rows(p).tolist())
    assert {0, 2999} <= rows
    assert {15, 16, 63, 64, 255, 256} <= rows
    assert {2943, 2944, 2945} <= rows                                # the last 64-query tile starts at 2944
    assert {2047, 2048} <= rows                                      # the last visible key of 2048 is key 48
    assert {1999, 2000, 2001} <= rows                                # the first query that sees a key: N - M
    keys = set(choose_key_rows(p).tolist())
    assert {0, 999, 255, 256, 767, 768} <= keys


def test_fully_masked_rows_are_chosen():
    from attnbench.problem import make_inputs

    p = Problem(N=600, M=600, D=8, mask="fully_masked", B=1)
    assert {0, 300} <= set(choose_rows(p, make_inputs(p)).tolist())


def test_a_row_sampled_check_passes_the_plain_formula_and_fails_a_kernel_dropping_keys_beyond_256():
    p = Problem(B=1, H=2, N=700, M=1000, D=16, dtype="float32", seed=1)
    verdicts = check_forward(_Eager(), p)
    assert not verdicts.rows.full and all(v.passed for v in verdicts), failure_message("e", p, verdicts)
    bad = check_forward(_DropsKeysBeyond256(), p)
    assert not all(v.passed for v in bad)
    message = failure_message("drops", p, bad)
    assert "--rows 0,1," in message and "rows checked" in message


def test_row_sampled_backward_agrees_for_the_plain_formula():
    p = Problem(B=1, H=2, Hkv=1, N=600, M=520, D=16, Dv=8, dtype="float32", causal="bottom_right", seed=2)
    verdicts = check_backward(_Eager(), p)
    assert not verdicts.rows.full and all(v.passed for v in verdicts), failure_message("e", p, verdicts,
                                                                                       backward=True)
    assert "--key-rows" in failure_message("e", p, verdicts, backward=True)


def test_explicit_rows_are_checked_and_named():
    p = Problem(N=40, D=8)
    verdicts = check_forward(_Eager(), p, rows=[3, 17])
    assert verdicts.rows == RowSample((3, 17), None)
    assert "--rows 3,17" in failure_message("e", p, verdicts)


def test_a_float32_output_for_float16_inputs_breaks_the_contract():
    p = Problem(N=16, D=8, dtype="float16")
    verdicts = check_forward(_Float32Output(), p)
    assert not verdicts[0].passed and "dtype float32" in verdicts[0].reason


def test_writing_into_an_input_breaks_the_contract_in_every_dtype():
    for dtype in ("float64", "float32", "float16"):
        verdicts = check_forward(_WritesQ(), Problem(N=16, D=8, dtype=dtype))
        assert not verdicts[0].passed and "input q was modified" in verdicts[0].reason, dtype


def test_the_reference_side_uses_pristine_inputs_when_a_float64_kernel_writes_q():
    """The output is right; only the contract may fail (the reference must not see the scribbled q)."""
    verdicts = check_forward(_WritesQ(), Problem(N=16, D=8, dtype="float64"))
    assert [v.name for v in verdicts if not v.passed] == ["contract"]


def test_torch_tensors_are_left_alone_by_the_plain_formula():
    q = torch.randn(1, 2, 8, 4)
    before = q.clone()
    _Eager()(q, q, q)
    assert torch.equal(q, before)


def test_the_row_bound_equals_the_budget_bound_on_every_row():
    from attnbench import reference
    from attnbench.budget import forward_bound, lse_bound
    from attnbench.problem import make_inputs
    from attnbench.row_bound import row_bounds

    for p in (Problem(B=2, H=4, Hkv=2, N=37, M=53, D=8, Dv=5, mask="per_head", causal="bottom_right",
                      dtype="float16", seed=3),
              Problem(B=2, H=2, N=30, M=20, D=8, mask="bias_extreme", scale=0.7, dtype="bfloat16"),
              Problem(B=1, H=2, N=40, M=40, D=8, mask="fully_masked", dtype="float32")):
        x = make_inputs(p)
        rows = np.arange(p.N)
        scale = p.D ** -0.5 if p.scale is None else p.scale
        out, lse = reference.sdpa_rows(x.q, x.k, x.v, rows, mask=x.mask, causal=p.causal, scale=p.scale)
        bias = reference.mask_to_bias(x.mask, p.causal, p.N, p.M)
        got, got_lse = row_bounds(x.q, x.k, x.v, out, lse, rows, scale=scale, dtype=p.dtype,
                                  block_m=16, mods=x.reference_mods(p))
        np.testing.assert_allclose(got, forward_bound(x.q, x.k, x.v, bias, scale, p.dtype), rtol=1e-9, atol=0)
        np.testing.assert_allclose(got_lse, lse_bound(x.q, x.k, lse, bias, scale, p.dtype), rtol=1e-9, atol=0)


def test_the_backward_row_scales_equal_the_full_checks_on_every_row():
    """A declared precision's backward bound on sampled rows is built from the same sums as at full size."""
    from attnbench.check import RowSample, backward_reference, row_gradient_scales
    from attnbench.problem import make_grad_out, make_inputs
    from attnbench.reference.mods import Alibi, Softcap, Window

    for p in (Problem(B=2, H=4, Hkv=2, N=37, M=53, D=8, Dv=5, mask="per_head", causal="bottom_right",
                      dtype="float16", seed=3),
              Problem(B=1, H=4, Hkv=2, N=30, M=41, D=8, dtype="bfloat16", mods=(Softcap(5.0), Alibi("batch"),
                                                                                   Window(9, 2)), seed=4),
              Problem(B=1, H=2, N=40, M=40, D=8, mask="fully_masked", dtype="float32")):
        x, g = make_inputs(p), make_grad_out(p)
        full = backward_reference(x, p, g, RowSample())
        rows = row_gradient_scales(x, p, g, full.expected, np.arange(p.N), np.arange(p.M))
        for want, got in zip(full.scales, rows):
            scalars = [f for f in want.__dataclass_fields__ if f not in ("elementwise", "lean")]
            np.testing.assert_allclose([getattr(got, f) for f in scalars], [getattr(want, f) for f in scalars],
                                       rtol=1e-9, atol=1e-300)
            for w, g_ in zip(want.elementwise, got.elementwise):          # each element's own: the lean test's slack
                np.testing.assert_allclose(g_, w, rtol=1e-9, atol=1e-300)
        # dQ's lean bound (`check.lean_gradient_terms`, blockwise on rows: `row_bound.DqLeanSums`), float16 only here
        want, got = full.scales[0].lean, rows[0].lean
        assert (want is None) == (got is None) == (p.dtype != "float16")
        if want is not None:      # the move of delta from the stored O sums round(O) - O: the online O's last
            for f in want.__dataclass_fields__:                   # float64 bits show there, 1e-9 of it
                np.testing.assert_allclose(getattr(got, f), getattr(want, f), rtol=1e-7, atol=1e-300, err_msg=f)


def test_a_row_sampled_backward_holds_a_declared_precision_to_its_bound():
    from attnbench.check import check_backward
    from conformance.mutants import make_backend

    p = Problem(B=1, H=2, N=1025, M=300, D=16, dtype="float16", seed=5)        # N M > 512 x 512: rows sampled
    verdicts = check_backward(make_backend("twin"), p)
    assert not verdicts.rows.full and all(v.passed for v in verdicts), "\n".join(v.describe() for v in verdicts)
    assert all(v.model_units is not None for v in verdicts[1:])


def test_a_half_precision_gradient_accumulator_fails_the_naive_rule_at_the_derived_length():
    """Without a declared precision (condition 2 alone): dK, dV kept in float16 fail at N = 8193 against 64 keys,
    dQ kept in bfloat16 at 32769 keys (`budget.half_accumulator_length`, `conformance/cases.py`)."""
    from conformance.cases import HALF_ACCUMULATOR
    from conformance.mutants import make_backend

    for name, problem, caught in (("dkdv_half_accumulator", HALF_ACCUMULATOR[0], {"dk", "dv"}),
                                  ("dq_half_accumulator", HALF_ACCUMULATOR[2], {"dq"})):
        backend = make_backend(name)
        backend.caps = backend.caps.replace(precision=())                   # declares nothing
        verdicts = check_backward(backend, problem)
        failed = {v.name for v in verdicts if not v.passed}
        assert failed == caught, "\n".join(v.describe() for v in verdicts)
        assert all("worse than 2x the naive" in v.reason for v in verdicts if not v.passed)


def test_perf_accuracy_is_checked_at_the_points_own_length():
    """A kernel wrong only beyond key 256 is inaccurate at N = M = 8192 in perf (no shrunk copy hides it)."""
    from attnbench.perf.measure import accuracy
    from attnbench.perf.spec import Case

    p = Problem(B=1, H=1, N=8192, M=8192, D=16, dtype="float32")
    good, bad = _Eager(), _DropsKeysBeyond256()
    bad.name = "drops_keys_beyond_256"
    error, passed = accuracy(good, Case(good.name, p))
    assert passed and 0 < error < 1e-5
    error, passed = accuracy(bad, Case(bad.name, p))
    assert not passed and error > 1e-2


@pytest.mark.parametrize("n", [33, 520], ids=["full", "rows_sampled"])
def test_a_declared_backward_bound_survives_non_finite_inputs(n):
    """One NaN in q and one inf in v (inputs=nonfinite) leave NaN gradients where the reference has them too; the
    declared precision's bound and condition 2's floor are scaled by the finite ones (the NaN maximum made the
    bound NaN: every finite error 'infx' its declared precision, torch_blockwise and every half-precision claim),
    on every row and on sampled rows (`row_bound.backward_row_scales`: the largest |q| row norm)."""
    from attnbench.implementations import get_backend

    problem = Problem(B=1, H=2, N=n, M=n + 14, D=16, dtype="float16", inputs="nonfinite")
    verdicts = check_backward(get_backend("torch_blockwise"), problem)
    assert verdicts.rows.full == (n == 33)
    assert all(v.passed for v in verdicts), "\n".join(v.describe() for v in verdicts)
    assert all(np.isfinite(v.model_units) and np.isfinite(v.naive_limit) for v in verdicts[1:])


def test_row_samples_cover_every_tile_of_each_sequence_in_its_own_coordinates():
    """A ragged kernel tiles each sequence from its own first row, a paged one each sequence's keys from its
    first page: every 16-row tile of every sequence (queries of a ragged batch, keys of any layout) holds a
    sampled row, not just every tile of the padded view (a review finding: 16- and 32-row tiles inside a
    sequence could go unchecked)."""
    from attnbench.check import choose_key_rows, choose_rows, sequence_spans

    for p in (Problem(B=5, H=2, N=1500, M=1700, D=32, dtype="float16", kv="ragged", seed=3),
              Problem(B=3, H=2, N=2, M=3000, D=32, dtype="float16", kv="paged:16", append=2, seed=4)):
        for side, chosen in (("query", set(choose_rows(p).tolist())), ("key", set(choose_key_rows(p).tolist()))):
            spans = sequence_spans(p, side)
            assert spans or side == "query"
            for start, length in spans:
                for tile in range(0, length, 16):
                    assert chosen & set(range(start + tile, start + min(tile + 16, length))), (p.kv, side, start,
                                                                                               tile)
    assert not sequence_spans(Problem(B=2, H=2, N=64, M=64, D=16), "key")


def _blockwise_writing(name: str):
    """torch_blockwise (it reads every KV layout natively) with its converted `name` (q, or the cache k) used as
    a scratch buffer after the work: the right output, the caller's storage changed."""
    from attnbench.implementations import get_backend

    class Writes(type(get_backend("torch_blockwise"))):
        def attention_kv(self, problem, q, k, v, *args, **kwargs):
            out = super().attention_kv(problem, q, k, v, *args, **kwargs)
            with torch.no_grad():
                {"q": q, "k": k}[name].mul_(2.0)
            return out

    return Writes()


@pytest.mark.parametrize("kv", ["ragged", "paged:16", "paged:16,append=2"])
@pytest.mark.parametrize("name", ["q", "k"])
def test_writing_into_an_input_breaks_the_contract_in_every_layout_and_dtype(kv, name):
    # The class `_WritesQ` stands for, on the path that reads the layout's storage: in float32 and float16 the
    # kernel writes the converted copy only, which the check must see as it does for a dense problem.
    causal = ",causal=bottom_right" if kv.startswith("paged") else ""
    for dtype in ("float64", "float32", "float16"):
        p = Problem.parse(f"B=3,H=2,N=5,M=40,D=8,dtype={dtype},kv={kv}{causal}")
        verdicts = check_forward(_blockwise_writing(name), p)
        assert not verdicts[0].passed and f"input {name} was modified" in verdicts[0].reason, (kv, dtype)


class _BackwardWritesGradOut(_Eager):
    """The right gradients; the upstream gradient dO then used as a scratch buffer (zeroed)."""

    def prepare_backward(self, inputs, problem, grad_out, *, device="cpu"):
        run = super().prepare_backward(inputs, problem, grad_out, device=device)
        g = run.native_grad_out if hasattr(run, "native_grad_out") else None

        def scribbling():
            grads = run()
            with torch.no_grad():
                (g if g is not None else torch.from_numpy(grad_out)).zero_()
            return grads

        scribbling.__dict__.update(run.__dict__)
        return scribbling


def test_a_backward_writing_the_upstream_gradient_breaks_the_contract_in_every_dtype():
    # dO is the backward's input as q, k, v are: writes_input_in_place's class in the backward.
    for dtype in ("float64", "float32", "float16"):
        verdicts = check_backward(_BackwardWritesGradOut(), Problem(N=16, M=12, D=8, dtype=dtype))
        assert not verdicts[0].passed and "input dO was modified" in verdicts[0].reason, dtype
        assert [v.name for v in verdicts if not v.passed] == ["contract"], dtype     # the gradients are right


@pytest.mark.parametrize("backend", ["torch_blockwise", "torch_eager"])      # ragged natively; via pad-and-mask
def test_a_ragged_backward_writing_the_upstream_gradient_breaks_the_contract(backend):
    from attnbench.implementations import get_backend

    class Writes(type(get_backend(backend))):
        def prepare_backward(self, inputs, problem, grad_out, *, device="cpu"):
            run = super().prepare_backward(inputs, problem, grad_out, device=device)

            def scribbling():
                grads = run()
                run.native_grad_out.zero_()
                return grads

            scribbling.__dict__.update(run.__dict__)
            return scribbling

    verdicts = check_backward(Writes(), Problem.parse("B=3,H=2,N=9,M=20,D=8,dtype=float32,kv=ragged"))
    assert not verdicts[0].passed and "input dO was modified" in verdicts[0].reason
    assert [v.name for v in verdicts if not v.passed] == ["contract"]
