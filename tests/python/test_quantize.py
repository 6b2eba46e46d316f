"""quantize / dequantize / fake_quantize layers against torch's own arithmetic (bit for bit), and
Q/DQ graphs through kiln.compile: torch's QAT fake-quant ops and the pt2e flow's
quantized_decomposed ops, against the eager model."""

import numpy as np
import pytest
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 (registers quantized_decomposed ops)
from layer_util import DEVICES, run_layer

import kiln

qd = torch.ops.quantized_decomposed


def values(shape, dtype=torch.float32):
    """Random values plus exact halves of the scale used below (rounding ties) and outliers that
    saturate."""
    x = torch.randn(shape) * 3
    flat = x.flatten()
    ties = torch.tensor([0.05, -0.05, 0.15, -0.25, 12.8, -12.9, 100.0, -100.0])
    flat[: min(len(ties), flat.numel())] = ties[: flat.numel()]
    return flat.reshape(shape).to(dtype)


def per_tensor(op, scale=0.1, zp=3, lo=-128, hi=127, **extra):
    def add(net, x):
        s = net.add_constant(torch.tensor(scale, dtype=torch.float32), "scale")
        z = net.add_constant(torch.tensor(zp, dtype=torch.int64), "zp")
        return net.add_layer(op, [x, s, z], {"quant_min": lo, "quant_max": hi, **extra})

    return add


def per_channel(op, scales, zps, axis, **extra):
    def add(net, x):
        s = net.add_constant(scales, "scales")
        z = net.add_constant(zps, "zps")
        return net.add_layer(op, [x, s, z], {"axis": axis, **extra})

    return add


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fake_quantize_per_tensor_matches_torch(device, dtype):
    x = values((4, 33), dtype)
    got = run_layer(per_tensor("fake_quantize", 0.1, 3), [x], device)
    want = torch.fake_quantize_per_tensor_affine(x.float(), 0.1, 3, -128, 127).to(dtype)
    assert torch.equal(got, want)
    got = run_layer(per_tensor("fake_quantize", 0.05, 128, 0, 255), [x], device)  # a uint8 scheme
    want = torch.fake_quantize_per_tensor_affine(x.float(), 0.05, 128, 0, 255).to(dtype)
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quantize_per_channel_matches_torch(device):
    x = values((2, 5, 3, 4))
    scales = torch.rand(5) * 0.2 + 0.01
    zps = torch.randint(-10, 10, (5,), dtype=torch.int32)
    got = run_layer(per_channel("fake_quantize", scales, zps, 1), [x], device, dynamic=True)
    want = torch.fake_quantize_per_channel_affine(x, scales, zps, 1, -128, 127)
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_and_dequantize_match_the_decomposed_ops(device):
    x = values((3, 40))
    scale, zp = 0.0731, -4
    inv = float(torch.tensor(1.0 / scale, dtype=torch.float32))
    q = run_layer(per_tensor("quantize", scale, zp, inv_scale=inv), [x], device)
    want_q = qd.quantize_per_tensor(x, scale, zp, -128, 127, torch.int8)
    assert q.dtype == torch.int8 and torch.equal(q, want_q)
    y = run_layer(per_tensor("dequantize", scale, zp), [want_q], device)
    assert torch.equal(y, qd.dequantize_per_tensor(want_q, scale, zp, -128, 127, torch.int8))
    # per channel along the last axis, float16 output
    scales = torch.rand(40) * 0.1 + 0.01
    zps = torch.randint(-5, 5, (40,))
    qc = run_layer(per_channel("quantize", scales, zps, -1), [x], device)
    want_qc = qd.quantize_per_channel(x, scales, zps, 1, -128, 127, torch.int8)
    assert torch.equal(qc, want_qc)
    yc = run_layer(per_channel("dequantize", scales, zps, 1, dtype="float16"), [want_qc], device)
    want_yc = qd.dequantize_per_channel(want_qc, scales, zps, 1, -128, 127, torch.int8).half()
    assert torch.equal(yc, want_yc)


NARROW_FORMATS = {  # fake_quantize's narrow floats -> ml_dtypes' type of the same values
    "e5m2": "float8_e5m2",
    "e4m3fnuz": "float8_e4m3fnuz",
    "e5m2fnuz": "float8_e5m2fnuz",
    "e2m1": "float4_e2m1fn",
}


