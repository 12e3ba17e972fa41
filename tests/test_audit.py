"""`attnbench audit`: parsing of cuobjdump output, occupancy, the failure rules, real compiles (triton_blockwise and
the example plugin's kernel through the hook), the selection options, the roofline."""
import dataclasses
import json
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.perf import audit
from attnbench.perf.gpu_targets import PEAKS, TARGETS

pytest.importorskip("triton")

RESOURCE_USAGE = """
Resource usage:
 Common:
  GLOBAL:11 CONSTANT[4]:8
 Function _fwd_kernel:
  REG:217 STACK:0 SHARED:1024 LOCAL:16 CONSTANT[0]:680 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
SASS = """
        /*3710*/                   HGMMA.64x64x16.F32 R24, gdesc[UR12].tnspB, RZ, !UPT ;   /* 0x40e000000c1879f0 */
        /*3720*/              @!P0 HMMA.16816.F32 R4, R8, R12, R4 ;                      /* 0x000000000c04723c */
        /*3730*/               @P1 FFMA R1, R2, R3, R4 ;                                   /* 0x0000000302017223 */
        /*3740*/                   UTCHMMA gdesc[UR4], gdesc[UR6], tmem[UR8], idesc[UR9], UPT ;  /* 0x0 */
"""


def test_resource_line_is_parsed():
    assert audit.parse_resource_usage(RESOURCE_USAGE) == dict(regs=217, stack=0, shared_static=1024, local=16)
    with pytest.raises(ValueError):
        audit.parse_resource_usage("nothing here")


def test_tensor_core_opcodes_are_found_with_predicates_and_counted_per_target():
    counts = audit.sass_opcode_counts(SASS)
    assert counts == {"HGMMA": 1, "HMMA": 1, "FFMA": 1, "UTCHMMA": 1}
    assert audit.tensor_core_ops(counts, TARGETS["sm_80"]) == {"HMMA": 1}
    assert audit.tensor_core_ops(counts, TARGETS["sm_90"]) == {"HGMMA": 1, "HMMA": 1}
    assert audit.tensor_core_ops(counts, TARGETS["sm_100"]) == {"HMMA": 1, "UTCHMMA": 1}


def test_occupancy_follows_the_allocation_rules():
    # 255 registers -> 8160 per warp, allocated as 8192: 8 warps of the 65536 -> 2 blocks of 4 warps.
    occ = audit.occupancy(255, 65 * 1024, 128, TARGETS["sm_90"])
    assert (occ["blocks_per_sm"], occ["warps_per_sm"], occ["limited_by"]) == (2, 8, "registers")
    # shared: (100 KiB + 1 KiB reserved) per block; 228 KiB per SM holds 2; 32 registers would allow 16
    occ = audit.occupancy(32, 100 * 1024, 128, TARGETS["sm_90"])
    assert (occ["blocks_per_sm"], occ["limited_by"]) == (2, "shared")
    # A100 has 164 KiB per SM: the same block fits once
    assert audit.occupancy(32, 100 * 1024, 128, TARGETS["sm_80"])["blocks_per_sm"] == 1
    # more shared memory than the SM has: nothing resident
    assert audit.occupancy(32, 300 * 1024, 128, TARGETS["sm_90"])["blocks_per_sm"] == 0


def _record(**over):
    base = dict(target="sm_90", regs=128, stack=0, shared_static=0, shared_dynamic=32768, local=0, threads=128,
                tensor_core_ops={"HMMA": 8}, ffma=0, blocks_per_sm=3, tensor_cores_required=True)
    return {**base, **over}


@pytest.mark.parametrize("over, expect", [
    ({}, None),
    (dict(local=16), "spills"),
    (dict(stack=8), "spills"),
    (dict(shared_dynamic=240 * 1024), "shared memory"),
    (dict(blocks_per_sm=0), "no block fits"),
    (dict(tensor_core_ops={}), "no tensor-core instruction"),
    (dict(tensor_core_ops={}, ffma=4096, tensor_cores_required=False), None),   # IEEE float32: the CUDA cores
])
def test_failure_rules(over, expect):
    found = audit.problems(_record(**over))
    assert (found == []) if expect is None else any(expect in p for p in found)


def _launch(kernel_name, d, dtype, causal, config, mods=False):
    """A triton_blockwise KernelLaunch for one config, from the arguments its own launch code builds."""
    from attnbench.implementations import KernelLaunch
    from attnbench.implementations import triton_blockwise as tb

    call = tb.audit_calls(d, dtype, causal, mods)[kernel_name]
    n, m, warps, stages = config
    return KernelLaunch(tb._AUDIT_KERNELS[kernel_name], call.args, {**call.constexprs, "BLOCK_N": n, "BLOCK_M": m},
                        warps, stages, labels=(("D", str(d)), ("dtype", dtype)), tensor_cores=dtype != "float32")


def test_real_compile_reads_resources_and_tensor_cores(tmp_path, monkeypatch):
    """Two small real compiles for sm_80: float16 reaches HMMA, float32 stays on FFMA; and a float32 tile the
    audit rejected (64 x 32 at D 64, causal: 255 registers and a stack frame) spills: the gate can fail."""
    monkeypatch.setenv("ATTNBENCH_AUDIT_CACHE", str(tmp_path))
    launches = [("sm_80", _launch("fwd", 16, "float16", False, (64, 64, 4, 2))),
                ("sm_80", _launch("fwd", 16, "float32", False, (64, 64, 4, 2))),
                ("sm_80", _launch("fwd", 64, "float32", True, (64, 32, 4, 2)))]
    half, single, huge = audit.run_audit("triton_blockwise", launches, jobs=1)
    assert half["regs"] > 0 and half["tensor_core_ops"].get("HMMA", 0) > 0 and not half["problems"]
    assert not single["tensor_core_ops"] and single["ffma"] > 0 and not single["problems"]
    assert huge["local"] + huge["stack"] > 0 and any("spills" in p for p in huge["problems"])
    assert len(json.loads(next(tmp_path.glob("*.json")).read_text())["compiled"]) == 3   # cached for the next run


def test_launches_that_specialise_alike_share_one_compile():
    """D 80 and 128 are both multiples of 16, a runtime argument the JIT specialises only on that: one key; D 72
    is not (no divisibility 16): another."""
    keys = {d: audit.job_key(audit.make_job("sm_90", _launch("fwd", d, "float16", True, (64, 64, 4, 2))))
            for d in (72, 80, 128)}
    assert keys[80] == keys[128] != keys[72]
    # a --plugin file is imported under a module name that varies per process: the key does not
    job = audit.make_job("sm_90", _launch("fwd", 64, "float16", True, (64, 64, 4, 2)))
    assert audit.job_key(dataclasses.replace(job, module="attnbench_plugin_x_123")) == audit.job_key(job)


def _triton_blockwise_launches(target):
    from attnbench.implementations import get_backend

    return get_backend("triton_blockwise").audit_launches(target)


def test_every_candidate_config_is_audited_on_every_target():
    from attnbench.implementations import triton_blockwise as tb

    for target in TARGETS:
        audited = {tuple(dict(launch.labels).values()) for launch in _triton_blockwise_launches(target)}
        for kernel in tb.KERNELS:
            for d in tb.AUDIT_HEAD_DIMS:
                for dtype in tb.AUDIT_DTYPES:
                    for cfg in tb.CONFIG_SPACE[kernel][(tb.dtype_kind(dtype), tb.padded_head_dim(d, d))]:
                        for causal in ("none", "causal"):
                            for mods in ("none", "all"):
                                key = (kernel, str(d), dtype, causal, mods, cfg.id)
                                assert key in audited, (target, key)


def test_a_config_excluded_with_modifications_is_launchable_without_them():
    """EXCLUDED_WITH_MODS narrows only the modifications' variant: the plain kernel keeps the config, and the audit
    judges each launch by its own variant's table."""
    from attnbench.implementations import triton_blockwise as tb

    (target, kernel, kind, d_pad), excluded = next(iter(tb.EXCLUDED_WITH_MODS.items()))
    config_id = next(iter(excluded))
    assert config_id in {c.id for c in tb.candidate_configs(kernel, kind, d_pad, target)}
    assert config_id not in {c.id for c in tb.candidate_configs(kernel, kind, d_pad, target, mods=True)}
    dtype = "float32" if kind == "fp32" else "float16"
    for launch in _triton_blockwise_launches(target):
        labels = dict(launch.labels)
        if (labels["kernel"], labels["D"], labels["dtype"], labels["config"], labels.get("kv")) == (
                kernel, str(d_pad), dtype, config_id, None):          # the dense launches (KV layouts: below)
            assert launch.launchable is (labels["mods"] == "none")
            assert launch.exclude_hint.startswith("EXCLUDED_WITH_MODS" if labels["mods"] == "all" else "EXCLUDED[")


