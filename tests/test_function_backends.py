"""A plain function in (B, N, H, D) layout is a backend by name, in check, pytest conformance and perf."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.implementations import get_backend
from attnbench.reference import AttentionInputError

ROOT = Path(__file__).resolve().parents[1]
GOOD = "tests.plugins.functions:sdpa_bnhd@bnhd"
BAD = "tests.plugins.functions:sdpa_bnhd_no_scale@bnhd"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True)


def test_the_signature_decides_what_is_declared():
    caps = get_backend(GOOD).capabilities("cpu")
    assert caps.causal == ("top_left",) and caps.masks == () and caps.gqa and caps.grad


@pytest.mark.parametrize("name, words", [
    ("tests.plugins.functions", "unknown backend .* or a function as 'package.module:function'"),
    ("tests.plugins.functions:sdpa_bnhd@nhbd", "expected 'package.module:function'"),
    ("tests.plugins.functions:missing", "cannot load"),
    ("no_such_module_anywhere:fn", "cannot load"),
])
def test_a_bad_function_name_is_one_line_naming_it(name, words):
    with pytest.raises((AttentionInputError, KeyError), match=words):
        get_backend(name)


def test_check_passes_the_function_and_fails_the_buggy_one_with_a_repro():
    problem = "B=1,H=4,Hkv=2,N=97,M=113,D=32,dtype=float32,scale=0.3"
    good = _run("-m", "attnbench.cli", "check", GOOD, "--problem", problem)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _run("-m", "attnbench.cli", "check", BAD, "--problem", problem)
    assert bad.returncode == 1 and f"attnbench check {BAD}" in bad.stdout, bad.stdout + bad.stderr


def test_pytest_conformance_takes_the_function_by_name():
    ok = _run("-m", "pytest", "conformance/test_agreement.py", "conformance/test_gradients.py", "-q",
              "-p", "no:cacheprovider", "-k", "float32", "--backend", GOOD)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    wrong = _run("-m", "pytest", "conformance/test_agreement.py", "-q", "-x", "-p", "no:cacheprovider",
                 "--backend", BAD)
    assert wrong.returncode == 1 and "FAILED" in wrong.stdout, wrong.stdout[-3000:]


def test_perf_times_and_checks_the_function(tmp_path):
    run = _run("-m", "attnbench.cli", "perf", "--backends", GOOD, "--seq-lens", "64", "--quick", "--out",
               str(tmp_path), "--dtype", "float32")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in next(tmp_path.glob("run-*/results.jsonl")).read_text().splitlines()]
    assert records and all(r["backend"] == GOOD and r["status"] == "ok" and r["accurate"] for r in records)


def test_a_function_in_transformers_convention_is_a_backend_by_name():
    """fn(module, q, k, v, attention_mask, scaling=) -> ((B, N, H, Dv), _): the module object, the additive mask and
    the output layout are the adapter's; the same name passes when right and fails when it drops the mask."""
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    good = get_backend("tests.plugins.functions:hf_style_attention")
    bad = get_backend("tests.plugins.functions:hf_style_attention_ignoring_mask")
    assert good.module_convention and good.capabilities("cpu").causal == ("top_left", "bottom_right")
    problem = Problem(B=2, H=4, Hkv=2, N=37, M=45, D=16, causal="bottom_right", mask="padding", dtype="float32")
    assert evaluate(good, problem, backward=True).passed
    assert evaluate(bad, problem).passed is False
    assert "rows with every key masked" in good.why_not(problem.replace(mask="fully_masked"))


