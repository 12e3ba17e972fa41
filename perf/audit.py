"""`attnbench audit NAME`: compile a backend's Triton kernels for GPU targets on a machine without a GPU.

A backend declares what to compile (`Backend.audit_launches(target, ci=)`: one `KernelLaunch` per kernel and
launch config, with the arguments a launch passes); triton_blockwise and the example plugin
(`examples/triton_plugin/triton_example.py`) do. For each launch and target of `gpu_targets.TARGETS` (sm_80 A100,
sm_90a H100, sm_100a B200) the audit specialises the arguments with triton's own JIT binder (as a launch would:
an int 1 becomes a constexpr, multiples of 16 and pointers get divisibility 16), compiles with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`, reads the cubin's resources with the
cuobjdump bundled in the triton wheel (`--dump-resource-usage`: REG, SHARED, LOCAL, STACK) and its SASS opcodes
(`-sass`), and computes the theoretical occupancy against the target's limits.

A launchable launch fails the audit when it spills (LOCAL or STACK > 0), needs more shared memory than a block
may have, has no resident block, or (`tensor_cores`: half-precision dots) compiles to no tensor-core instruction.
float32 dots that are IEEE by a backend's contract belong on the CUDA cores (FFMA) and are not failed.

Compiles run in fresh worker processes (spawned without TRITON_INTERPRET, so the kernels are real JIT functions),
each in its own process group: SIGTERM or Ctrl-C to the audit ends every worker and the compiler it runs, and a
worker dies with the audit even when that is SIGKILLed. Results are cached per backend in
$ATTNBENCH_AUDIT_CACHE (default ~/.cache/attnbench/audit), in a file named for the triton version and the source
of the Triton functions in the kernels' modules, keyed by the specialised launch: a re-run compiles only what
changed, and launches that specialise alike (triton_blockwise at D 80, 96 and 128: D is a runtime argument)
compile once.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .gpu_targets import PEAKS, ROOFLINE_GPUS, TARGETS, TargetLimits

ROOFLINE_SEQ_LENS = (4096, 16384)
ROOFLINE_HEAD_DIMS = (64, 128)
# `attnbench audit --OPTION values` keeps the launches whose label LABEL is one of the values
LABEL_FILTERS = (("kernels", "kernel"), ("head-dims", "D"), ("dtypes", "dtype"), ("causal", "causal"),
                 ("mods", "mods"))


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument as triton's specialisation sees it: its dtype and a 16-byte-aligned address (as every
    torch allocation on a GPU is)."""

    dtype: str

    def data_ptr(self) -> int:
        return 0


@dataclass(frozen=True)
class Job:
    """One compile, picklable for a worker: the kernel by module, file and name, its launch, the target."""

    module: str
    path: str
    name: str
    args: tuple
    constexprs: tuple       # sorted (name, value) pairs
    num_warps: int
    num_stages: int
    target: str


def make_job(target: str, launch) -> Job:
    """The Job of `launch` (a KernelLaunch) on `target`; tensors become TensorArg."""
    fn = getattr(launch.kernel, "fn", None)
    module = sys.modules.get(getattr(fn, "__module__", ""))
    if fn is None or module is None or getattr(module, fn.__name__, None) is not launch.kernel:
        raise TypeError(f"KernelLaunch.kernel must be a module-level @triton.jit function, got {launch.kernel!r}")
    args = tuple(TensorArg(str(a.dtype).removeprefix("torch.")) if hasattr(a, "data_ptr") else a for a in launch.args)
    return Job(module.__name__, str(getattr(module, "__file__", "")), fn.__name__, args,
               tuple(sorted(launch.constexprs.items())), launch.num_warps, launch.num_stages, target)


def module_digest(module_name: str) -> str:
    """Hash of the triton version and the source of every Triton function in `module_name`: what its compiles
    depend on (a kernel calling Triton functions of another module is not covered; edit its own module, or pass
    --no-cache)."""
    import triton

    module = sys.modules[module_name]
    digest = hashlib.sha256(triton.__version__.encode())
    for name, obj in sorted(vars(module).items()):
        if type(obj).__module__.startswith("triton.runtime") and callable(getattr(obj, "fn", None)):
            digest.update(name.encode() + inspect.getsource(obj.fn).encode())
    return digest.hexdigest()[:16]


def launch_key(job: Job) -> str:
    """The launch as declared (argument values, not their specialisation): what the cache looks up first."""
    text = json.dumps([Path(job.path).name or job.module, job.name, job.target, job.args, job.constexprs,
                       job.num_warps, job.num_stages], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=None)