def test_a_config_excluded_with_a_kv_layout_is_launchable_dense():
    """EXCLUDED_WITH_KV narrows only the layout variants (label "kv"): the dense launch keeps the config."""
    from attnbench.implementations import triton_blockwise as tb

    (target, kernel, kind, d_pad), excluded = next(iter(tb.EXCLUDED_WITH_KV.items()))
    config_id = next(iter(excluded))
    assert config_id in {c.id for c in tb.candidate_configs(kernel, kind, d_pad, target)}
    assert config_id not in {c.id for c in tb.candidate_configs(kernel, kind, d_pad, target, kv=True)}
    seen = set()
    for launch in _triton_blockwise_launches(target):
        labels = dict(launch.labels)
        if (labels["kernel"], labels["D"], labels["config"], labels["mods"]) == (kernel, str(d_pad), config_id,
                                                                                 "none"):
            seen.add(labels.get("kv"))
            assert launch.launchable is ("kv" not in labels)
            assert launch.exclude_hint.startswith("EXCLUDED_WITH_KV" if "kv" in labels else "EXCLUDED[")
    assert None in seen and len(seen) > 1


def _args(**over):
    from types import SimpleNamespace

    base = dict(backend="triton_blockwise", plugin=[], ci=False, targets=None, jobs=1, kernels=None, head_dims=None,
                dtypes=None, causal=None, mods=None)
    return SimpleNamespace(**{**base, **over})


