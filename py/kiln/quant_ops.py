"""torch ops that kiln.compile inserts into exported programs.

``torch.ops.kiln.fake_quantize_fp8(x, scale, inv_scale)``: FP8 (e4m3) fake quantization per
tensor, ``e4m3(x * inv_scale) * scale`` in float32 with the e4m3 value rounded to nearest even
and saturated to +-448, back in x's dtype. FP8 calibration (kiln/calibration.py) puts it before
each calibrated linear layer; its converter makes an engine ``fake_quantize`` layer with format
e4m3, which the builder turns into an FP8 GEMM on GPUs that have them. ``inv_scale`` is
float32(1 / scale), so the engine and this implementation multiply by the same number.

``torch.ops.kiln.fake_quantize_int8(x, scale, quant_min, quant_max)``: INT8 fake quantization per
tensor (zero point 0), torch's ``fake_quantize_per_tensor_affine`` in float32. INT8 calibration
puts it before each calibrated layer; its converter makes a ``fake_quantize`` layer marked
``calibrated``: the quantization is the builder's choice, so it may also quantize the tensor for
its other readers (a convolution's residual, quantize_int8_layers).
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


@torch.library.custom_op("kiln::fake_quantize_fp8", mutates_args=())
def fake_quantize_fp8(x: torch.Tensor, scale: float, inv_scale: float) -> torch.Tensor:
    q = (x.float() * inv_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (q.float() * scale).to(x.dtype)


@fake_quantize_fp8.register_fake
def _(x: torch.Tensor, scale: float, inv_scale: float) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("kiln::fake_quantize_int8", mutates_args=())
def fake_quantize_int8(
    x: torch.Tensor, scale: float, quant_min: int, quant_max: int
) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, 0, quant_min, quant_max).to(
        x.dtype
    )


@fake_quantize_int8.register_fake
def _(x: torch.Tensor, scale: float, quant_min: int, quant_max: int) -> torch.Tensor:
    return torch.empty_like(x)


def float32_reciprocal(scale: float) -> float:
    """1 / scale rounded to float32 (the multiplier the engine's kernels use)."""
    return float(torch.tensor(1.0 / scale, dtype=torch.float32))
