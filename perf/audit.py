"""`attnbench audit`: compile triton_blockwise's kernels for GPU targets on a machine without a GPU.

For each kernel (forward, dK/dV, dQ) x launch config x head dim x dtype x causal
x modifications (none, or all: window, ALiBi, softcap, sinks) x target (sm_80
A100, sm_90a H100, sm_100a B200) it compiles with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`, reads the
cubin's resources with the cuobjdump bundled in the triton wheel
(`--dump-resource-usage`: REG, SHARED, LOCAL, STACK) and its SASS opcodes
(`-sass`), and computes the theoretical occupancy against `gpu_targets.TARGETS`.

A launchable config fails the audit when it spills (LOCAL or STACK > 0), needs
more shared memory than a block may have, has no resident block, or (float16 /
bfloat16) compiles to no tensor-core instruction. float32 dots are IEEE by the
backend's contract, so they are expected on the CUDA cores (FFMA), not failed.

What is compiled is one representative specialization: contiguous tensors
(last-dim strides 1), 16-byte-aligned pointers, H, N, M and the other strides
multiples of 16, GROUP = 1 (MHA); with modifications, ALiBi per (batch, head) after
the softcap (FlashAttention's order). A real launch with odd N compiles another
variant of the same code; its resources are close but not audited here.

Results are cached per (kernel source, triton version, case) in
$ATTNBENCH_AUDIT_CACHE (default ~/.cache/attnbench/audit), so a re-run only
compiles what changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .gpu_targets import PEAKS, ROOFLINE_GPUS, TARGETS, TargetLimits

HEAD_DIMS = (16, 32, 64, 80, 96, 128, 192, 256)
DTYPES = ("float16", "bfloat16", "float32")
CAUSAL = (False, True)          # the kernels specialise on CAUSAL only; top_left and bottom_right share the code
# The modifications' constexprs (triton_blockwise); a case with mods=True has them all on, the heaviest variant,
# and a problem with any modification launches only configs that pass it (EXCLUDED_WITH_MODS).
MOD_FLAGS = ("WINDOW", "ALIBI", "SOFTCAP", "SINKS")
MODS = (False, True)
# CI's representative subset (102 compiles, ~2-3 min on 2 cores; the full grid of 1,428 is on demand):
# every kernel, candidate config and target, causal on (the causal code is the non-causal code plus the mask),
# float16 at D 64, 80 (padded to 128) and 256, and float32 (the most registers) at D 256.
CI_SELECTION = (((64, 80, 256), ("float16",)), ((256,), ("float32",)))
CI_CAUSAL = (True,)
# ... plus the all-modifications variant at float16 D 64, causal (30 compiles, about 1 min on 2 cores when the
# kernels changed, 0 when cached): the full grid has it everywhere (EXCLUDED_WITH_MODS lists its failures).
CI_MODS_SELECTION = (((64,), ("float16",)),)
ROOFLINE_SEQ_LENS = (4096, 16384)
ROOFLINE_HEAD_DIMS = (64, 128)

_TRITON_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
# (pointer args in the problem's dtype, float32 pointer args, float scalar args) per kernel
_ARGS = {
    "fwd": ("Q K V O".split(), ["LSE", "ALIBI_SLOPES", "SINK_LOGITS"], ["qk_scale", "softcap"]),
    "dkdv": ("Q K V DO DK DVO".split(), ["LSE", "DELTA", "ALIBI_SLOPES"], ["qk_scale", "sm_scale", "softcap"]),
    "dq": ("Q K V DO DQ".split(), ["LSE", "DELTA", "ALIBI_SLOPES"], ["qk_scale", "sm_scale", "softcap"]),
}


@dataclass(frozen=True)
class AuditCase:
    kernel: str      # fwd, dkdv, dq
    target: str      # sm_80, sm_90, sm_100
    head_dim: int    # D = Dv
    dtype: str
    causal: bool
    config: tuple[int, int, int, int]   # (BLOCK_N, BLOCK_M, num_warps, num_stages)
    mods: bool = False   # every modification's constexpr on (window, ALiBi per (batch, head), softcap, sinks)

    @property
    def config_id(self) -> str:
        n, m, w, s = self.config
        return f"n{n}m{m}w{w}s{s}"


def _blockwise():
    from attnbench.implementations import triton_blockwise

    if triton_blockwise.INTERPRETED:
        raise RuntimeError("the audit compiles real GPU code: run it without TRITON_INTERPRET=1")
    return triton_blockwise


def audit_cases(head_dims=HEAD_DIMS, dtypes=DTYPES, causal=CAUSAL, targets=tuple(TARGETS),
                mods=MODS) -> list[AuditCase]:
    """Every (kernel, target, D, dtype, causal, candidate config, mods) of triton_blockwise's config space."""
    from attnbench.implementations.triton_blockwise import CONFIG_SPACE, KERNELS, dtype_kind, padded_head_dim

    cases = []
    for kernel in KERNELS:
        for target in targets:
            for d in head_dims:
                for dtype in dtypes:
                    for config in CONFIG_SPACE[kernel][(dtype_kind(dtype), padded_head_dim(d, d))]:
                        for c in causal:
                            for on in mods:
                                cases.append(AuditCase(kernel, target, d, dtype, c, (config.block_n, config.block_m,
                                                       config.num_warps, config.num_stages), on))
    return cases


