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
    got = run_layer(add_conv(stride, padding, dilation, groups), inputs, "cpu", dynamic=dynamic)
    # torch in float64 is the exact answer; the reference accumulates in double and rounds once.
    want = torch_conv([t.double() for t in inputs], stride, padding, dilation, groups).float()
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", DECONV_CASES, ids=[c[0] for c in DECONV_CASES])
def test_deconvolution_reference_matches_torch(case, dynamic):
    _, xs, ws, stride, padding, out_pad, dilation, groups, bias = case
    inputs = deconv_inputs(xs, ws, groups, bias)
    add = add_deconv(stride, padding, out_pad, dilation, groups)
    got = run_layer(add, inputs, "cpu", dynamic=dynamic)
    want = torch_deconv([t.double() for t in inputs], stride, padding, out_pad, dilation, groups)
    torch.testing.assert_close(got, want.float(), **TOLERANCE[torch.float32])


def test_convolution_dynamic_spatial_dims_reference():
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 3, -1, -1])
    w = torch.randn(4, 3, 3, 3)
    layer = net.add_convolution(x, w, stride=2, padding=1)
    assert layer.output.shape == (-1, 4, -1, -1)
    net.mark_output(layer, "y")
    config = kiln.BuilderConfig(device="cpu")
    config.add_optimization_profile({"x": ([1, 3, 3, 3], [2, 3, 8, 8], [2, 3, 16, 16])})
    ctx = kiln.Engine(kiln.Builder().build(net, config), device="cpu").create_execution_context()
    for shape in [(2, 3, 9, 7), (1, 3, 16, 3)]:
        xv = torch.randn(shape)
        got = ctx.execute({"x": xv})["y"]
        torch.testing.assert_close(got, F.conv2d(xv, w, None, 2, 1), **TOLERANCE[torch.float32])


def test_convolution_empty_batch_reference():
    x, w = torch.randn(0, 3, 5, 5), torch.randn(4, 3, 3, 3)
    got = run_layer(add_conv(1, 1, 1, 1), [x, w], "cpu")
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
    config = kiln.BuilderConfig(device="cpu")
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
        kiln.Builder().build(net, kiln.BuilderConfig(device="cuda")), device="cuda"
    )
    text = "\n".join(engine.describe())
    assert "cudnn_convolution" in text and "cudnn_deconvolution" in text


# ---- fused epilogue: y = act(conv(x) + bias + residual), and channels-last layout ---------------

# (type, alpha, beta, torch function of the float64 pre-activation)
ACTIVATIONS = {
    "none": (None, None, lambda v: v),
    "relu": (None, None, F.relu),
    "silu": (None, None, F.silu),
    "hardswish": (None, None, F.hardswish),
    "sigmoid": (None, None, torch.sigmoid),
    "leaky_relu": (0.2, None, lambda v: F.leaky_relu(v, 0.2)),
    "clip": (0.0, 6.0, lambda v: v.clamp(0.0, 6.0)),
    "gelu_tanh": (None, None, lambda v: F.gelu(v, approximate="tanh")),
}

