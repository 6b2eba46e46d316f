"""pooling / adaptive_pooling layers: reference backend vs eager torch (CPU), CUDA (cuDNN or own
kernels) vs eager torch on the GPU, and the errors the schema raises."""

import pytest
import torch
import torch.nn.functional as F
from layer_util import TOLERANCE, run_layer

import kiln

# (name, type, x shape, kernel, stride, padding, dilation, ceil_mode, count_include_pad,
#  divisor_override)
POOL_CASES = [
    ("max1d", "max", (3, 4, 11), 3, 2, 1, 1, False, True, None),
    ("max1d_ceil", "max", (2, 3, 10), 3, 2, 1, 1, True, True, None),
    ("max1d_dilated", "max", (1, 2, 13), 3, 2, 1, 2, False, True, None),
    ("max1d_ceil_kernel_past_input", "max", (1, 2, 2), 3, 3, 0, 1, True, True, None),
    ("avg1d", "avg", (3, 4, 11), 3, 2, 1, 1, False, True, None),
    ("avg1d_exclude_pad", "avg", (2, 3, 9), 4, 3, 2, 1, False, False, None),
    ("avg1d_ceil", "avg", (2, 3, 10), 3, 2, 1, 1, True, True, None),
    ("avg1d_ceil_exclude_pad", "avg", (2, 3, 10), 3, 2, 1, 1, True, False, None),
    ("avg1d_ceil_kernel_past_input", "avg", (1, 2, 2), 3, 3, 0, 1, True, True, None),
    ("max2d", "max", (3, 3, 9, 7), (3, 2), (2, 1), (1, 1), 1, False, True, None),
    ("max2d_default_stride", "max", (1, 5, 9, 11), 2, None, 0, 1, False, True, None),
    ("max2d_ceil_dilated", "max", (2, 2, 10, 9), 3, 2, 1, (2, 1), True, True, None),
    ("avg2d", "avg", (3, 3, 9, 7), 3, 2, 1, 1, False, True, None),
    ("avg2d_default_stride_odd", "avg", (2, 4, 7, 11), (2, 3), None, 0, 1, False, True, None),
    ("avg2d_ceil_exclude_pad", "avg", (2, 3, 10, 9), 3, 2, 1, 1, True, False, None),
    ("avg2d_ceil_include_pad", "avg", (2, 3, 10, 9), 3, 2, 1, 1, True, True, None),
    ("avg2d_divisor", "avg", (2, 3, 9, 8), 3, 2, 1, 1, False, True, 5),
    ("avg2d_divisor_ceil", "avg", (1, 2, 10, 10), 3, 2, 1, 1, True, False, 4),
    ("max3d", "max", (1, 2, 5, 6, 7), 2, (1, 2, 2), (1, 0, 1), 1, False, True, None),
    ("avg3d_ceil", "avg", (2, 2, 5, 6, 7), 3, 2, 1, 1, True, False, None),
]

TORCH_MAX = {3: F.max_pool1d, 4: F.max_pool2d, 5: F.max_pool3d}
TORCH_AVG = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}


def add_pool(case):
    _, kind, _, kernel, stride, padding, dilation, ceil_mode, include_pad, divisor = case

    def add(net, x):
        return net.add_pooling(
            x, kind, kernel, stride, padding, dilation, ceil_mode, include_pad, divisor
        )

    return add


def torch_pool(case, x):
    _, kind, _, kernel, stride, padding, dilation, ceil_mode, include_pad, divisor = case
    if kind == "max":
        return TORCH_MAX[x.dim()](x, kernel, stride, padding, dilation, ceil_mode)
    if x.dim() == 3:  # avg_pool1d has no divisor_override
        assert divisor is None
        return F.avg_pool1d(x, kernel, stride, padding, ceil_mode, include_pad)
    return TORCH_AVG[x.dim()](x, kernel, stride, padding, ceil_mode, include_pad, divisor)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pooling_reference_matches_torch(case, dynamic):
    x = torch.randn(case[2])
    got = run_layer(add_pool(case), [x], "cpu", dynamic=dynamic)
    # float64 torch is exact; the reference sums in double and rounds once.
    torch.testing.assert_close(
        got, torch_pool(case, x.double()).float(), **TOLERANCE[torch.float32]
    )


def test_max_pooling_ignores_padding_reference():
    # All inputs negative: a padding value taken as 0 would win every border window.
    x = -(torch.rand(2, 3, 7, 6) + 0.1)
    add = lambda net, t: net.add_pooling(t, "max", 3, 2, 1)  # noqa: E731
    torch.testing.assert_close(run_layer(add, [x], "cpu"), F.max_pool2d(x, 3, 2, 1))


