"""GPU targets the audit compiles for: per-SM limits (for occupancy) and published peaks (for the roofline).

Limits: NVIDIA CUDA C++ Programming Guide, "Technical Specifications per
Compute Capability" (compute capabilities 8.0, 9.0, 10.0), and the CUDA
Occupancy Calculator's allocation rules (registers allocated per warp in units
of 256; 1 KiB of shared memory reserved per block by the system from cc 8.0;
shared memory allocated in 128-byte units).

Peaks (dense, no 2:4 sparsity), from NVIDIA's product datasheets:
  A100 SXM4 80GB: "NVIDIA A100 Tensor Core GPU" datasheet (2021): FP16/BF16
      tensor 312 TFLOP/s, FP32 19.5 TFLOP/s, HBM2e 2,039 GB/s.
  H100 SXM5: "NVIDIA H100 Tensor Core GPU" datasheet (2023): FP16/BF16 tensor
      989 TFLOP/s (1,979 is with sparsity), FP32 67 TFLOP/s, HBM3 3.35 TB/s.
  H200 SXM: "NVIDIA H200 Tensor Core GPU" datasheet (2024): as H100 SXM5 for
      compute (same GH100 die), HBM3e 4.8 TB/s.
  B200 (HGX, 1000 W): "NVIDIA Blackwell" / HGX B200 datasheet (2024):
      FP16/BF16 tensor 2.25 PFLOP/s dense (4.5 with sparsity), FP32 80 TFLOP/s,
      HBM3e 8 TB/s.
FP32 here means CUDA-core FMA throughput: triton_blockwise runs float32 dots
in IEEE precision (no TF32), so float32 never reaches the tensor cores.

exp2 rate: the softmax needs one exponential per attended pair (the MUFU unit,
16 results per SM per clock on cc 8.0, 9.0 and 10.0, against 64 (8.0) or 128
(9.0, 10.0) FP32 FMA lanes: the Programming Guide's "Throughput of native
arithmetic instructions" table), so exp2/s = FP32 FLOP/s / (2 x lanes) x 16.
At D = 64 this is close to the matmul time on H100 and longer on B200 (the
point FlashAttention-3 and -4 make), so the roofline includes it.
"""
from __future__ import annotations

from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True)
class TargetLimits:
    """Per-SM and per-block limits of one compute capability (what occupancy and launchability depend on)."""

    name: str                    # "sm_90"
    cc: int                      # 90; triton's GPUTarget arch
    example_gpu: str
    registers_per_sm: int
    max_registers_per_thread: int
    register_alloc_unit: int     # registers, allocated per warp
    max_threads_per_block: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    shared_per_sm: int           # bytes, the largest carveout
    max_shared_per_block: int    # bytes, with the opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize)
    reserved_shared_per_block: int
    shared_alloc_unit: int
    tensor_core_ops: tuple[str, ...]   # SASS opcodes (prefix before the first '.') that run on the tensor cores
    preferred_tensor_core_op: str      # this generation's own matrix instruction
    fp32_lanes_per_sm: int
    mufu_ex2_per_sm: int = 16


TARGETS: dict[str, TargetLimits] = {t.name: t for t in (
    TargetLimits("sm_80", 80, "A100", 65536, 255, 256, 1024, 64, 32, 164 * KIB, 163 * KIB, KIB, 128,
                 ("HMMA",), "HMMA", 64),
    TargetLimits("sm_90", 90, "H100/H200", 65536, 255, 256, 1024, 64, 32, 228 * KIB, 227 * KIB, KIB, 128,
                 ("HMMA", "HGMMA"), "HGMMA", 128),
    # sm_100: tcgen05 MMAs appear in SASS as UTC*MMA (UTCHMMA for f16/bf16 inputs); they accumulate in tensor
    # memory (256 KiB per SM), which is not counted in shared memory.
    TargetLimits("sm_100", 100, "B200", 65536, 255, 256, 1024, 64, 32, 228 * KIB, 227 * KIB, KIB, 128,
                 ("HMMA", "UTCHMMA", "UTCQMMA", "UTCIMMA", "UTCOMMA"), "UTCHMMA", 128),
)}


@dataclass(frozen=True)
class GpuPeaks:
    """Published dense peaks of one product: tensor-core FLOP/s for half types, CUDA-core FP32, HBM bytes/s."""

    gpu: str
    target: str
    half_tensor_flops: float
    fp32_flops: float
    hbm_bytes_per_s: float

    @property
    def exp2_per_s(self) -> float:
        """Peak exponentials per second (MUFU), from the FP32 rate and the per-SM unit counts of the target."""
        t = TARGETS[self.target]
        return self.fp32_flops / (2 * t.fp32_lanes_per_sm) * t.mufu_ex2_per_sm

    def flops(self, dtype: str) -> float:
        """Peak FLOP/s for dots in `dtype` as triton_blockwise runs them (float32: IEEE, CUDA cores)."""
        return self.fp32_flops if dtype == "float32" else self.half_tensor_flops


PEAKS: dict[str, GpuPeaks] = {p.gpu: p for p in (
    GpuPeaks("A100-SXM4-80GB", "sm_80", 312e12, 19.5e12, 2039e9),
    GpuPeaks("H100-SXM5", "sm_90", 989e12, 67e12, 3.35e12),
    GpuPeaks("H200-SXM", "sm_90", 989e12, 67e12, 4.8e12),
    GpuPeaks("B200", "sm_100", 2250e12, 80e12, 8e12),
)}
ROOFLINE_GPUS = ("A100-SXM4-80GB", "H100-SXM5", "B200")   # one per audited target


def peaks_for_device_name(name: str) -> GpuPeaks | None:
    """The PEAKS entry for a torch.cuda.get_device_name() string ("NVIDIA H200", "NVIDIA A100-SXM4-80GB")."""
    upper = name.upper()
    for key in ("H200", "H100", "B200", "A100"):
        if key in upper:
            return next(p for p in PEAKS.values() if p.gpu.startswith(key))
    return None