def test_ci_selection_covers_the_modifications_variant():
    launches, scope = audit.selected_launches(_args(ci=True))
    mods = {dict(launch.labels)["mods"] for _, launch in launches}
    # launchable configs only: an excluded one is not run, so it cannot fail CI
    assert scope == "ci subset" and mods == {"none", "all"} and len(launches) == 91
    assert all(launch.launchable for _, launch in launches)
    # every modification on: the KV variants only (each the dense kernel plus its loads: the most registers)
    assert all(dict(launch.labels).get("kv") for _, launch in launches if dict(launch.labels)["mods"] == "all")
    assert {dict(launch.labels).get("kv") for _, launch in launches} == {None, "paged+append", "ragged"}
    assert {dict(launch.labels)["dtype"] for _, launch in launches} == {"float16", "float32"}


def test_label_options_select_launches():
    launches, scope = audit.selected_launches(_args(kernels="dq", head_dims="64,80", dtypes="float16",
                                                    causal="causal", mods="none", targets="sm_90"))
    labels = {tuple(dict(launch.labels)[k] for k in ("kernel", "dtype", "causal", "mods")) for _, launch in launches}
    assert scope == "selection" and labels == {("dq", "float16", "causal", "none")}
    assert {dict(launch.labels)["D"] for _, launch in launches} == {"64", "80"}
    assert {target for target, _ in launches} == {"sm_90"}


EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "triton_plugin" / "triton_example.py")


def test_a_plugin_file_declares_its_kernel_and_is_audited(tmp_path, monkeypatch, capsys):
    """The example plugin's kernel, compiled for sm_90 (float16, D 64, causal: its CI subset): wgmma, no spill."""
    monkeypatch.setenv("ATTNBENCH_AUDIT_CACHE", str(tmp_path))
    assert main(["audit", "triton_example", "--plugin", EXAMPLE, "--ci", "--targets", "sm_90", "--jobs", "1",
                 "--json", str(tmp_path / "audit.json")]) == 0
    doc = json.loads((tmp_path / "audit.json").read_text())
    assert doc["backend"] == "triton_example" and len(doc["records"]) == 2 and doc["failures"] == 0
    assert all(r["tensor_core_ops"].get("HGMMA") for r in doc["records"])
    assert "triton_example: 2 launches (ci subset)" in capsys.readouterr().err


def test_roofline_bound_never_beats_a_peak():
    for gpu in PEAKS:
        for d in (64, 128):
            for pass_ in ("fwd", "fwd+bwd"):
                r = audit.predicted_bound(gpu, n=4096, d=d, dtype="float16", causal=None, pass_=pass_)
                peak = PEAKS[gpu]
                assert r["tflops"] <= peak.half_tensor_flops / 1e12 + 1e-6
                # exp-limited exactly when one exponential costs more than the 4 D matmul FLOPs of its pair
                exp_limited = peak.exp2_per_s * 4 * d < peak.half_tensor_flops
                assert (r["bound"] == "exp") == exp_limited


@pytest.mark.parametrize("argv, message", [
    (["audit", "torch_eager"], "has no Triton kernels"),
    (["audit", "no_such_backend"], "unknown backend"),
    (["audit", "--plugin", "no/such/file.py"], "no such file"),
    (["audit", "--head-dims", "7"], "--head-dims"),
    (["audit", "--dtypes", "float64"], "--dtypes"),
    (["audit", "--mods", "some"], "--mods"),
    (["audit", "--targets", "sm_75"], "--targets"),
    (["audit", "--jobs", "0"], "--jobs"),
])
def test_audit_user_mistakes_exit_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