# (name, x shape, weight shape, stride, padding, groups, bias, residual)
EPILOGUE_CASES = [
    ("2d_bias_residual", (2, 5, 7, 6), (6, 5, 3, 3), 1, 1, 1, True, True),
    ("2d_residual_no_bias", (1, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, False, True),
    ("2d_strided_bias", (3, 4, 9, 8), (7, 4, 3, 3), 2, 1, 1, True, False),
    ("2d_depthwise_residual", (2, 6, 5, 5), (6, 1, 3, 3), 1, 1, 6, True, True),
    ("1d_odd_channels", (2, 3, 11), (5, 3, 3), 1, 1, 1, True, True),
]


def epilogue_attrs(activation, residual, stride, padding, groups, rank, layout="nchw"):
    alpha, beta, _ = ACTIVATIONS[activation]
    attrs = {
        "strides": [stride] * (rank - 2),
        "pads": [padding] * (rank - 2),
        "groups": groups,
        "activation": activation,
        "residual": int(residual),
        "layout": layout,
    }
    if alpha is not None:
        attrs["activation_alpha"] = alpha
    if beta is not None:
        attrs["activation_beta"] = beta
    return attrs


def epilogue_inputs(xs, ws, bias, residual, stride, padding, groups, dtype=torch.float32):
    inputs = conv_inputs(xs, ws, bias, dtype)
    if residual:
        out = torch_conv([t.float() for t in inputs], stride, padding, 1, groups)
        inputs.append(torch.randn(out.shape).to(dtype))
    return inputs


def torch_epilogue(
    inputs, bias, residual, stride, padding, groups, activation, device="cpu", double=True
):
    cast = (lambda t: t.double()) if double else (lambda t: t.float())
    x, w = cast(inputs[0]).to(device), cast(inputs[1]).to(device)
    b = cast(inputs[2]).to(device) if bias else None
    v = torch_conv([x, w] + ([b] if b is not None else []), stride, padding, 1, groups)
    if residual:
        v = v + cast(inputs[-1]).to(device)
    return ACTIVATIONS[activation][2](v)


def to_last(t):
    """[N, C, spatial...] -> [N, spatial..., C] (contiguous)."""
    return t.movedim(1, -1).contiguous()


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=[c[0] for c in EPILOGUE_CASES])
def test_convolution_epilogue_reference_matches_torch(case, activation):
    _, xs, ws, stride, padding, groups, bias, residual = case
    inputs = epilogue_inputs(xs, ws, bias, residual, stride, padding, groups)
    attrs = epilogue_attrs(activation, residual, stride, padding, groups, len(xs))
    got = run_layer(lambda net, *t: net.add_layer("convolution", list(t), attrs), inputs, "cpu")
    want = torch_epilogue(inputs, bias, residual, stride, padding, groups, activation).float()
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=[c[0] for c in EPILOGUE_CASES])
def test_convolution_channels_last_reference_matches_torch(case, dynamic):
    # layout nhwc stores x, weight, residual and y channels last; the values are torch's.
    _, xs, ws, stride, padding, groups, bias, residual = case
    residual = residual and not dynamic  # run_layer makes only x's batch dynamic
    inputs = epilogue_inputs(xs, ws, bias, residual, stride, padding, groups)
    attrs = epilogue_attrs("relu", residual, stride, padding, groups, len(xs), layout="nhwc")
    stored = [to_last(inputs[0]), to_last(inputs[1])] + inputs[2:]
    if residual:
        stored[-1] = to_last(inputs[-1])
    add = lambda net, *t: net.add_layer("convolution", list(t), attrs)  # noqa: E731
    got = run_layer(add, stored, "cpu", dynamic=dynamic)
    want = torch_epilogue(inputs, bias, residual, stride, padding, groups, "relu").float()
    torch.testing.assert_close(got, to_last(want), **TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    "attrs, inputs, message",
    [
        ({"activation": "swish"}, 2, "unknown activation 'swish'"),
        ({"residual": 1}, 2, "residual = 1 needs the residual"),
        ({"residual": 2}, 3, "residual must be 0 or 1"),
        ({}, 4, "fourth input is only accepted as the residual"),
        ({"layout": "nchwc"}, 2, "layout must be nchw or nhwc"),
        ({"activation": "clip", "activation_alpha": 2.0, "activation_beta": 1.0}, 2, "clip needs"),
    ],
)
def test_convolution_epilogue_errors_name_the_layer(attrs, inputs, message):
    net = kiln.Network()
    x = net.add_input("x", "float32", [1, 2, 5, 5])
    w = net.add_input("w", "float32", [3, 2, 3, 3])
    b = net.add_input("b", "float32", [3])
    r = net.add_input("r", "float32", [1, 3, 5, 5])
    given = [x, w, b, r][:inputs] if inputs < 3 else [x, w, r] if inputs == 3 else [x, w, b, r]
    with pytest.raises(kiln.KilnError, match=f"fused_conv.*{message}"):
        net.add_layer("convolution", given, {"pads": [1, 1], **attrs}, "fused_conv")


