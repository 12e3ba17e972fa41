"""The blockwise memory scan and the GPU benchmark are sweeps on the shared worker, not private timers."""
import json

import pytest
import torch

from attnbench.perf import records, tools
from attnbench.perf.spec import GPU_BENCH, MEMORY_SCAN

from perf_helpers import synthetic


def test_blockwise_memory_is_a_sweep_with_a_report(tmp_path, capsys):
    assert tools.main(["memory-scan", "--seq-lens", "64,128", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    run_dir = next(tmp_path.glob("run-*"))
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert {(r["backend"], r["N"], r["status"]) for r in rows} == {
        (b, n, "ok") for b in MEMORY_SCAN.spec.backends for n in (64, 128)}
    assert all(r["schema"] == records.SCHEMA_VERSION and r["accurate"] for r in rows)
    assert (run_dir / "report.html").is_file() and (run_dir / "spec.json").is_file()
    table = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "N" not in line}
    assert set(table) == {"64", "128"}
    assert "log-log slope of memory vs N:" in out


def test_gpu_benchmark_table_reads_records():
    results = [synthetic("triton_blockwise", 1024, [1e-3], D=64, tflops=50.0, peak_bytes=2**20),
               synthetic("torch_sdpa_flash", 1024, [1.0], status="oom", message="CUDA out of memory")]
    text = tools.gpu_table(results, {"device_name": "H100", "peak_flops": {"bfloat16": 7e14}})
    assert "measured bf16 matmul peak: 700 TFLOP/s" in text
    measured = next(line for line in text.splitlines() if line.startswith("triton_blockwise"))
    assert measured.split()[5:9] == ["1.000", "50.0", "1.0", "67"]      # ms, TFLOP/s, MiB, H100 float32 bound
    assert "oom: CUDA out of memory" in text
    assert GPU_BENCH.spec.device == "cuda" and GPU_BENCH.spec.dtypes == ("bfloat16",)


def test_gpu_benchmark_without_cuda_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark runs instead of refusing")
    assert tools.main(["gpu-bench"]) == 1 and "needs a GPU" in capsys.readouterr().out
