"""`attnbench audit`: parsing of cuobjdump output, occupancy, the failure rules, a real compile, the roofline."""
import json

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
    base = dict(regs=128, stack=0, shared_static=0, shared_dynamic=32768, local=0, threads=128,
                tensor_core_ops={"HMMA": 8}, ffma=0, blocks_per_sm=3)
    return {**base, **over}


@pytest.mark.parametrize("dtype, over, expect", [
    ("float16", {}, None),
    ("float16", dict(local=16), "spills"),
    ("float16", dict(stack=8), "spills"),
    ("float16", dict(shared_dynamic=240 * 1024), "shared memory"),
    ("float16", dict(blocks_per_sm=0), "no block fits"),
    ("float16", dict(tensor_core_ops={}), "no tensor-core instruction"),
    ("bfloat16", dict(tensor_core_ops={}), "no tensor-core instruction"),
    ("float32", dict(tensor_core_ops={}, ffma=4096), None),          # IEEE float32 belongs on the CUDA cores
])
def test_failure_rules(dtype, over, expect):
    case = audit.AuditCase("fwd", "sm_90", 64, dtype, True, (64, 64, 4, 2))
    found = audit.problems(case, _record(**over))
    assert (found == []) if expect is None else any(expect in p for p in found)


def test_real_compile_reads_resources_and_tensor_cores(tmp_path, monkeypatch):
    """Two small real compiles for sm_80: float16 reaches HMMA, float32 stays on FFMA; and a float32 tile the
    audit rejected (64 x 32 at D 64, causal: 255 registers and a stack frame) spills: the gate can fail."""
    monkeypatch.setenv("ATTNBENCH_AUDIT_CACHE", str(tmp_path))
    cases = [audit.AuditCase("fwd", "sm_80", 16, "float16", False, (64, 64, 4, 2)),
             audit.AuditCase("fwd", "sm_80", 16, "float32", False, (64, 64, 4, 2)),
             audit.AuditCase("fwd", "sm_80", 64, "float32", True, (64, 32, 4, 2))]
    half, single, huge = audit.run_audit(cases, jobs=2)
    assert half["regs"] > 0 and half["tensor_core_ops"].get("HMMA", 0) > 0 and not half["problems"]
    assert not single["tensor_core_ops"] and single["ffma"] > 0 and not single["problems"]
    assert huge["local"] + huge["stack"] > 0 and any("spills" in p for p in huge["problems"])
    assert len(json.loads(next(tmp_path.glob("*.json")).read_text())) == 3      # cached for the next run


def test_every_candidate_config_is_audited_on_every_target():
    from attnbench.implementations import triton_blockwise as tb

    audited = {(c.kernel, c.target, c.head_dim, c.dtype, c.causal, c.config, c.mods) for c in audit.audit_cases()}
    for kernel in tb.KERNELS:
        for target in TARGETS:
            for d in audit.HEAD_DIMS:
                for dtype in audit.DTYPES:
                    for cfg in tb.CONFIG_SPACE[kernel][(tb.dtype_kind(dtype), tb.padded_head_dim(d, d))]:
                        for causal in (False, True):
                            for mods in (False, True):
                                key = (kernel, target, d, dtype, causal,
                                       (cfg.block_n, cfg.block_m, cfg.num_warps, cfg.num_stages), mods)
                                assert key in audited, key


def test_a_config_excluded_with_modifications_is_launchable_without_them():
    """EXCLUDED_WITH_MODS narrows only the modifications' variant: the plain kernel keeps the config, and the audit
    judges each case by its own variant's table."""
    from attnbench.implementations import triton_blockwise as tb

    (target, kernel, kind, d_pad), excluded = next(iter(tb.EXCLUDED_WITH_MODS.items()))
    config_id = next(iter(excluded))
    assert config_id in {c.id for c in tb.candidate_configs(kernel, kind, d_pad, target)}
    assert config_id not in {c.id for c in tb.candidate_configs(kernel, kind, d_pad, target, mods=True)}
    config = next(c for c in tb.CONFIG_SPACE[kernel][(kind, d_pad)] if c.id == config_id)
    dtype = "float32" if kind == "fp32" else "float16"
    raw = {k: v for k, v in _record().items() if k != "blocks_per_sm"}      # as compile_case returns it
    for mods in (False, True):
        case = audit.AuditCase(kernel, target, d_pad, dtype, True, (config.block_n, config.block_m,
                                                                    config.num_warps, config.num_stages), mods)
        assert audit.finish_record(case, raw)["launchable"] is not mods


def test_ci_selection_covers_the_modifications_variant():
    from types import SimpleNamespace

    args = SimpleNamespace(backend="triton_blockwise", ci=True, targets=None, kernels=None, jobs=1)
    cases, scope = audit.selected_cases(args)
    assert scope == "ci subset" and any(c.mods for c in cases) and any(not c.mods for c in cases)


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
    (["audit", "--head-dims", "7"], "--head-dims"),
    (["audit", "--dtypes", "float64"], "--dtypes"),
    (["audit", "--targets", "sm_75"], "--targets"),
    (["audit", "--jobs", "0"], "--jobs"),
])
def test_audit_user_mistakes_exit_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
