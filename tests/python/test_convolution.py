"""convolution / deconvolution layers: reference backend vs eager torch (CPU), CUDA (cuDNN) vs
eager torch on the GPU, and the errors the schema raises."""

import math

import pytest
import torch
import torch.nn.functional as F
from layer_util import TOLERANCE, run_layer

import kiln

# (name, x shape, weight shape, stride, padding, dilation, groups, bias)
CONV_CASES = [
    ("1d_stride_pad", (3, 4, 11), (6, 4, 3), 2, 1, 1, 1, True),
    ("1d_dilated_groups", (1, 4, 10), (4, 2, 3), 1, 2, 2, 2, False),
    ("2d_rect_kernel", (3, 3, 9, 7), (5, 3, 3, 2), (2, 1), (1, 0), 1, 1, True),
    ("2d_depthwise", (1, 6, 8, 8), (6, 1, 3, 3), 1, 1, 1, 6, True),
    ("2d_depth_multiplier", (2, 3, 7, 5), (6, 1, 3, 3), 1, 1, 1, 3, False),
    ("2d_dilated_groups", (2, 4, 7, 9), (8, 2, 3, 3), 2, 2, 2, 2, False),
    ("2d_pointwise", (3, 5, 5, 3), (7, 5, 1, 1), 1, 0, 1, 1, True),
    ("2d_kernel_is_input", (3, 2, 5, 5), (3, 2, 5, 5), 1, 0, 1, 1, True),
    ("3d_mixed", (1, 2, 5, 6, 4), (3, 2, 2, 3, 2), (1, 2, 1), (1, 1, 0), (1, 1, 2), 1, True),
    ("3d_groups", (2, 4, 4, 5, 5), (4, 2, 3, 3, 3), 2, 1, 1, 2, False),
]

# (name, x shape, weight shape [C, K/groups, kernel...], stride, padding, output_padding,
#  dilation, groups, bias)
DECONV_CASES = [
    ("2d_stride_outpad", (2, 4, 5, 6), (4, 3, 3, 3), 2, 1, 1, 1, 1, True),
    ("2d_groups", (1, 4, 4, 4), (4, 3, 3, 3), 3, 0, 2, 1, 2, False),
    ("2d_dilated", (3, 3, 5, 4), (3, 2, 3, 2), 1, 1, 0, 2, 1, True),
    ("2d_rect_stride", (1, 2, 3, 5), (2, 4, 2, 3), (2, 3), (0, 1), (1, 2), 1, 1, True),
    ("1d", (3, 3, 7), (3, 2, 4), 2, 1, 1, 1, 1, True),
    ("3d", (1, 2, 3, 4, 3), (2, 3, 2, 2, 2), 2, 0, (1, 0, 1), 1, 1, False),
]

TORCH_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}
TORCH_DECONV = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}


def conv_inputs(xs, ws, bias, dtype=torch.float32):
    # Weights scaled like torch's default init so outputs stay O(1) whatever the reduction length.
    x = torch.randn(xs)
    w = torch.randn(ws) / math.sqrt(math.prod(ws[1:]))
    inputs = [x, w] + ([torch.randn(ws[0] if len(ws) else 1)] if bias else [])
    return [t.to(dtype) for t in inputs]


def deconv_inputs(xs, ws, groups, bias, dtype=torch.float32):
    x = torch.randn(xs)
    w = torch.randn(ws) / math.sqrt(ws[0] // groups * math.prod(ws[2:]))
    inputs = [x, w] + ([torch.randn(ws[1] * groups)] if bias else [])
    return [t.to(dtype) for t in inputs]


def add_conv(stride, padding, dilation, groups):
    def add(net, x, w, b=None):
        return net.add_convolution(x, w, b, stride, padding, dilation, groups)

    return add


def add_deconv(stride, padding, output_padding, dilation, groups):
    def add(net, x, w, b=None):
        return net.add_deconvolution(x, w, b, stride, padding, output_padding, dilation, groups)

    return add


def torch_conv(inputs, stride, padding, dilation, groups):
    x, w, *b = inputs
    return TORCH_CONV[x.dim()](x, w, b[0] if b else None, stride, padding, dilation, groups)


def torch_deconv(inputs, stride, padding, output_padding, dilation, groups):
    x, w, *b = inputs
    fn = TORCH_DECONV[x.dim()]
    return fn(x, w, b[0] if b else None, stride, padding, output_padding, groups, dilation)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_convolution_reference_matches_torch(case, dynamic):
    _, xs, ws, stride, padding, dilation, groups, bias = case
    inputs = conv_inputs(xs, ws, bias)
    got = run_layer(
        add_conv(stride, padding, dilation, groups), inputs, "reference", dynamic=dynamic
    )
    # torch in float64 is the exact answer; the reference accumulates in double and rounds once.
    want = torch_conv([t.double() for t in inputs], stride, padding, dilation, groups).float()
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", DECONV_CASES, ids=[c[0] for c in DECONV_CASES])
def test_deconvolution_reference_matches_torch(case, dynamic):
    _, xs, ws, stride, padding, out_pad, dilation, groups, bias = case
    inputs = deconv_inputs(xs, ws, groups, bias)
    add = add_deconv(stride, padding, out_pad, dilation, groups)
    got = run_layer(add, inputs, "reference", dynamic=dynamic)
    want = torch_deconv([t.double() for t in inputs], stride, padding, out_pad, dilation, groups)
    torch.testing.assert_close(got, want.float(), **TOLERANCE[torch.float32])


def test_convolution_dynamic_spatial_dims_reference():
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 3, -1, -1])
    w = torch.randn(4, 3, 3, 3)
    layer = net.add_convolution(x, w, stride=2, padding=1)
    assert layer.output.shape == (-1, 4, -1, -1)
    net.mark_output(layer, "y")
    config = kiln.BuilderConfig(target="reference")
    config.add_optimization_profile({"x": ([1, 3, 3, 3], [2, 3, 8, 8], [2, 3, 16, 16])})
    ctx = kiln.Engine(
        kiln.Builder().build(net, config), backend="reference"
    ).create_execution_context()
    for shape in [(2, 3, 9, 7), (1, 3, 16, 3)]:
        xv = torch.randn(shape)
        got = ctx.execute({"x": xv})["y"]
        torch.testing.assert_close(got, F.conv2d(xv, w, None, 2, 1), **TOLERANCE[torch.float32])