def narrow_values():
    """Every binade of the formats: tiny (subnormal) to overflowing, ties, zeros, inf, NaN."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, generator=g) * 10.0**k for k in range(-6, 6)])
    specials = [0.0, -0.0, 464.0, 465.0, 61439.0, 61441.0, 247.0, 249.0, 5.0, 7.0, 0.25, 0.75]
    specials += [
        -0.25,
        1e-7,
        -1e-7,
        float("inf"),
        float("-inf"),
        float("nan"),
        -5.0,
        3.0,
        0.5,
        -0.5,
        100.0,
        -1e30,
    ]
    return torch.cat([x, torch.tensor(specials)]).reshape(-1, 8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("fmt", sorted(NARROW_FORMATS))
def test_fake_quantize_rounds_to_narrow_floats_as_ml_dtypes(device, fmt, saturate):
    """x / scale rounded to the format (nearest even, subnormals, overflow saturating or to inf /
    NaN) times scale, per channel: what ml_dtypes' conversion (ONNX's definition) gives."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import onnx.numpy_helper

    x = narrow_values()
    scales = torch.tensor([1.0, 0.5, 2.0, 0.125, 1.0, 3.0, 1.0, 0.75])

    def add(net, t):
        s = net.add_constant(scales, "scales")
        return net.add_layer(
            "fake_quantize", [t, s], {"axis": 1, "format": fmt, "saturate": saturate}
        )

    got = run_layer(add, [x], device)
    target = getattr(ml_dtypes, NARROW_FORMATS[fmt])
    scaled = (x * (1.0 / scales)).numpy()
    if saturate and fmt != "e2m1":
        rounded = onnx.numpy_helper.saturate_cast(scaled, target)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            rounded = scaled.astype(target)
    want = torch.from_numpy(rounded.astype(np.float32)) * scales
    assert torch.equal(got.isnan(), want.isnan())
    finite = ~want.isnan()
    assert torch.equal(got[finite], want[finite])
    assert torch.equal(got[finite].signbit(), want[finite].signbit())


def test_bad_input_is_refused():
    net = kiln.Network()
    x = net.add_input("x", "float32", (4, 3))
    s = net.add_constant(torch.tensor(0.1), "s")
    s3 = net.add_constant(torch.ones(3), "s3")
    with pytest.raises(kiln.KilnError, match="exceed int8's range"):
        net.add_layer("quantize", [x, s], {"quant_min": 0, "quant_max": 255})
    with pytest.raises(kiln.KilnError, match="3 per-channel scales for axis 0 of size 4"):
        net.add_layer("fake_quantize", [x, s3], {"axis": 0})
    with pytest.raises(kiln.KilnError, match="x must be int8"):
        net.add_layer("dequantize", [x, s], {})
    with pytest.raises(kiln.KilnError, match="scale must be float32"):
        net.add_layer("quantize", [x, net.add_constant(torch.tensor(1), "si")], {})
    with pytest.raises(kiln.KilnError, match="quant_min 5 is above quant_max 2"):
        net.add_layer("fake_quantize", [x, s], {"quant_min": 5, "quant_max": 2})
    with pytest.raises(kiln.KilnError, match="format e5m2 has no engine dtype"):
        net.add_layer("quantize", [x, s], {"format": "e5m2"})
    with pytest.raises(kiln.KilnError, match="format must be"):
        net.add_layer("fake_quantize", [x, s], {"format": "e3m4"})


def _qat_conv(x, conv, scale, zero_point):
    """conv(x) with the weight fake-quantized per output channel (padding 1), as QAT trains it."""
    w = torch.fake_quantize_per_channel_affine(conv.weight, scale, zero_point, 0, -128, 127)
    return torch.nn.functional.conv2d(x, w, conv.bias, padding=1)