def representative_signature(kernel_fn, kernel: str, case: AuditCase) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ASTSource, as the JIT would specialise a contiguous MHA launch.

    Ints equal to 1 become constexprs and multiples of 16 get tt.divisibility 16, as triton's launcher does.
    """
    tensors, fp32_tensors, floats = _ARGS[kernel]
    block_n, block_m, _, _ = case.config
    d_pad = max(16, 1 << (case.head_dim - 1).bit_length())
    consts = dict(CAUSAL=case.causal, IEEE=case.dtype == "float32", BLOCK_N=block_n, BLOCK_M=block_m,
                  BLOCK_D=d_pad, BLOCK_DV=d_pad, **{flag: case.mods for flag in MOD_FLAGS}, ALIBI_FIRST=False)
    n = m = 4096
    h, d = 16, case.head_dim
    ints = dict(sqb=h * n * d, sqh=n * d, sqn=d, sqd=1, skb=h * m * d, skh=m * d, skm=d, skd=1,
                svb=h * m * d, svh=m * d, svm=d, svd=1, sob=h * n * d, soh=n * d, son=d, sod=1,
                H=h, HKV=h, GROUP=1, N=n, M=m, D=d, DV=d, causal_offset=0, N_BUCKET=n, M_BUCKET=m,
                window_offset=-256 if case.mods else 0, seq_offset=0, alibi_sb=h if case.mods else 0)
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel_fn.arg_names):
        if name in consts:
            signature[name], constexprs[name] = "constexpr", consts[name]
        elif name in tensors or name in fp32_tensors:
            signature[name] = "*" + ("fp32" if name in fp32_tensors else _TRITON_DTYPE[case.dtype])
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in floats:
            signature[name] = "fp32"
        elif ints[name] == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _nvidia_bin(tool: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


def parse_resource_usage(text: str) -> dict:
    """cuobjdump --dump-resource-usage output -> {REG, STACK, SHARED, LOCAL} of the (single) function."""
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", text)
    if not m:
        raise ValueError(f"no resource line in cuobjdump output: {text[:200]!r}")
    return dict(zip(("regs", "stack", "shared_static", "local"), map(int, m.groups())))


def sass_opcode_counts(sass: str) -> Counter:
    """Opcode (text before the first '.') -> count, over the instructions of a cuobjdump -sass listing."""
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)", sass)
    return Counter(ops)


def tensor_core_ops(counts: Counter, target: TargetLimits) -> dict[str, int]:
    return {op: n for op, n in sorted(counts.items()) if op in target.tensor_core_ops}


def compile_case(case: AuditCase) -> dict:
    """Compile one case for its target and read back resources and tensor-core opcodes (runs in a worker)."""
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tb = _blockwise()
    kernel_fn = {"fwd": tb._fwd_kernel, "dkdv": tb._bwd_dkdv_kernel, "dq": tb._bwd_dq_kernel}[case.kernel]
    target = TARGETS[case.target]
    signature, constexprs, attrs = representative_signature(kernel_fn, case.kernel, case)
    _, _, warps, stages = case.config
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=kernel_fn, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", target.cc, 32),
                              options=dict(num_warps=warps, num_stages=stages))
    compile_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        listing = subprocess.run([_nvidia_bin("cuobjdump"), "--dump-resource-usage", "--dump-sass", str(cubin)],
                                 capture_output=True, text=True, check=True).stdout
    counts = sass_opcode_counts(listing)
    return dict(**parse_resource_usage(listing), shared_dynamic=int(compiled.metadata.shared),
                threads=warps * 32, tensor_core_ops=tensor_core_ops(counts, target),
                ffma=counts.get("FFMA", 0), compile_s=round(compile_s, 2))


def occupancy(regs: int, shared_bytes: int, threads: int, target: TargetLimits) -> dict:
    """Resident blocks and warps per SM from registers, shared memory and threads (CUDA occupancy calculator)."""
    warps = -(-threads // 32)
    regs_per_warp = -(-regs * 32 // target.register_alloc_unit) * target.register_alloc_unit
    by_regs = (target.registers_per_sm // regs_per_warp) // warps if regs_per_warp else target.max_blocks_per_sm
    smem_block = shared_bytes + target.reserved_shared_per_block
    smem_block = -(-smem_block // target.shared_alloc_unit) * target.shared_alloc_unit
    by_smem = target.shared_per_sm // smem_block
    by_threads = target.max_warps_per_sm // warps
    blocks = min(by_regs, by_smem, by_threads, target.max_blocks_per_sm)
    limiter = min((("registers", by_regs), ("shared", by_smem), ("threads", by_threads),
                   ("blocks", target.max_blocks_per_sm)), key=lambda kv: kv[1])[0]
    return dict(blocks_per_sm=blocks, warps_per_sm=blocks * warps, occupancy=blocks * warps / target.max_warps_per_sm,
                limited_by=limiter)


def problems(case: AuditCase, record: dict) -> list[str]:
    """Why a launchable config must not be launched on its target; [] when it is fine."""
    target = TARGETS[case.target]
    shared = record["shared_static"] + record["shared_dynamic"]
    found = []
    if record["local"] or record["stack"]:
        found.append(f"spills: LOCAL {record['local']} B, STACK {record['stack']} B")
    if shared > target.max_shared_per_block:
        found.append(f"shared memory {shared} B > {target.max_shared_per_block} B per block")
    if record["regs"] > target.max_registers_per_thread:
        found.append(f"{record['regs']} registers > {target.max_registers_per_thread}")
    if record["threads"] > target.max_threads_per_block:
        found.append(f"{record['threads']} threads > {target.max_threads_per_block}")
    if record["blocks_per_sm"] < 1:
        found.append("no block fits on an SM")
    if case.dtype != "float32" and not record["tensor_core_ops"]:
        found.append("no tensor-core instruction in the SASS")
    return found


KERNEL_SOURCES = ("_dot", "_tanh", "_alibi", "_score_mods", "_keep", "_fwd_kernel", "_recompute_p", "_bwd_dkdv_kernel",
                  "_bwd_dq_kernel")


def _source_key() -> str:
    """Hash of the kernels' source and the triton version: what a cached record depends on (not the config table)."""
    import inspect

    import triton

    from attnbench.implementations import triton_blockwise

    digest = hashlib.sha256(triton.__version__.encode())
    for name in KERNEL_SOURCES:
        fn = getattr(triton_blockwise, name)
        digest.update(inspect.getsource(getattr(fn, "fn", fn)).encode())
    return digest.hexdigest()[:16]