def test_convolution_residual_shape_error_names_the_layer():
    net = kiln.Network()
    x = net.add_input("x", "float32", [1, 2, 5, 5])
    w = net.add_input("w", "float32", [3, 2, 3, 3])
    r = net.add_input("r", "float32", [1, 3, 5, 5])  # the output is [1, 3, 3, 3]
    with pytest.raises(kiln.KilnError, match="res_conv.*residual .* must have the output's shape"):
        net.add_layer("convolution", [x, w, r], {"residual": 1}, "res_conv")
    with pytest.raises(kiln.KilnError, match="dec.*only convolution and pooling take layout nhwc"):
        net.add_layer(
            "deconvolution",
            [x, net.add_input("wd", "float32", [2, 3, 3, 3])],
            {"layout": "nhwc"},
            "dec",
        )


# Layout nhwc exists for 2d convolutions only: the other cases run channels first.
EPILOGUE_LAYOUT_CASES = [
    (case, layout)
    for case in EPILOGUE_CASES
    for layout in ("nchw", "nhwc")
    if layout == "nchw" or len(case[1]) == 4
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["none", "relu", "silu", "hardswish", "clip"])
@pytest.mark.parametrize(
    "case,layout", EPILOGUE_LAYOUT_CASES, ids=[f"{c[0]}-{lay}" for c, lay in EPILOGUE_LAYOUT_CASES]
)
def test_convolution_epilogue_cuda_matches_torch(
    case, activation, layout, dtype, strict_fp32_torch
):
    # Covers cuDNN's fused call (relu / none with a bias) and the own epilogue kernel (the rest),
    # channels first and last.
    _, xs, ws, stride, padding, groups, bias, residual = case
    inputs = epilogue_inputs(xs, ws, bias, residual, stride, padding, groups, dtype)
    attrs = epilogue_attrs(activation, residual, stride, padding, groups, len(xs), layout=layout)
    stored = list(inputs)
    if layout == "nhwc":
        stored[0], stored[1] = to_last(inputs[0]), to_last(inputs[1])
        if residual:
            stored[-1] = to_last(inputs[-1])
    add = lambda net, *t: net.add_layer("convolution", list(t), attrs)  # noqa: E731
    # run_layer makes only x's batch dynamic, which a static residual would contradict.
    for dynamic in (False,) if residual else (False, True):
        got = run_layer(add, stored, "cuda", dynamic=dynamic)
        assert got.dtype == dtype
        want = torch_epilogue(
            inputs, bias, residual, stride, padding, groups, activation, "cuda", double=False
        ).cpu()
        if layout == "nhwc":
            want = to_last(want)
        # The residual adds one O(1) term: one more rounding of the output dtype at most.
        tol = gpu_tolerance(dtype, math.prod(ws[1:]))
        torch.testing.assert_close(got.float(), want, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("tactic", list(range(19)))
@pytest.mark.parametrize("bias", [False, True])
def test_convolution_cuda_tactics_run_or_refuse(tactic, bias, strict_fp32_torch):
    # Tactics 0-7 are cuDNN's algorithms, 8-10 Kiln's depthwise kernels, 11-14 cuDNN's graph API
    # (a bias fused), 15-18 its plain engines (only for a layer with a bias to fuse): each either
    # computes the convolution or refuses with an error naming the layer (unsupported algorithm,
    # workspace, not a depthwise layer, fewer engine configurations, no bias).
    x, w = torch.randn(2, 8, 12, 12).half(), (torch.randn(16, 8, 3, 3) / 8).half()
    b = torch.randn(16).half() if bias else None
    attrs = {"pads": [1, 1], "tactic": tactic}
    add = lambda net, *t: net.add_layer("convolution", list(t), attrs, "tac_conv")  # noqa: E731
    try:
        got = run_layer(add, [x, w] + ([b] if bias else []), "cuda")
    except kiln.KilnError as e:
        assert "tac_conv" in str(e)
        assert not (tactic in (11, 15) and bias), f"graph engine 0 refused a 16-bit layer: {e}"
        return
    assert tactic < 15 or bias, "a plain graph tactic ran on a layer with no bias to fuse"
    want = F.conv2d(
        x.float().cuda(), w.float().cuda(), b.float().cuda() if bias else None, 1, 1
    ).cpu()
    torch.testing.assert_close(got.float(), want, **gpu_tolerance(torch.float16, 72))


@pytest.mark.gpu
@pytest.mark.parametrize("tactic", [4, 5, 7])
def test_grouped_convolution_refuses_per_group_algorithms(tactic, strict_fp32_torch):
    # cuDNN's FFT and non-fused Winograd algorithms grow with the group count (milliseconds on a
    # depthwise layer); grouped convolutions refuse them, and the other tactics stay available.
    x, w = torch.randn(1, 32, 14, 14), torch.randn(32, 1, 3, 3) / 3
    attrs = {"pads": [1, 1], "groups": 32, "tactic": tactic}
    add = lambda net, *t: net.add_layer("convolution", list(t), attrs, "dw")  # noqa: E731
    with pytest.raises(kiln.KilnError, match="dw.*runs once per group"):
        run_layer(add, [x, w], "cuda")
    attrs["tactic"] = 1
    got = run_layer(add, [x, w], "cuda")
    want = F.conv2d(x.cuda(), w.cuda(), None, 1, 1, 1, 32).cpu()
    torch.testing.assert_close(got, want, **gpu_tolerance(torch.float32, 9))


# (x shape, kernel, stride, padding, dilation): channel counts that take 16-byte vectors (16, 72,
# 120 in float16), 8-byte ones (6) and single elements (5) channels last; 3x3/5x5, strides 1 and 2,
# dilation, 1x1; more pixels than one block row; 3x3/5x5 with stride 1 and 2 take the
# register-blocked kernel (4 output pixels per thread: rows whose width is no multiple of 4);
# 7x7 (ConvNeXt's) the generic one. Tactics 9 (one pixel per thread, taps unrolled) and 10 (two
# pixels per thread) run square 3x3/5x5/7x7 filters without dilation channels last (10: stride 1
# or 2) and refuse the rest.
DEPTHWISE_CASES = [
    ((2, 16, 13, 11), 3, 1, 1, 1),
    ((2, 72, 14, 14), 5, 2, 2, 1),
    ((1, 120, 9, 7), 3, 2, 1, 1),
    ((3, 5, 10, 12), 3, 1, 2, 2),
    ((1, 6, 8, 8), 1, 1, 0, 1),
    ((4, 8, 40, 40), 3, 1, 1, 1),
    ((2, 40, 11, 9), 5, 1, 2, 1),
    ((1, 24, 6, 13), 5, 2, 1, 1),
    ((1, 96, 14, 13), 7, 1, 3, 1),
    ((2, 24, 9, 10), 7, 2, 3, 1),
]
DEPTHWISE_TACTIC = 8  # after cuDNN's 8 forward algorithms
DEPTHWISE_TACTICS = [8, 9, 10]


def depthwise_tactic_runs(tactic, layout, k, stride, dilation):
    if tactic == DEPTHWISE_TACTIC:
        return True
    square = layout == "nhwc" and k in (3, 5, 7) and dilation == 1
    return square and (tactic == 9 or stride <= 2)


@pytest.mark.gpu
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=[str(c[0]) for c in DEPTHWISE_CASES])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epilogue", ["none", "bias_hardswish", "bias_residual_relu"])
@pytest.mark.parametrize("tactic", DEPTHWISE_TACTICS)
def test_depthwise_tactic_matches_torch(case, layout, dtype, epilogue, tactic, strict_fp32_torch):
    xs, k, stride, padding, dilation = case
    c = xs[1]
    x = torch.randn(xs).to(dtype)
    w = (torch.randn(c, 1, k, k) / k).to(dtype)
    attrs = {"strides": [stride] * 2, "pads": [padding] * 2, "dilations": [dilation] * 2}
    attrs.update(groups=c, layout=layout, tactic=tactic)
    inputs = [x, w]
    want = F.conv2d(x.double(), w.double(), None, stride, padding, dilation, c)
    if epilogue != "none":
        b = torch.randn(c).to(dtype)
        inputs.append(b)
        want = want + b.double().view(1, c, 1, 1)
    if epilogue == "bias_residual_relu":
        r = torch.randn(want.shape).to(dtype)
        inputs.append(r)
        want = F.relu(want + r.double())
        attrs.update(activation="relu", residual=1)
    elif epilogue == "bias_hardswish":
        want = F.hardswish(want)
        attrs["activation"] = "hardswish"
    stored = list(inputs)
    if layout == "nhwc":
        stored[0], stored[1] = to_last(inputs[0]), to_last(inputs[1])
        if epilogue == "bias_residual_relu":
            stored[-1] = to_last(inputs[-1])
        want = to_last(want)
    add = lambda net, *t: net.add_layer("convolution", list(t), attrs, "dw")  # noqa: E731
    if not depthwise_tactic_runs(tactic, layout, k, stride, dilation):
        with pytest.raises(
            kiln.KilnError, match=f"'dw'.*tactic {tactic} .*variant.*take another tactic"
        ):
            run_layer(add, stored, "cuda")
        return
    got = run_layer(add, stored, "cuda")
    assert got.dtype == dtype
    tol = gpu_tolerance(dtype, k * k)
    torch.testing.assert_close(got.double(), want.to(dtype).double(), **tol)