def test_convolution_empty_batch_reference():
    x, w = torch.randn(0, 3, 5, 5), torch.randn(4, 3, 3, 3)
    got = run_layer(add_conv(1, 1, 1, 1), [x, w], "reference")
    assert got.shape == (0, 4, 5, 5)


# ---- errors -------------------------------------------------------------------------------------


def conv_net(x_shape, w_shape, name="bad_conv", op="convolution", **attrs):
    net = kiln.Network()
    x = net.add_input("x", "float32", x_shape)
    w = net.add_input("w", "float32", w_shape)
    return net.add_layer(op, [x, w], attrs, name)


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs, message",
    [
        ((1, 4, 5, 5), (2, 3, 3, 3), {}, "C/groups"),
        ((1, 4, 5, 5), (3, 2, 3, 3), {"groups": 2}, "must divide the output channels"),
        ((1, 4, 5, 5), (6, 1, 3, 3), {"groups": 3}, "groups 3 must divide the input channels 4"),
        ((1, 1, 3, 3), (1, 1, 5, 5), {}, "larger than the padded input"),
        ((1, 1, 5, 5), (1, 1, 3, 3), {"dilations": [3, 3]}, "larger than the padded input"),
        ((1, 1, 5, 5), (1, 1, 3, 3), {"strides": [1]}, "'strides' needs 2 value"),
        ((1, 1, 5, 5), (1, 1, 3, 3), {"pads": [1, 1, 1, 1]}, "'pads' needs 2 value"),
        ((1, 1, 5, 5), (1, 1, 3, 3), {"strides": [0, 1]}, "strides must be >= 1"),
        ((1, -1, 5, 5), (1, 1, 3, 3), {}, "channel dim .* must be static"),
        ((1, 1, 5), (1, 1, 3, 3), {}, "rank 3"),
        ((1, 1, 5, 5, 5, 5), (1, 1, 3, 3, 3, 3), {}, "1 to 3 spatial dims"),
    ],
)
def test_convolution_errors_name_the_layer(x_shape, w_shape, attrs, message):
    with pytest.raises(kiln.KilnError, match=f"bad_conv.*{message}"):
        conv_net(x_shape, w_shape, **attrs)


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs, message",
    [
        ((1, 4, 5, 5), (3, 2, 3, 3), {}, "must be \\[C, K/groups"),
        ((1, 4, 5, 5), (4, 2, 3, 3), {"groups": 3}, "groups 3 must divide"),
        (
            (1, 4, 5, 5),
            (4, 2, 3, 3),
            {"strides": [2, 2], "output_padding": [2, 0]},
            "output_padding",
        ),
        ((1, 4, 2, 2), (4, 2, 3, 3), {"pads": [3, 3]}, "output size"),
    ],
)
def test_deconvolution_errors_name_the_layer(x_shape, w_shape, attrs, message):
    with pytest.raises(kiln.KilnError, match=f"bad_conv.*{message}"):
        conv_net(x_shape, w_shape, op="deconvolution", **attrs)


def test_convolution_profile_below_kernel_names_the_layer():
    # The spatial dim is dynamic when the layer is added; the builder checks the profile's range.
    net = kiln.Network()
    x = net.add_input("x", "float32", [1, 1, -1])
    net.mark_output(net.add_convolution(x, torch.randn(1, 1, 5), name="late_conv"), "y")
    config = kiln.BuilderConfig(target="reference")
    config.add_optimization_profile({"x": ([1, 1, 1], [1, 1, 8], [1, 1, 8])})
    with pytest.raises(kiln.KilnError, match="late_conv.*larger than the padded input"):
        kiln.Builder().build(net, config)