def test_flashattention_keywords_carry_the_modifications_a_function_declares():
    """window_size= / softcap= / alibi_slopes= / learnable_sink= in the signature declare those modifications and
    receive them in FlashAttention's conventions: a right function passes a problem composing all four, forward and
    backward; one whose window is a key short fails; FlashAttention 4's (None, None) default gets None for an
    unbounded side; ALiBi listed before softcap (FlashAttention applies softcap first) is a skip, not a call."""
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    good = get_backend("tests.plugins.functions:flash_style@bnhd")
    assert set(good.capabilities("cpu").mods) == {"window", "softcap", "alibi", "sinks"}
    problem = Problem.parse("B=2,H=4,Hkv=2,N=57,M=73,D=16,dtype=float16,causal=bottom_right,window=9:0,"
                                "softcap=20,alibi=batch,sinks=1")
    assert evaluate(good, problem, backward=True).passed
    bad = get_backend("tests.plugins.functions:flash_style_window_off_by_one@bnhd")
    assert evaluate(bad, problem).passed is False
    fa4 = get_backend("tests.plugins.functions:flash4_style@bnhd")
    assert set(fa4.capabilities("cpu").mods) == {"window", "softcap", "sinks"}
    assert evaluate(fa4, Problem.parse("B=1,H=2,N=40,M=50,D=16,dtype=bfloat16,window=6:-1")).passed
    assert "ALiBi before softcap" in good.why_not(Problem.parse("B=1,H=2,N=8,D=16,alibi=head,softcap=5"))


@pytest.mark.parametrize("good, bad, spec", [
    ("flash_varlen_style", "flash_varlen_keys_at_query_offsets",
     "B=4,H=4,Hkv=2,N=37,M=61,D=16,dtype=float16,kv=ragged,causal=bottom_right"),
    ("flash_kvcache_style", "flash_kvcache_pages_in_order",
     "B=4,H=4,Hkv=2,N=3,M=100,D=16,dtype=float64,kv=paged:16,append=2,causal=bottom_right"),
])
def test_flashattention_varlen_and_kvcache_signatures_read_their_layouts_natively(good, bad, spec):
    """flash_attn_varlen_func's cu_seqlens_q= and flash_attn_with_kvcache's k_cache= declare the KV layouts they
    read: a right function passes its layout in one call (the varlen one backward too; the kvcache one writes the
    appended keys into the cache it is given, which must not be the caller's: float64 shares its memory), and one
    that reads keys at the wrong offsets or pages in storage order fails."""
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    problem = Problem.parse(spec)
    right = get_backend(f"tests.plugins.functions:{good}")
    assert right.capabilities("cpu").reads_kv(problem) and right.convention in ("varlen", "kvcache")
    result = evaluate(right, problem, backward=right.convention == "varlen")
    assert result.passed, result.message()
    assert evaluate(get_backend(f"tests.plugins.functions:{bad}"), problem).passed is False


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_a_kvcache_function_may_write_the_appended_slots_of_its_cache_and_nothing_else(dtype):
    """flash_attn_with_kvcache writes the new keys into the cache it is given (its copy, never the caller's): that
    passes the call's contract in every dtype; zeroing one other slot of the cache breaks it."""
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    problem = Problem.parse(f"B=3,H=4,Hkv=2,N=2,M=70,D=16,dtype={dtype},kv=paged:16,append=3,causal=bottom_right")
    assert evaluate(get_backend("tests.plugins.functions:flash_kvcache_style"), problem).passed
    result = evaluate(get_backend("tests.plugins.functions:flash_kvcache_scribbles"), problem)
    assert result.passed is False and "input k was modified" in result.message()


def test_a_function_declares_what_its_signature_cannot_say_and_every_problem_outside_is_a_skip():
    """attnbench_capabilities (a dict of Capabilities fields) narrows what the signature declares; a problem
    outside it is a skip with the reason, never a call the kernel raises on; a field that does not exist is a
    one-line error naming it."""
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    narrow = get_backend("tests.plugins.functions:narrow_flash@bnhd")
    assert evaluate(narrow, Problem.parse("B=1,H=2,N=33,M=40,D=64,dtype=float16,causal=bottom_right")).passed
    for spec, words in [("D=80", "not one of 64, 128"), ("D=64,dtype=float32", "dtype float32 not supported"),
                        ("D=64,Hkv=1", "grouped-query"), ("D=64,Dv=128", "Dv != D")]:
        assert words in narrow.why_not(Problem.parse(f"B=1,H=2,N=8,dtype=float16,{spec}")), spec
    with pytest.raises(AttentionInputError, match="attnbench_capabilities has no field head_dim "):
        get_backend("tests.plugins.functions:misdeclared@bnhd")
    with pytest.raises(AttentionInputError, match="declares masks beyond what its signature takes"):
        get_backend("tests.plugins.functions:widened@bnhd")


