"""The roofline: how far each layer (or a whole inference) is from what the device can do.

    peaks = kiln.roofline.measure_peaks("cuda")   # a large FP16 and FP32 GEMM, a big copy
    info = kiln.inspect(plan).profile()           # per-layer times, FLOPs and bytes
    print(info.text(peaks=peaks))                 # achieved TFLOP/s, GB/s, time lost per layer

A layer's cost is a model (ir/op_schema.h, layer_cost): its floating-point operations (a
multiply-add counts 2; GEMMs, convolutions and attention by their shapes, other ops one per output
element) and the bytes of its inputs and outputs, weights included, each counted once. Its
roofline time is the larger of flops / peak FLOP/s (the peak of its dtype: float16/bfloat16 and
8-bit layers against the FP16 GEMM; float32 against the faster of the strict FP32 GEMM and a third
of the TF32 GEMM, the float32-accurate product in three TF32 passes that Kiln's float32 GEMM
tactics and FP32 attention compute) and bytes / peak bandwidth; the time lost is the measured
time minus that. Sorting by it puts the next thing to optimize first.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

_HALF_DTYPES = {"float16", "bfloat16", "int8", "float8_e4m3fn", "float8_e5m2"}


@dataclass
class Peaks:
    """Measured peaks of one device: dense GEMM throughput in TFLOP/s (FP16 with FP32
    accumulation, strict FP32, and TF32: float32 operands on tensor cores; 0 where not measured)
    and device memory bandwidth in GB/s (a copy's bytes read plus written over its time)."""

    device: str
    fp16_tflops: float
    fp32_tflops: float
    gbps: float
    tf32_tflops: float = 0.0

    @property
    def float32_tflops(self) -> float:
        """The peak of a float32-accurate product: strict FP32, or three TF32 passes on split
        operands (3xTF32), whichever is faster."""
        return max(self.fp32_tflops, self.tf32_tflops / 3.0)

    def tflops_for(self, dtypes) -> float:
        """The GEMM peak that applies to a layer with these input dtypes."""
        return self.fp16_tflops if any(d in _HALF_DTYPES for d in dtypes) else self.float32_tflops

    def __str__(self) -> str:
        tf32 = (
            f", TF32 GEMM {self.tf32_tflops:.1f} TFLOP/s (float32's roofline: "
            f"{self.float32_tflops:.1f}, the faster of FP32 and TF32 / 3)"
            if self.tf32_tflops
            else ""
        )
        return (
            f"{self.device}: FP16 GEMM {self.fp16_tflops:.1f} TFLOP/s, FP32 GEMM "
            f"{self.fp32_tflops:.1f} TFLOP/s{tf32}, copy {self.gbps:.0f} GB/s"
        )


def _median_seconds(fn, device: str, runs: int) -> float:
    import torch

    fn()  # warm-up (cuBLAS heuristics, allocation)
    times = []
    for _ in range(runs):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_peaks(device: str = "cuda", runs: int = 10) -> Peaks:
    """Measures this device's peaks with torch: an n x n x n GEMM in float16, in strict float32
    (TF32 off) and, on "cuda", in TF32, and a device-to-device copy. On "cuda" n = 8192 and the
    copy moves 1 GiB (about a second in all); on "cpu" (the reference backend's host) n = 512,
    bfloat16 in float16's place, no TF32, and 64 MiB."""
    import torch

    dev = torch.device(device)
    n, copy_bytes = (8192, 1 << 30) if dev.type == "cuda" else (512, 64 << 20)
    half = torch.float16 if dev.type == "cuda" else torch.bfloat16

    def gemm_tflops(dtype) -> float:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        return 2.0 * n**3 / _median_seconds(lambda: a @ b, dev.type, runs) / 1e12

    fp16 = gemm_tflops(half)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        fp32 = gemm_tflops(torch.float32)
        tf32_peak = 0.0
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            tf32_peak = gemm_tflops(torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    gbps = 2.0 * copy_bytes / _median_seconds(lambda: dst.copy_(src), dev.type, runs) / 1e9
    return Peaks(dev.type, fp16, fp32, gbps, tf32_peak)


def attainable_ms(flops: float, nbytes: float, dtypes, peaks: Peaks) -> float:
    """The roofline time of a layer (or a sum of layers of one kind) in milliseconds."""
    compute = flops / (peaks.tflops_for(dtypes) * 1e12)
    memory = nbytes / (peaks.gbps * 1e9)
    return max(compute, memory) * 1e3


def rates(flops: float, nbytes: float, ms: float) -> tuple[float, float]:
    """Achieved (TFLOP/s, GB/s) of `flops` and `nbytes` in `ms` milliseconds."""
    if ms <= 0:
        return 0.0, 0.0
    return flops / (ms * 1e9), nbytes / (ms * 1e6)