def _specialised(kind: type, arg) -> list:
    """[type, key] of one argument as triton's JIT specialises it (its own per-argument function), once per
    distinct (type, value): launches repeat most arguments. The type is in the cache key, as 1, 1.0 and True are
    equal but specialise differently."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    return list(native_specialize_impl(BaseBackend, arg, False, True, True))


def job_key(job: Job) -> str:
    """What a compile depends on besides the source: the kernel, each argument as the JIT specialises it, the
    constexprs, warps, stages and target. Two launches that differ only in values the JIT does not specialise on
    (D 80 and 128: both multiples of 16) share a key and compile once."""
    spec = [_specialised(type(a), a) for a in job.args]
    # the module's file name, not the module's: a --plugin file is imported under a name that varies per process
    where = Path(job.path).name or job.module
    text = json.dumps([where, job.name, job.target, spec, job.constexprs, job.num_warps, job.num_stages], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


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


def load_kernel(job: Job):
    """The @triton.jit function `job` names, imported in this (worker) process: by module name, or from its file
    for a module that is not importable by name (a --plugin file)."""
    module = sys.modules.get(job.module)
    if module is None:
        try:
            module = importlib.import_module(job.module)
        except ModuleNotFoundError:
            spec = importlib.util.spec_from_file_location(job.module, job.path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[job.module] = module
            spec.loader.exec_module(module)
    return getattr(module, job.name)


def compile_job(job: Job) -> dict:
    """Compile one launch for its target and read back resources and tensor-core opcodes (runs in a worker)."""
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = load_kernel(job)
    target = TARGETS[job.target]
    gpu = GPUTarget("cuda", target.cc, 32)
    backend = make_backend(gpu)
    options = dict(num_warps=job.num_warps, num_stages=job.num_stages)
    kwargs = {**dict(job.constexprs), **options}
    # The JIT's own binder and packing (what JITFunction.run does before it compiles; triton 3.9 internals): the
    # signature, constexprs and divisibility attributes a launch with these arguments compiles.
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, parsed = binder(*job.args, **kwargs)
    _, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, parsed)
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=gpu, options=options)
    compile_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        listing = subprocess.run([_nvidia_bin("cuobjdump"), "--dump-resource-usage", "--dump-sass", str(cubin)],
                                 capture_output=True, text=True, check=True).stdout
    counts = sass_opcode_counts(listing)
    return dict(**parse_resource_usage(listing), shared_dynamic=int(compiled.metadata.shared),
                threads=job.num_warps * 32, tensor_core_ops=tensor_core_ops(counts, target),
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


def problems(record: dict) -> list[str]:
    """Why a launch must not be launched on its target; [] when it is fine. record: a finish_record."""
    target = TARGETS[record["target"]]
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
    if record["tensor_cores_required"] and not record["tensor_core_ops"]:
        found.append("no tensor-core instruction in the SASS")
    return found


def finish_record(target: str, launch, raw: dict) -> dict:
    """Target, labels + compiled resources + occupancy + launchability + the problems found."""
    shared = raw["shared_static"] + raw["shared_dynamic"]
    record = dict(target=target, labels=dict(launch.labels), **raw, shared_total=shared,
                  **occupancy(raw["regs"], shared, raw["threads"], TARGETS[target]),
                  tensor_cores_required=launch.tensor_cores, launchable=launch.launchable,
                  exclude_hint=launch.exclude_hint)
    record["problems"] = problems(record)
    return record


# ------------------------------------------------------------------------------------------- workers

class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT while the audit compiles: its workers are ended, what they compiled is kept."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _worker_start(parent: int) -> None:
    """In each compile worker, first: a process group of its own, so that the signal a terminal (Ctrl-C) or
    `timeout` sends the audit's group reaches the audit alone, which then ends each worker's group (the worker and
    the ptxas it runs); and death with the audit (PR_SET_PDEATHSIG), so that even a SIGKILLed audit leaves no
    worker holding its caller's pipes."""
    os.setpgrp()
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)            # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:                                # the audit ended before prctl took effect
        os._exit(1)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM to each worker's process group, then reap them. Python 3.11's executor has no public way to reach
    its workers (3.14 adds terminate_workers), hence its _processes."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):       # not yet in its own group: the process alone
            proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread meanwhile; one that comes is delivered when the block ends. A process started
    meanwhile inherits the mask for life: a compile worker still starting up, before it leaves the terminal's
    process group, would otherwise die of Ctrl-C inside its interpreter's start-up (a fatal error on stderr)."""
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextmanager
def compile_pool(jobs: int):
    """A pool of `jobs` spawned compile workers (without TRITON_INTERPRET: fresh interpreters import the kernels as
    real JIT functions, whatever this process holds) that SIGTERM or Ctrl-C ends with the audit: both raise
    Interrupted here, and leaving the block ends every worker."""
    import multiprocessing

    saved = os.environ.pop("TRITON_INTERPRET", None)
    # triton 3.9 warns on every compile that FP fusion defaults on; say so (it is the runtime's default too)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    main = threading.current_thread() is threading.main_thread()

    def interrupt(signum, _frame):
        raise Interrupted(signum)

    handlers = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    pool = ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_start, initargs=(os.getpid(),))
    try:
        yield pool
    finally:
        for s in handlers:                                    # a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        try:
            _end_workers(pool)
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
            if saved is not None:
                os.environ["TRITON_INTERPRET"] = saved