def _cache_path() -> Path:
    root = os.environ.get("ATTNBENCH_AUDIT_CACHE") or Path.home() / ".cache" / "attnbench" / "audit"
    return Path(root) / f"{_source_key()}.json"


def _case_key(case: AuditCase) -> str:
    """What the compiled code depends on: a head dim that is a multiple of 16 compiles exactly like its padded
    width (D is a runtime argument; the tile, strides' divisibility and constexprs are the same), so D 80, 96
    and 128 share one compile, as do 192 and 256."""
    key = asdict(case)
    if case.head_dim % 16 == 0:
        key["head_dim"] = max(16, 1 << (case.head_dim - 1).bit_length())
    return json.dumps(key, sort_keys=True)


def run_audit(cases: list[AuditCase], *, jobs: int = 2, progress=None, use_cache: bool = True) -> list[dict]:
    """One record per case (resources, occupancy, problems), compiling in `jobs` worker processes."""
    import multiprocessing

    cache_file = _cache_path()
    cache = json.loads(cache_file.read_text()) if use_cache and cache_file.exists() else {}
    todo = list({_case_key(c): c for c in cases if _case_key(c) not in cache}.values())

    def save() -> None:   # atomically, and every few results: an interrupted audit keeps what it compiled
        if use_cache:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_file)

    if todo:
        # spawn, without TRITON_INTERPRET: fresh interpreters import the kernels as real JIT functions, whatever
        # this process (a test session under the interpreter) holds
        saved = os.environ.pop("TRITON_INTERPRET", None)
        # triton 3.9 warns on every compile that FP fusion defaults on; say so (it is the runtime's default too)
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        try:
            with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
                for done, (case, raw) in enumerate(zip(todo, pool.map(compile_case, todo, chunksize=1)), 1):
                    cache[_case_key(case)] = raw
                    if done % 10 == 0:
                        save()
                    if progress:
                        progress(done, len(todo), case)
        finally:
            if saved is not None:
                os.environ["TRITON_INTERPRET"] = saved
            save()
    return [finish_record(case, cache[_case_key(case)]) for case in cases]