@pytest.mark.gpu
def test_depthwise_tactic_refuses_other_convolutions():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(8, 2, 3, 3)
    attrs = {"groups": 2, "tactic": DEPTHWISE_TACTIC}
    add = lambda net, *t: net.add_layer("convolution", list(t), attrs, "grouped")  # noqa: E731
    with pytest.raises(kiln.KilnError, match="grouped.*depthwise kernel.*one filter per channel"):
        run_layer(add, [x, w], "cuda")


@pytest.mark.gpu
def test_depthwise_tactic_kernel_name():
    net = kiln.Network()
    x = net.add_input("x", "float16", [1, 8, 5, 5])
    w = net.add_constant(torch.randn(8, 1, 3, 3).half(), "w")
    attrs = {"groups": 8, "pads": [1, 1], "tactic": DEPTHWISE_TACTIC}
    y = net.add_layer("convolution", [x, w], attrs).output
    net.mark_output(y, "y")
    config = kiln.BuilderConfig(device="cuda", tactic_timing=False)  # keeps the layer's tactic
    engine = kiln.Engine(kiln.Builder().build(net, config), device="cuda")
    assert "cuda_depthwise_convolution" in "\n".join(engine.describe())


@pytest.mark.gpu
def test_convolution_cuda_tactic_out_of_range_is_refused():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    add = lambda net, *t: net.add_layer("convolution", list(t), {"tactic": 99}, "tac99")  # noqa: E731
    with pytest.raises(kiln.KilnError, match="tac99.*tactic 99 is out of range"):
        run_layer(add, [x, w], "cuda")