def _cache_path(name: str, jobs: list[Job]) -> Path:
    root = os.environ.get("ATTNBENCH_AUDIT_CACHE") or Path.home() / ".cache" / "attnbench" / "audit"
    digest = hashlib.sha256("".join(module_digest(m) for m in sorted({j.module for j in jobs})).encode())
    return Path(root) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{digest.hexdigest()[:16]}.json"


def run_audit(name: str, launches: list[tuple], *, jobs: int = 2, progress=None, use_cache: bool = True) -> list[dict]:
    """One record per (target, KernelLaunch) of backend `name` (resources, occupancy, problems), compiling what is
    not cached in `jobs` worker processes. Interrupted (SIGTERM, Ctrl-C) ends the workers and keeps what they
    compiled."""
    compiles = [make_job(target, launch) for target, launch in launches]
    cache_file = _cache_path(name, compiles)
    stored = json.loads(cache_file.read_text()) if use_cache and cache_file.exists() else {}
    # compiled: job_key -> record; launches: launch_key -> job_key, so a warm run never specialises an argument
    cache, seen = stored.get("compiled", {}), stored.get("launches", {})
    keys = []
    for job in compiles:
        plain = launch_key(job)
        seen[plain] = seen.get(plain) or job_key(job)
        keys.append(seen[plain])
    todo = list({key: job for key, job in zip(keys, compiles) if key not in cache}.items())

    def save() -> None:   # atomically, and every few results: an interrupted audit keeps what it compiled
        if use_cache:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dict(compiled=cache, launches=seen)))
            tmp.replace(cache_file)

    if todo:
        try:
            with compile_pool(jobs) as pool:
                with _sigint_blocked():      # spawns the workers: they start with Ctrl-C blocked (see there)
                    results = pool.map(compile_job, [job for _, job in todo], chunksize=1)
                for done, ((key, job), raw) in enumerate(zip(todo, results), 1):
                    cache[key] = raw
                    if done % 10 == 0:
                        save()
                    if progress:
                        progress(done, len(todo), job)
        finally:
            save()
    return [finish_record(target, launch, cache[key]) for (target, launch), key in zip(launches, keys)]


# ------------------------------------------------------------------------------------------- roofline

def predicted_bound(gpu: str, *, n: int, d: int, dtype: str, causal: str | None, pass_: str, b: int = 1,
                    h: int = 16) -> dict:
    """Best possible time and TFLOP/s of one attention call on `gpu` from published peaks (B, H, N = M, D = Dv).

    time >= max(FLOPs / peak FLOP/s, exponentials / peak exp2/s, minimum bytes / HBM bandwidth), each unit
    working flat out and perfectly overlapped. FLOPs and minimum bytes are the harness's own (perf.records),
    causal counting only attended pairs; one exponential per attended pair for the forward and one more for
    the backward (an O(N)-memory kernel recomputes P). Config-independent: no launch config can beat it.
    """
    from attnbench.problem import Problem
    from attnbench.reference import attention_flops

    from .records import flops, min_bytes

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

RESOURCE_COLUMNS = ("regs", "smem KiB", "local", "stack", "threads", "blocks/SM", "occupancy", "limited by",
                    "tensor cores", "ok")


def label_names(records: list[dict]) -> list[str]:
    """Every label name of `records`, in the order the backend declared them."""
    return list(dict.fromkeys(name for r in records for name in r["labels"]))