def test_max_pooling_propagates_nan_reference():
    x = torch.randn(1, 1, 6, 6)
    x[0, 0, 2, 3] = float("nan")
    add = lambda net, t: net.add_pooling(t, "max", 2)  # noqa: E731
    got = run_layer(add, [x], "cpu")
    torch.testing.assert_close(got, F.max_pool2d(x, 2), equal_nan=True)
    assert torch.isnan(got[0, 0, 1, 1])


# (name, type, x shape, output_size)
ADAPTIVE_CASES = [
    ("avg1d", "avg", (3, 4, 10), 3),
    ("max1d", "max", (2, 3, 10), 3),
    ("avg1d_upsample", "avg", (1, 2, 3), 5),
    ("max1d_upsample", "max", (1, 2, 3), 5),
    ("avg2d", "avg", (3, 3, 9, 7), (4, 3)),
    ("max2d", "max", (2, 3, 9, 7), (4, 3)),
    ("avg2d_global", "avg", (2, 5, 7, 6), 1),
    ("max2d_identity", "max", (1, 2, 5, 5), 5),
    ("avg2d_mixed", "avg", (2, 2, 13, 5), (5, 7)),
    # global pooling (output size 1) runs a reduction kernel on CUDA; 37 channels leave a partial
    # tile of 32 channels last, 300 pixels span several phases and warps.
    ("max2d_global_odd_channels", "max", (3, 37, 15, 20), 1),
    ("avg1d_global", "avg", (2, 3, 50), 1),
]
TORCH_ADAPTIVE = {
    ("avg", 3): F.adaptive_avg_pool1d,
    ("avg", 4): F.adaptive_avg_pool2d,
    ("max", 3): F.adaptive_max_pool1d,
    ("max", 4): F.adaptive_max_pool2d,
}


def add_adaptive(case):
    return lambda net, x: net.add_adaptive_pooling(x, case[1], case[3])


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[c[0] for c in ADAPTIVE_CASES])
def test_adaptive_pooling_reference_matches_torch(case, dynamic):
    x = torch.randn(case[2])
    got = run_layer(add_adaptive(case), [x], "cpu", dynamic=dynamic)
    want = TORCH_ADAPTIVE[case[1], x.dim()](x.double(), case[3]).float()
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


def test_pooling_dynamic_spatial_dims_reference():
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 2, -1, -1])
    layer = net.add_pooling(x, "avg", 3, 2, 1, ceil_mode=True, count_include_pad=False)
    net.mark_output(layer, "y")
    config = kiln.BuilderConfig(device="cpu")
    config.add_optimization_profile({"x": ([1, 2, 2, 2], [2, 2, 8, 8], [2, 2, 12, 12])})
    ctx = kiln.Engine(kiln.Builder().build(net, config), device="cpu").create_execution_context()
    for shape in [(2, 2, 10, 9), (1, 2, 3, 12)]:
        xv = torch.randn(shape)
        want = F.avg_pool2d(xv, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        torch.testing.assert_close(ctx.execute({"x": xv})["y"], want, **TOLERANCE[torch.float32])


def test_pooling_empty_batch_reference():
    got = run_layer(lambda net, t: net.add_pooling(t, "max", 2), [torch.randn(0, 3, 4, 4)], "cpu")
    assert got.shape == (0, 3, 2, 2)


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, attrs, message",
    [
        ((1, 1, 2, 2), {"type": "max", "kernel": [3, 3]}, "larger than the padded input"),
        (
            (1, 1, 5, 5),
            {"type": "max", "kernel": [3, 3], "pads": [2, 2]},
            "at most half the kernel",
        ),
        ((1, 1, 5, 5), {"type": "avg", "kernel": [3, 3], "dilations": [2, 2]}, "max pooling only"),
        ((1, 1, 5, 5), {"type": "max", "kernel": [3]}, "'kernel' needs 2 value"),
        (
            (1, 1, 5, 5),
            {"type": "max", "kernel": [3, 3], "strides": [1, 1, 1]},
            "'strides' needs 2",
        ),
        ((1, 1, 5, 5), {"type": "max"}, "missing attribute 'kernel'"),
        ((1, 1, 5, 5), {"type": "min", "kernel": [2, 2]}, "unknown pooling type 'min'"),
        (
            (1, 1, 5, 5),
            {"type": "max", "kernel": [2, 2], "divisor_override": 2},
            "avg pooling only",
        ),
        ((1, 1, 5, 5), {"type": "avg", "kernel": [2, 2], "divisor_override": 0}, "must be > 0"),
        (
            (1, 1, 5, 5),
            {"type": "avg", "kernel": [2, 2], "ceil_mode": 2},
            "ceil_mode must be 0 or 1",
        ),
        ((1, 5), {"type": "max", "kernel": [2]}, "1 to 3 spatial dims"),
    ],
)
def test_pooling_errors_name_the_layer(shape, attrs, message):
    net = kiln.Network()
    x = net.add_input("x", "float32", shape)
    with pytest.raises(kiln.KilnError, match=f"bad_pool.*{message}"):
        net.add_layer("pooling", [x], attrs, "bad_pool")