def test_a_function_declaring_lse_has_its_second_result_checked_as_the_lse():
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    problem = Problem.parse("B=2,H=4,Hkv=2,N=37,M=45,D=16,dtype=float16,causal=bottom_right")
    good = evaluate(get_backend("tests.plugins.functions:flash_style_lse@bnhd"), problem)
    assert good.passed and any(v.name == "lse" for v in good.forward), good.message()
    bad = evaluate(get_backend("tests.plugins.functions:flash_style_lse_in_log2@bnhd"), problem)
    assert bad.passed is False and "lse" in bad.message()


def test_the_causal_flag_is_always_passed_so_a_causal_default_is_not_used_on_a_problem_that_is_not():
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    fn = get_backend("tests.plugins.functions:causal_by_default@bnhd")
    for causal in ("", ",causal=bottom_right"):
        assert evaluate(fn, Problem.parse(f"B=1,H=2,N=20,M=30,D=16,dtype=float32{causal}")).passed, causal


def test_a_module_class_is_made_once_and_a_kernel_beside_the_user_loads_from_the_working_directory(tmp_path,
                                                                                                  monkeypatch):
    """`attnbench check mine:attn` from the folder holding mine.py: the console script does not put the working
    directory on sys.path as `python -m` and pytest do, so the adapter looks there itself."""
    from attnbench.evaluate import evaluate
    from attnbench.problem import Problem

    problem = Problem.parse("B=1,H=2,N=20,M=30,D=16,dtype=float32")
    assert evaluate(get_backend("tests.plugins.functions:ModuleAttention"), problem).passed
    with pytest.raises(AttentionInputError, match="constructor needs arguments .*name an instance or a function"):
        get_backend("tests.plugins.functions:ModuleWithArguments")
    (tmp_path / "beside_the_user_7f3a.py").write_text("from tests.plugins.functions import sdpa_bnhd as attn\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))] + [str(ROOT)])
    monkeypatch.setenv("PYTHONPATH", "")
    assert evaluate(get_backend("beside_the_user_7f3a:attn@bnhd"), problem).passed


def test_flashattention_named_by_package_gets_its_documented_limits(monkeypatch):
    """`flash_attn:flash_attn_func` (FlashAttention 2: fp16/bf16, head dims up to 256, one head dim for K and V,
    CUDA) is never asked for a float32 problem it raises on: each is a skip naming the limit. A function's own
    attnbench_capabilities still has the last word."""
    import types

    from attnbench.implementations._function import function_backend
    from attnbench.problem import Problem

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1)):
        raise AssertionError("never called here")

    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    backend = get_backend("flash_attn:flash_attn_func@bnhd")
    assert backend.caps.why_not(Problem.parse("B=1,H=2,N=8,D=64,dtype=float16")) is None
    for spec, words in [("D=64,dtype=float32", "dtype float32 not supported"),
                        ("D=288,dtype=float16", "outside supported 1..256"), ("D=64,Dv=32,dtype=float16", "Dv != D")]:
        assert words in backend.caps.why_not(Problem.parse(f"B=1,H=2,N=8,{spec}")), spec
    assert "device cpu not supported" in backend.why_not(Problem.parse("B=1,H=2,N=8,D=64,dtype=float16"), "cpu")
    flash_attn_func.attnbench_capabilities = dict(dtypes=("float16", "bfloat16", "float32"))
    assert function_backend("flash_attn:flash_attn_func@bnhd").caps.why_not(       # a new one, not the registry's
        Problem.parse("B=1,H=2,N=8,D=64,dtype=float32")) is None