GRAPH_TACTICS = [11, 12, 13, 14]  # after the depthwise kernels: cuDNN's graph API
# (x shape, weight shape, stride, padding, groups): plain, grouped (regnet_x's 3x3 layers, narrow),
# strided, 1x1.
GRAPH_CASES = [
    ((2, 16, 12, 12), (32, 16, 3, 3), 1, 1, 1),
    ((1, 96, 14, 14), (96, 24, 3, 3), 1, 1, 4),
    ((2, 64, 15, 15), (64, 32, 3, 3), 2, 1, 2),
    ((1, 32, 7, 7), (48, 32, 1, 1), 1, 0, 1),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GRAPH_CASES, ids=[str(c[:2]) for c in GRAPH_CASES])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tactic", GRAPH_TACTICS)
def test_cudnn_graph_tactic_matches_torch(case, layout, dtype, tactic, strict_fp32_torch):
    # The convolution through cuDNN's graph API and the k-th engine its heuristics offer, the bias,
    # residual and relu in Kiln's epilogue kernel after; or a refusal naming the layer when cuDNN
    # offers fewer usable engines.
    xs, ws, stride, padding, groups = case
    x, w = torch.randn(xs).to(dtype), (torch.randn(ws) / math.prod(ws[1:]) ** 0.5).to(dtype)
    b = torch.randn(ws[0]).to(dtype)
    want = F.conv2d(x.double(), w.double(), b.double(), stride, padding, 1, groups)
    r = torch.randn(want.shape).to(dtype)
    want = F.relu(want + r.double())
    attrs = {"strides": [stride] * 2, "pads": [padding] * 2, "groups": groups, "layout": layout}
    attrs.update(tactic=tactic, activation="relu", residual=1)
    stored = [x, w, b, r]
    if layout == "nhwc":
        stored = [to_last(x), to_last(w), b, to_last(r)]
        want = to_last(want)
    add = lambda net, *t: net.add_layer("convolution", list(t), attrs, "graph_conv")  # noqa: E731
    try:
        got = run_layer(add, stored, "cuda")
    except kiln.KilnError as e:
        assert "graph_conv" in str(e) and "graph tactic" in str(e), str(e)
        # 16-bit convolutions have tensor-core engines in every layout; strict float32 (no TF32)
        # may find none in a layout.
        assert tactic > GRAPH_TACTICS[0] or dtype == torch.float32, f"not even one engine: {e}"
        return
    assert got.dtype == dtype
    tol = gpu_tolerance(dtype, math.prod(ws[1:]))
    torch.testing.assert_close(got.double(), want.to(dtype).double(), **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tactic", GRAPH_TACTICS)
def test_cudnn_graph_tactic_rounds_once_after_the_bias(tactic, dtype, layout, activation):
    # A 16-bit grouped convolution whose products are near +1000 and whose bias takes them back
    # near 0 (a folded batch norm does this): rounded before the bias, each output would be off by
    # up to half a unit at 1000 (0.25 in float16, 2 in bfloat16); with the bias in cuDNN's graph it
    # rounds once, at its own size. NaN in the input stays NaN through the relu.
    g = torch.Generator().manual_seed(tactic)
    x = (1 + 0.01 * torch.randn(1, 96, 14, 14, generator=g)).to(dtype)
    x[0, 5, 3, 4] = float("nan")
    w = (
        torch.full((96, 24, 3, 3), 1000 / (24 * 9))
        * (1 + 0.01 * torch.rand(96, 24, 3, 3, generator=g))
    ).to(dtype)
    exact = F.conv2d(x.double(), w.double(), None, 1, 1, 1, 4)
    # The bias cancels each channel's central value to within a few units.
    b = (-exact[0, :, 7, 7] + torch.randn(96, generator=g, dtype=torch.float64)).to(dtype)
    want = exact + b.double()[None, :, None, None]
    if activation == "relu":
        want = F.relu(want)
    attrs = {
        "pads": [1, 1],
        "groups": 4,
        "layout": layout,
        "tactic": tactic,
        "activation": activation,
    }
    stored = [x, w, b]
    if layout == "nhwc":
        stored, want = [to_last(x), to_last(w), b], to_last(want)
    add = lambda net, *t: net.add_layer("convolution", list(t), attrs, "rounds_once")  # noqa: E731
    try:
        got = run_layer(add, stored, "cuda", tactic_timing=False)
    except kiln.KilnError as e:
        assert "rounds_once" in str(e) and "graph tactic" in str(e), str(e)
        assert tactic > GRAPH_TACTICS[0], f"not even one engine: {e}"
        return
    nan = want.isnan()
    assert nan.any() and torch.equal(got.isnan(), nan)
    # One rounding of values up to about 100 (the spread of the interior and the padded border).
    ulp = {torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    err = (got.double() - want).abs()[~nan]
    assert (err <= want.abs()[~nan] * ulp + 4e-3).all(), f"max error {err.max().item()}"