def table_rows(records: list[dict], labels: list[str]) -> list[list[str]]:
    rows = []
    for r in records:
        tc = ",".join(f"{op}x{n}" for op, n in r["tensor_core_ops"].items()) or (
            "NONE" if r["tensor_cores_required"] else f"- (FFMA x{r['ffma']})")
        rows.append([r["target"], *(r["labels"].get(name, "") for name in labels), str(r["regs"]),
                     f"{r['shared_total'] / 1024:.1f}", str(r["local"]), str(r["stack"]), str(r["threads"]),
                     str(r["blocks_per_sm"]), f"{r['occupancy']:.0%}", r["limited_by"], tc,
                     ("FAIL: " + "; ".join(r["problems"])) if r["problems"] and r["launchable"] else
                     ("excluded" if not r["launchable"] else "ok")])
    return rows


def audit_table(records: list[dict]) -> str:
    labels = label_names(records)
    from .report import text_table

    return text_table([["target", *labels, *RESOURCE_COLUMNS], *table_rows(records, labels)])


def roofline_table(rows: list[dict]) -> str:
    head = ("gpu", "target", "pass", "causal", "D", "N", "bound TFLOP/s", "limited by", "best ms")
    body = [[r["gpu"], r["target"], r["pass_"], r["causal"] or "none", str(r["D"]), str(r["N"]),
             f"{r['tflops']:.0f}", r["bound"], f"{r['seconds'] * 1e3:.3f}"] for r in rows]
    from .report import text_table

    return text_table([list(head), *body])


def failures(records: list[dict]) -> list[dict]:
    """Launchable launches with a problem: what makes the audit (and CI) fail."""
    return [r for r in records if r["launchable"] and r["problems"]]


def describe(record: dict) -> str:
    return " ".join([record["target"], *(f"{k}={v}" for k, v in record["labels"].items())])


def exclusion_lines(records: list[dict]) -> list[str]:
    """For each failing launch the backend gave a hint for: `hint = 'problems'` (triton_blockwise: the EXCLUDED or
    EXCLUDED_WITH_MODS entry that stops launching it there)."""
    return sorted({f"  {r['exclude_hint']} = {'; '.join(r['problems'])!r}" for r in failures(records)
                   if r["exclude_hint"]})


def audit_json(name: str, records: list[dict], roofline: list[dict], *, scope: str, seconds: float) -> dict:
    """The audit's JSON document (what perf/report.py may render as a section)."""
    import triton

    return dict(kind="attnbench-audit", backend=name, triton=triton.__version__, scope=scope,
                seconds=round(seconds, 1), targets={k: asdict(v) for k, v in TARGETS.items()},
                peaks={k: asdict(v) for k, v in PEAKS.items()}, records=records, roofline=roofline,
                failures=len(failures(records)))


def markdown_section(doc: dict, *, head_dims=("64", "128"), dtype: str = "float16") -> str:
    """A report section from the audit JSON: the table (some head dims and one dtype, where the backend labels
    them), the roofline, the failures."""
    records = [r for r in doc["records"] if r["labels"].get("D", head_dims[0]) in head_dims
               and r["labels"].get("dtype", dtype) == dtype]
    labels = label_names(records)
    head = ["target", *labels, *RESOURCE_COLUMNS]
    md = [f"## GPU kernel audit: {doc['backend']} (triton {doc['triton']}, {doc['scope']}, {doc['seconds']} s)\n",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table_rows(records, labels)]
    md += ["", f"Launchable launches failing the audit: {doc['failures']}.", "",
           "### Predicted roofline (float16, B 1, H 16, N = M)", "", "```", roofline_table(doc["roofline"]), "```"]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------------------- command line

def add_audit_arguments(p) -> None:
    p.add_argument("backend", nargs="?", default="triton_blockwise",
                   help="a backend that declares its Triton kernels (Backend.audit_launches): a name from "
                        "`attnbench backends`, from an entry point or from --plugin")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import this backend file first (repeatable), as `attnbench check --plugin` does")
    p.add_argument("--ci", action="store_true", help="the backend's representative subset for CI (triton_blockwise: "
                   "causal float16 at D 64 and 256 (its paged+append forward too) and float32 at D 256, and the "
                   "KV variants at float16 D 64 with every modification on; every launchable config, every "
                   "target)")
    p.add_argument("--targets", help="default: " + ",".join(TARGETS))
    for option, label in LABEL_FILTERS:
        p.add_argument(f"--{option}", help=f"only launches whose {label!r} label is one of these (comma-separated); "
                                           "default: all")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (all cores)")
    p.add_argument("--json", metavar="PATH", help="write the audit JSON here")
    p.add_argument("--md", metavar="PATH", help="write a markdown report section here (D 64, 128, float16)")
    p.add_argument("--no-cache", action="store_true", help="recompile everything (default: reuse cached results)")