def test_bias_and_dtype_errors():
    net = kiln.Network()
    x = net.add_input("x", "float32", [1, 2, 5, 5])
    w = net.add_input("w", "float32", [3, 2, 3, 3])
    b = net.add_input("b", "float32", [4])
    with pytest.raises(kiln.KilnError, match="conv_b.*bias must be \\[3\\]"):
        net.add_layer("convolution", [x, w, b], {}, "conv_b")
    wh = net.add_input("wh", "float16", [3, 2, 3, 3])
    with pytest.raises(kiln.KilnError, match="conv_h.*weight dtype float16"):
        net.add_layer("convolution", [x, wh], {}, "conv_h")


# ---- CUDA ---------------------------------------------------------------------------------------


@pytest.fixture
def strict_fp32_torch():
    """torch's GPU convolutions without TF32, so float32 results are comparable to Kiln's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def gpu_tolerance(dtype, reduction):
    """Tolerance for a convolution whose outputs are O(1) (weights scaled by 1/sqrt(reduction)).

    float32: both sides accumulate `reduction` products in FP32 in different orders (and cuDNN
    may pick Winograd/FFT, whose transforms add error of order 1e-5 of the output scale).
    float16/bfloat16: inputs are the same rounded values and accumulation is FP32, so the error is
    the rounding of the output (and of the pre-bias result): about two ulp of the output dtype,
    plus the FP32 accumulation term, which grows with sqrt(reduction).
    """
    grow = math.sqrt(max(reduction, 1))
    if dtype == torch.float32:
        return {"rtol": 1e-4, "atol": 2e-5 * grow}
    if dtype == torch.float16:
        return {"rtol": 2e-3, "atol": 1e-3 + 1e-4 * grow}
    return {"rtol": 1.6e-2, "atol": 1e-2 + 1e-3 * grow}


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_convolution_cuda_matches_torch(case, dynamic, dtype, strict_fp32_torch):
    _, xs, ws, stride, padding, dilation, groups, bias = case
    inputs = conv_inputs(xs, ws, bias, dtype)
    got = run_layer(add_conv(stride, padding, dilation, groups), inputs, "cuda", dynamic=dynamic)
    assert got.dtype == dtype
    # fp16/bf16: torch in float32 on the same rounded inputs is the reference.
    want = torch_conv([t.float().cuda() for t in inputs], stride, padding, dilation, groups).cpu()
    tol = gpu_tolerance(dtype, math.prod(ws[1:]))
    torch.testing.assert_close(got.float(), want, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", DECONV_CASES, ids=[c[0] for c in DECONV_CASES])
def test_deconvolution_cuda_matches_torch(case, dynamic, dtype, strict_fp32_torch):
    _, xs, ws, stride, padding, out_pad, dilation, groups, bias = case
    inputs = deconv_inputs(xs, ws, groups, bias, dtype)
    add = add_deconv(stride, padding, out_pad, dilation, groups)
    got = run_layer(add, inputs, "cuda", dynamic=dynamic)
    assert got.dtype == dtype
    cuda_inputs = [t.float().cuda() for t in inputs]
    want = torch_deconv(cuda_inputs, stride, padding, out_pad, dilation, groups).cpu()
    tol = gpu_tolerance(dtype, ws[0] // groups * math.prod(ws[2:]))
    torch.testing.assert_close(got.float(), want, **tol)


@pytest.mark.gpu
def test_convolution_cuda_larger_reduction(strict_fp32_torch):
    # A reduction of 64*9 = 576 products with O(1) outputs. Strict FP32 differs from torch's
    # strict FP32 by ~1e-6 (worst ~1e-5); TF32 (10-bit mantissa) would differ by ~1e-3, so this
    # tolerance shows the default is strict FP32.
    x, w = torch.randn(2, 64, 17, 15), torch.randn(32, 64, 3, 3) / 24
    got = run_layer(add_conv(1, 1, 1, 1), [x, w], "cuda")
    want = F.conv2d(x.cuda(), w.cuda(), None, 1, 1).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-5)


@pytest.mark.gpu
def test_convolution_cuda_kernel_names():
    net = kiln.Network()
    x = net.add_input("x", "float32", [1, 2, 5, 5])
    c = net.add_convolution(x, torch.randn(2, 2, 3, 3))
    net.mark_output(net.add_deconvolution(c, torch.randn(2, 2, 3, 3)), "y")
    engine = kiln.Engine(
        kiln.Builder().build(net, kiln.BuilderConfig(target="cuda")), backend="cuda"
    )
    text = "\n".join(engine.describe_layers())
    assert "cudnn_convolution" in text and "cudnn_deconvolution" in text