class QatNet(torch.nn.Module):
    """A QAT-style model: fake-quantized input, per-channel fake-quantized weights, fake-quantized
    activations."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("w_scale", self.conv.weight.detach().abs().amax((1, 2, 3)) / 127)
        self.register_buffer("w_zp", torch.zeros(8, dtype=torch.int32))

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, 0.02, 0, -128, 127)
        y = _qat_conv(x, self.conv, self.w_scale, self.w_zp).relu()
        return torch.fake_quantize_per_tensor_affine(y, 0.05, -128, -128, 127)


class Pt2eNet(torch.nn.Module):
    """The pt2e pattern: Q -> DQ around a linear layer, weights quantized per channel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        w = torch.randn(6, 10) * 0.3
        self.register_buffer("w_scales", w.abs().amax(1) / 127)
        self.register_buffer("w_zps", torch.zeros(6, dtype=torch.int64))
        self.register_buffer(
            "w_q", qd.quantize_per_channel(w, self.w_scales, self.w_zps, 0, -127, 127, torch.int8)
        )
        self.bias = torch.nn.Parameter(torch.randn(6))

    def forward(self, x):
        xq = qd.quantize_per_tensor(x, 0.03, 2, -128, 127, torch.int8)
        xd = qd.dequantize_per_tensor(xq, 0.03, 2, -128, 127, torch.int8)
        w = qd.dequantize_per_channel(self.w_q, self.w_scales, self.w_zps, 0, -127, 127, torch.int8)
        y = torch.nn.functional.linear(xd, w, self.bias)
        yq = qd.quantize_per_tensor(y, 0.04, 0, -128, 127, torch.int8)
        return qd.dequantize_per_tensor(yq, 0.04, 0, -128, 127, torch.int8)


class StemPoolNet(torch.nn.Module):
    """ResNet's stem in QAT style: conv + relu, a 3x3 stride-2 max pool, the pooled value fake-
    quantized for the next convolution. Kiln moves the quantization before the pool (max commutes
    with it): the stem writes int8 and the pool runs on int8."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 8, 3, padding=1)
        for name, conv in (("s1", self.conv1), ("s2", self.conv2)):
            scale = conv.weight.detach().abs().amax((1, 2, 3)) / 127
            self.register_buffer(name, scale)
        self.register_buffer("zp1", torch.zeros(16, dtype=torch.int32))
        self.register_buffer("zp2", torch.zeros(8, dtype=torch.int32))

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, 0.02, 0, -128, 127)
        y = _qat_conv(x, self.conv1, self.s1, self.zp1).relu()
        y = torch.nn.functional.max_pool2d(y, 3, 2, 1)
        y = torch.fake_quantize_per_tensor_affine(y, 0.03, 0, -128, 127)
        y = _qat_conv(y, self.conv2, self.s2, self.zp2)
        return torch.fake_quantize_per_tensor_affine(y, 0.05, 0, -128, 127)


@pytest.mark.parametrize("device", DEVICES)
def test_a_quantized_max_pool_runs_on_int8_and_agrees_with_eager(device):
    torch.manual_seed(2)
    m = StemPoolNet().eval().to(device)
    x = torch.randn(2, 3, 12, 12, device=device)
    compiled = kiln.compile(
        m,
        [x],
        device=device,
        enabled_precisions={torch.int8, torch.float32},
        require_full_compilation=True,
    )
    layers = kiln.inspect(kiln.plans(compiled)[0]).layers
    pools = [la for la in layers if la.op == "pooling"]
    assert [la.dtypes for la in pools] == ["int8->int8"], [(la.op, la.dtypes) for la in layers]
    stem = next(la for la in layers if la.op == "convolution")
    assert stem.dtypes.endswith("->int8"), stem.dtypes  # the stem writes the pool's int8 input
    for _ in range(2):
        x = torch.randn(2, 3, 12, 12, device=device)
        got, want = compiled(x), m(x)
        assert (got - want).abs().max() <= 0.05 * 1.001
        assert (got == want).float().mean() > 0.99


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", [QatNet, Pt2eNet], ids=["qat", "pt2e"])
def test_qdq_models_compile_whole_and_agree_with_eager(device, model):
    torch.manual_seed(1)
    m = model().eval().to(device)
    shape = (2, 3, 8, 8) if model is QatNet else (4, 10)
    x = torch.randn(shape, device=device)
    compiled = kiln.compile(m, [x], device=device, require_full_compilation=True)
    assert compiled.report.num_engines == 1
    for _ in range(2):
        x = torch.randn(shape, device=device)
        got, want = compiled(x), m(x)
        # Outputs are multiples of the last scale: equal, or one step apart where the float
        # convolution/GEMM before the last quantize lands within rounding of a tie.
        step = 0.05 if model is QatNet else 0.04
        assert (got - want).abs().max() <= step * 1.001
        assert (got == want).float().mean() > 0.99