def _choose(text: str, allowed, what: str) -> tuple:
    from attnbench.reference import AttentionInputError

    values = tuple(x.strip() for x in text.split(",") if x.strip())
    if not values or any(v not in allowed for v in values):
        raise AttentionInputError(f"--{what}: expected some of {', '.join(map(str, allowed))}, got {text!r}")
    return values


def _natural(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def selected_launches(args) -> tuple[list[tuple], str]:
    """[(target, KernelLaunch)] and a scope label from the parsed arguments (a user mistake, or a backend without
    Triton kernels, raises AttentionInputError: one line)."""
    from attnbench.implementations import Backend, get_backend
    from attnbench.implementations.registry import load_plugins
    from attnbench.reference import AttentionInputError

    load_plugins(args.plugin)
    backend = get_backend(args.backend)
    targets = _choose(args.targets, tuple(TARGETS), "targets") if args.targets else tuple(TARGETS)
    if args.jobs < 1:
        raise AttentionInputError("--jobs: expected an integer >= 1")
    no_kernels = AttentionInputError(f"audit: {args.backend!r} has no Triton kernels to audit (it does not declare "
                                     "Backend.audit_launches; see implementations/base.py)")
    if type(backend).audit_launches is Backend.audit_launches:
        raise no_kernels
    reason = backend.unavailable_reason()
    if reason:
        raise AttentionInputError(f"audit: {args.backend}: {reason}")
    declared = {target: backend.audit_launches(target, ci=args.ci) for target in targets}
    if any(launches is None for launches in declared.values()):
        raise no_kernels
    pairs = [(target, launch) for target in targets for launch in declared[target]]
    filtered = False
    for option, label in LABEL_FILTERS:
        text = getattr(args, option.replace("-", "_"))
        if text is None:
            continue
        have = sorted({dict(launch.labels)[label] for _, launch in pairs if label in dict(launch.labels)},
                      key=_natural)
        if not have:
            raise AttentionInputError(f"--{option}: {args.backend}'s launches have no {label!r} label")
        wanted = _choose(text, have, option)
        pairs = [(t, launch) for t, launch in pairs if dict(launch.labels).get(label) in wanted]
        filtered = True
    scope = "ci subset" if args.ci else ("selection" if filtered or len(targets) < len(TARGETS) else "full grid")
    return pairs, scope


def run_audit_command(args) -> int:
    """`attnbench audit`: table + roofline on stdout, progress on stderr; exit 1 if a launchable launch fails,
    128 + the signal's number when SIGTERM or Ctrl-C ends it."""
    launches, scope = selected_launches(args)
    start = time.perf_counter()

    def progress(done: int, total: int, job: Job) -> None:
        if done == 1 or done % 10 == 0 or done == total:
            elapsed = time.perf_counter() - start
            print(f"audit: compiled {done}/{total} ({elapsed:.0f} s, ~{elapsed / done * (total - done):.0f} s left)",
                  file=sys.stderr, flush=True)

    print(f"audit: {args.backend}: {len(launches)} launches ({scope}), {args.jobs} compiler processes",
          file=sys.stderr, flush=True)
    try:
        records = run_audit(args.backend, launches, jobs=args.jobs, progress=progress, use_cache=not args.no_cache)
    except Interrupted as exc:
        print(f"audit: ended by {signal.Signals(exc.signum).name}; its compiler processes are ended, what they "
              "compiled is cached", file=sys.stderr)
        return 128 + exc.signum
    seconds = time.perf_counter() - start
    roofline = roofline_rows()
    print(audit_table(records))
    print("\npredicted roofline bound (float16, B 1, H 16, N = M = 4k and 16k, D 64 and 128; published peaks):")
    print(roofline_table(roofline))
    doc = audit_json(args.backend, records, roofline, scope=scope, seconds=seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    if args.md:
        Path(args.md).write_text(markdown_section(doc))
    bad = failures(records)
    for r in bad:
        print(f"FAIL {describe(r)}: {'; '.join(r['problems'])}", file=sys.stderr)
    hints = exclusion_lines(records)
    if hints:
        print(f"audit: to stop launching them, fix the kernel or exclude them in {args.backend}:\n" + "\n".join(hints),
              file=sys.stderr)
    print(f"audit: {len(records)} launches, {len(bad)} launchable ones failing, {seconds:.0f} s ({scope})",
          file=sys.stderr)
    return 1 if bad else 0