def finish_record(case: AuditCase, raw: dict) -> dict:
    """Case + compiled resources + occupancy + launchability + the problems found."""
    from attnbench.implementations.triton_blockwise import candidate_configs, dtype_kind, padded_head_dim

    target = TARGETS[case.target]
    shared = raw["shared_static"] + raw["shared_dynamic"]
    record = dict(asdict(case), config_id=case.config_id, **raw, shared_total=shared,
                  **occupancy(raw["regs"], shared, raw["threads"], target))
    launchable = candidate_configs(case.kernel, dtype_kind(case.dtype), padded_head_dim(case.head_dim, case.head_dim),
                                   case.target, case.mods)
    record["launchable"] = case.config_id in {c.id for c in launchable}
    record["problems"] = problems(case, record)
    return record


# ------------------------------------------------------------------------------------------- roofline

def predicted_bound(gpu: str, *, n: int, d: int, dtype: str, causal: str | None, pass_: str, b: int = 1,
                    h: int = 16) -> dict:
    """Best possible time and TFLOP/s of one attention call on `gpu` from published peaks (B, H, N = M, D = Dv).

    time >= max(FLOPs / peak FLOP/s, exponentials / peak exp2/s, minimum bytes / HBM bandwidth), each unit
    working flat out and perfectly overlapped. FLOPs and minimum bytes are the harness's own (perf.derived),
    causal counting only attended pairs; one exponential per attended pair for the forward and one more for
    the backward (an O(N)-memory kernel recomputes P). Config-independent: no launch config can beat it.
    """
    from attnbench.problem import Problem
    from attnbench.reference import attention_flops

    from .derived import flops, min_bytes

    peak = PEAKS[gpu]
    problem = Problem(B=b, H=h, N=n, D=d, dtype=dtype, causal=causal)
    work, moved = flops(problem, pass_), min_bytes(problem, pass_)
    pairs = attention_flops(b, h, n, n, d, d, causal=causal, pass_="fwd") // (4 * d)
    exps = pairs * (1 if pass_ == "fwd" else 2)
    times = {"matmul": work / peak.flops(dtype), "exp": exps / peak.exp2_per_s,
             "memory": moved / peak.hbm_bytes_per_s}
    limiter = max(times, key=times.get)
    seconds = times[limiter]
    return dict(gpu=gpu, target=peak.target, N=n, D=d, dtype=dtype, causal=causal, pass_=pass_,
                seconds=seconds, tflops=work / seconds / 1e12, bound=limiter)


def predicted_on_device(device_name: str, **point) -> dict | None:
    """predicted_bound for the GPU torch names `device_name` ("NVIDIA H200"), or None if its peaks are not listed."""
    from .gpu_targets import peaks_for_device_name

    peaks = peaks_for_device_name(device_name)
    return None if peaks is None else predicted_bound(peaks.gpu, **point)


def roofline_rows(dtype: str = "float16") -> list[dict]:
    return [predicted_bound(gpu, n=n, d=d, dtype=dtype, causal=causal, pass_=pass_)
            for gpu in ROOFLINE_GPUS for pass_ in ("fwd", "fwd+bwd") for causal in (None, "top_left")
            for d in ROOFLINE_HEAD_DIMS for n in ROOFLINE_SEQ_LENS]


# ------------------------------------------------------------------------------------------- output

TABLE_COLUMNS = ("kernel", "target", "D", "dtype", "causal", "mods", "config", "regs", "smem KiB", "local", "stack",
                 "threads", "blocks/SM", "occupancy", "limited by", "tensor cores", "ok")