@pytest.mark.parametrize(
    "shape, attrs, message",
    [
        ((1, 1, 5, 5), {"type": "avg"}, "missing attribute 'output_size'"),
        ((1, 1, 5, 5), {"type": "avg", "output_size": [2]}, "'output_size' needs 2 value"),
        ((1, 1, 5, 5), {"type": "avg", "output_size": [0, 2]}, "output_size must be >= 1"),
        ((1, 1, 5, 5), {"type": "sum", "output_size": [2, 2]}, "unknown pooling type"),
    ],
)
def test_adaptive_pooling_errors_name_the_layer(shape, attrs, message):
    net = kiln.Network()
    x = net.add_input("x", "float32", shape)
    with pytest.raises(kiln.KilnError, match=f"bad_pool.*{message}"):
        net.add_layer("adaptive_pooling", [x], attrs, "bad_pool")


# ---- CUDA ---------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pool_tolerance(dtype):
    # Max pooling is exact. Averages sum at most 27 values in float32 and round once to the
    # output dtype, so the layer_util tolerances (one rounding) hold with float32's bumped for
    # summation order.
    if dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-5}
    return TOLERANCE[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pooling_cuda_matches_torch(case, dynamic, dtype):
    x = torch.randn(case[2]).to(dtype)
    got = run_layer(add_pool(case), [x], "cuda", dynamic=dynamic)
    assert got.dtype == dtype
    want = torch_pool(case, x.double()).to(dtype)  # exact result of the same rounded inputs
    torch.testing.assert_close(got.double(), want.double(), **pool_tolerance(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pooling_ignores_padding_cuda(dtype):
    x = -(torch.rand(2, 3, 7, 6) + 0.1).to(dtype)
    add = lambda net, t: net.add_pooling(t, "max", 3, 2, 1)  # noqa: E731
    got = run_layer(add, [x], "cuda")
    torch.testing.assert_close(got, F.max_pool2d(x.float(), 3, 2, 1).to(dtype), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pooling_propagates_nan_cuda(ceil_mode):
    x = torch.randn(1, 1, 6, 6)
    x[0, 0, 2, 3] = float("nan")
    add = lambda net, t: net.add_pooling(t, "max", 2, ceil_mode=ceil_mode)  # noqa: E731
    got = run_layer(add, [x], "cuda")
    torch.testing.assert_close(got, F.max_pool2d(x, 2, ceil_mode=ceil_mode), equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[c[0] for c in ADAPTIVE_CASES])
def test_adaptive_pooling_cuda_matches_torch(case, dynamic, dtype):
    x = torch.randn(case[2]).to(dtype)
    got = run_layer(add_adaptive(case), [x], "cuda", dynamic=dynamic)
    want = TORCH_ADAPTIVE[case[1], x.dim()](x.double(), case[3]).to(dtype)
    torch.testing.assert_close(got.double(), want.double(), **pool_tolerance(dtype))


@pytest.mark.gpu
def test_pooling_cuda_kernel_choice():
    # cuDNN where it is exact, the own kernel for ceil_mode, dilation and divisor_override.
    net = kiln.Network()
    x = net.add_input("x", "float32", [1, 2, 9, 9])
    layers = [
        net.add_pooling(x, "max", 3, 2, 1),
        net.add_pooling(x, "avg", 3, 2, 1, count_include_pad=False),
        net.add_pooling(x, "max", 3, 2, 1, ceil_mode=True),
        net.add_pooling(x, "max", 3, 2, 1, dilation=2),
        net.add_pooling(x, "avg", 3, 2, 1, divisor_override=3),
        net.add_adaptive_pooling(x, "avg", 4),
    ]
    for i, layer in enumerate(layers):
        net.mark_output(layer, f"y{i}")
    plan = kiln.Builder().build(net, kiln.BuilderConfig(device="cuda"))
    assert list(plan.kernels) == [
        "cudnn_pooling",
        "cudnn_pooling",
        "cuda_pooling",
        "cuda_pooling",
        "cuda_pooling",
        "cuda_adaptive_pooling",
    ]


# ---- channels last (layout nhwc): x and y stored [N, spatial..., C], same values ----------------


def to_last(t):
    return t.movedim(1, -1).contiguous()


def nhwc_pool_attrs(case, rank):
    _, kind, _, kernel, stride, padding, dilation, ceil_mode, include_pad, divisor = case

    def spatial(v):
        return [v] * (rank - 2) if isinstance(v, int) else list(v)

    attrs = {"type": kind, "kernel": spatial(kernel), "pads": spatial(padding)}
    attrs.update({"ceil_mode": int(ceil_mode), "layout": "nhwc"})
    if stride is not None:
        attrs["strides"] = spatial(stride)
    if kind == "max":
        attrs["dilations"] = spatial(dilation)
    else:
        attrs["count_include_pad"] = int(include_pad)
    if divisor is not None:
        attrs["divisor_override"] = divisor
    return attrs


def run_nhwc_pool(case, x, target, dynamic=False):
    attrs = nhwc_pool_attrs(case, x.dim())
    add = lambda net, t: net.add_layer("pooling", [t], attrs)  # noqa: E731
    return run_layer(add, [to_last(x)], target, dynamic=dynamic)


def run_nhwc_adaptive(case, x, target, dynamic=False):
    sizes = case[3] if isinstance(case[3], tuple) else (case[3],) * (x.dim() - 2)
    attrs = {"type": case[1], "output_size": list(sizes), "layout": "nhwc"}
    add = lambda net, t: net.add_layer("adaptive_pooling", [t], attrs)  # noqa: E731
    return run_layer(add, [to_last(x)], target, dynamic=dynamic)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pooling_channels_last_reference_matches_torch(case, dynamic):
    x = torch.randn(case[2])
    got = run_nhwc_pool(case, x, "cpu", dynamic)
    want = to_last(torch_pool(case, x.double()).float())
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[c[0] for c in ADAPTIVE_CASES])
def test_adaptive_pooling_channels_last_reference_matches_torch(case):
    x = torch.randn(case[2])
    got = run_nhwc_adaptive(case, x, "cpu", dynamic=True)
    want = to_last(TORCH_ADAPTIVE[(case[1], x.dim())](x.double(), case[3]).float())
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pooling_channels_last_cuda_matches_torch(case, dtype):
    x = torch.randn(case[2]).to(dtype)
    got = run_nhwc_pool(case, x, "cuda", dynamic=True)
    want = to_last(torch_pool(case, x.double()).to(dtype))
    torch.testing.assert_close(got.double(), want.double(), **pool_tolerance(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[c[0] for c in ADAPTIVE_CASES])
def test_adaptive_pooling_channels_last_cuda_matches_torch(case, dtype):
    x = torch.randn(case[2]).to(dtype)
    got = run_nhwc_adaptive(case, x, "cuda", dynamic=True)
    want = to_last(TORCH_ADAPTIVE[(case[1], x.dim())](x.double(), case[3]).to(dtype))
    torch.testing.assert_close(got.double(), want.double(), **pool_tolerance(dtype))


# The 1d/2d cases again with 16 and 24 channels: channels-last 2-D pooling whose channels fill
# 16-byte vectors takes the vectorized kernel (8 float16/bfloat16 or 4 float32 channels a thread).
VEC_CASES = [
    (c[0] + f"_c{ch}", *c[1:2], (c[2][0], ch, *c[2][2:]), *c[3:])
    for c in POOL_CASES
    if len(c[2]) in (3, 4)
    for ch in (16, 24)
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", VEC_CASES, ids=[c[0] for c in VEC_CASES])
def test_pooling_channels_last_vectorized_cuda_matches_torch(case, dtype):
    x = torch.randn(case[2]).to(dtype)
    if case[1] == "max":  # NaN propagates, as in torch
        x.view(-1)[::97] = float("nan")
    got = run_nhwc_pool(case, x, "cuda", dynamic=True)
    want = to_last(torch_pool(case, x.double()).to(dtype))
    torch.testing.assert_close(got.double(), want.double(), equal_nan=True, **pool_tolerance(dtype))