def table_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for r in records:
        tc = ",".join(f"{op}x{n}" for op, n in r["tensor_core_ops"].items()) or (
            f"- (FFMA x{r['ffma']})" if r["dtype"] == "float32" else "NONE")
        rows.append([r["kernel"], r["target"], str(r["head_dim"]), r["dtype"], "yes" if r["causal"] else "no",
                     "all" if r.get("mods") else "none", r["config_id"], str(r["regs"]),
                     f"{r['shared_total'] / 1024:.1f}", str(r["local"]), str(r["stack"]), str(r["threads"]),
                     str(r["blocks_per_sm"]), f"{r['occupancy']:.0%}",
                     r["limited_by"], tc,
                     ("FAIL: " + "; ".join(r["problems"])) if r["problems"] and r["launchable"] else
                     ("excluded" if not r["launchable"] else "ok")])
    return rows


def format_table(head: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def roofline_table(rows: list[dict]) -> str:
    head = ("gpu", "target", "pass", "causal", "D", "N", "bound TFLOP/s", "limited by", "best ms")
    body = [[r["gpu"], r["target"], r["pass_"], r["causal"] or "none", str(r["D"]), str(r["N"]),
             f"{r['tflops']:.0f}", r["bound"], f"{r['seconds'] * 1e3:.3f}"] for r in rows]
    return format_table(head, body)


def failures(records: list[dict]) -> list[dict]:
    """Launchable configs with a problem: what makes the audit (and CI) fail."""
    return [r for r in records if r["launchable"] and r["problems"]]


def excluded_suggestion(records: list[dict]) -> str:
    """The EXCLUDED (plain variant) and EXCLUDED_WITH_MODS (all-modifications variant) entries
    (implementations/triton_blockwise.py) that would stop launching the failing configs."""
    from attnbench.implementations.triton_blockwise import dtype_kind, padded_head_dim

    tables: dict[str, dict[tuple, dict[str, str]]] = {}
    for r in failures(records):
        key = (r["target"], r["kernel"], dtype_kind(r["dtype"]), padded_head_dim(r["head_dim"], r["head_dim"]))
        table = tables.setdefault("EXCLUDED_WITH_MODS" if r.get("mods") else "EXCLUDED", {})
        table.setdefault(key, {})[r["config_id"]] = "; ".join(r["problems"])
    return "\n".join(f"  {name}:\n" + "\n".join(f"    {key!r}: {value!r}," for key, value in sorted(entries.items()))
                     for name, entries in sorted(tables.items()))


def audit_json(records: list[dict], roofline: list[dict], *, scope: str, seconds: float) -> dict:
    """The audit's JSON document (what perf/report.py may render as a section)."""
    import triton

    return dict(kind="attnbench-audit", backend="triton_blockwise", triton=triton.__version__, scope=scope,
                seconds=round(seconds, 1), targets={k: asdict(v) for k, v in TARGETS.items()},
                peaks={k: asdict(v) for k, v in PEAKS.items()}, records=records, roofline=roofline,
                failures=len(failures(records)))


def markdown_section(doc: dict, *, head_dims=(64, 128), dtype: str = "float16") -> str:
    """A report section from the audit JSON: the table for some head dims, the roofline, the failures."""
    records = [r for r in doc["records"] if r["head_dim"] in head_dims and r["dtype"] == dtype]
    rows = table_rows(records)
    md = [f"## GPU kernel audit (triton {doc['triton']}, {doc['scope']}, {doc['seconds']} s)\n",
          "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    md += ["", f"Launchable configs failing the audit: {doc['failures']}.", "",
           "### Predicted roofline (float16, B 1, H 16, N = M)", "", "```", roofline_table(doc["roofline"]), "```"]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------------------- command line

def add_audit_arguments(p) -> None:
    p.add_argument("backend", nargs="?", default="triton_blockwise", help="backend whose Triton kernels to audit")
    p.add_argument("--ci", action="store_true", help="CI's representative subset: float16 at D 64, 80, 256 and "
                   "float32 at D 256, causal, and float16 at D 64 with every modification on; every kernel, "
                   "config and target")
    p.add_argument("--head-dims", help="D values (default: " + ",".join(map(str, HEAD_DIMS)) + ")")
    p.add_argument("--dtypes", help="default: " + ",".join(DTYPES))
    p.add_argument("--causal", default="none,causal", help="none and/or causal")
    p.add_argument("--mods", default="none,all", help="none (plain kernels) and/or all (every modification's "
                   "constexpr on: window, ALiBi, softcap, sinks)")
    p.add_argument("--targets", help="default: " + ",".join(TARGETS))
    p.add_argument("--kernels", help="default: fwd,dkdv,dq")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (all cores)")
    p.add_argument("--json", metavar="PATH", help="write the audit JSON here")
    p.add_argument("--md", metavar="PATH", help="write a markdown report section here (D 64, 128, float16)")
    p.add_argument("--no-cache", action="store_true", help="recompile everything (default: reuse cached results)")


def _choose(text: str | None, allowed, default, what: str, cast=str) -> tuple:
    from attnbench.reference import AttentionInputError

    if text is None:
        return tuple(default)
    try:
        values = tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise AttentionInputError(f"--{what}: expected comma-separated values from {allowed}, got {text!r}") from None
    if not values or any(v not in allowed for v in values):
        raise AttentionInputError(f"--{what}: expected some of {', '.join(map(str, allowed))}, got {text!r}")
    return values


def selected_cases(args) -> tuple[list[AuditCase], str]:
    """The cases and a scope label from the parsed arguments (a user mistake raises AttentionInputError)."""
    from attnbench.implementations.triton_blockwise import KERNELS
    from attnbench.reference import AttentionInputError

    if args.backend != "triton_blockwise":
        raise AttentionInputError(f"audit: {args.backend!r} has no Triton kernels to audit (only triton_blockwise)")
    if args.ci:
        selection = [(h, d, CI_CAUSAL, (False,)) for h, d in CI_SELECTION]
        selection += [(h, d, CI_CAUSAL, (True,)) for h, d in CI_MODS_SELECTION]
    else:
        head_dims = _choose(args.head_dims, HEAD_DIMS, HEAD_DIMS, "head-dims", int)
        dtypes = _choose(args.dtypes, DTYPES, DTYPES, "dtypes")
        words = _choose(args.causal, ("none", "causal"), ("none", "causal"), "causal")
        mods = _choose(args.mods, ("none", "all"), ("none", "all"), "mods")
        selection = [(head_dims, dtypes, tuple(w == "causal" for w in words), tuple(w == "all" for w in mods))]
    targets = _choose(args.targets, tuple(TARGETS), tuple(TARGETS), "targets")
    kernels = _choose(args.kernels, KERNELS, KERNELS, "kernels")
    if args.jobs < 1:
        raise AttentionInputError("--jobs: expected an integer >= 1")
    cases = [c for head_dims, dtypes, causal, mods in selection
             for c in audit_cases(head_dims, dtypes, causal, targets, mods) if c.kernel in kernels]
    scope = "ci subset" if args.ci else ("full grid" if len(cases) == len(audit_cases()) else "selection")
    return cases, scope


def run_audit_command(args) -> int:
    """`attnbench audit`: table + roofline on stdout, progress on stderr; exit 1 if a launchable config fails."""
    import sys

    cases, scope = selected_cases(args)
    start = time.perf_counter()

    def progress(done: int, total: int, case: AuditCase) -> None:
        if done == 1 or done % 10 == 0 or done == total:
            elapsed = time.perf_counter() - start
            print(f"audit: compiled {done}/{total} ({elapsed:.0f} s, ~{elapsed / done * (total - done):.0f} s left)",
                  file=sys.stderr, flush=True)

    print(f"audit: {len(cases)} cases ({scope}), {args.jobs} compiler processes", file=sys.stderr, flush=True)
    records = run_audit(cases, jobs=args.jobs, progress=progress, use_cache=not args.no_cache)
    seconds = time.perf_counter() - start
    roofline = roofline_rows()
    print(format_table(TABLE_COLUMNS, table_rows(records)))
    print("\npredicted roofline bound (float16, B 1, H 16, N = M = 4k and 16k, D 64 and 128; published peaks):")
    print(roofline_table(roofline))
    doc = audit_json(records, roofline, scope=scope, seconds=seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    if args.md:
        Path(args.md).write_text(markdown_section(doc))
    bad = failures(records)
    for r in bad:
        print(f"FAIL {r['kernel']} {r['target']} D{r['head_dim']} {r['dtype']} causal={r['causal']} "
              f"mods={'all' if r['mods'] else 'none'} {r['config_id']}: {'; '.join(r['problems'])}", file=sys.stderr)
    if bad:
        print("audit: to stop launching them, fix the kernel or add to implementations/triton_blockwise.py:\n"
              + excluded_suggestion(records), file=sys.stderr)
    print(f"audit: {len(records)} cases, {len(bad)} launchable configs failing, {seconds:.0f} s ({scope})",
          file=sys.stderr)
    return 1 if bad else 0
