"""softmax, batch_norm, layer_norm, group_norm and rms_norm: reference backend vs eager torch
(CPU), CUDA vs torch (GPU).

Tolerances. The reference backend computes in double and rounds once, so it is compared with
torch in float64, rounded to float32, at TOLERANCE[float32]. CUDA computes in float32 with
two-pass statistics: outputs are O(1) (normalized values, probabilities, log-probabilities of a
few units) with errors of a few float32 ulp from expf/sqrtf and the statistics' sums, so float32
gets rtol 1e-5 with atol 1e-5 (log_softmax of 50257 classes is about -11, a float32 ulp there is
1e-6, and the log-sum adds a few). float16/bfloat16 outputs are compared with torch's float64
result of the same rounded inputs (and parameters), rounded to the dtype, at TOLERANCE[dtype]
(about two ulp).
"""

import re

import pytest
import torch
import torch.nn.functional as F
from layer_util import TOLERANCE, run_layer

import kiln

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CUDA_TOL = {**TOLERANCE, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


def check_reference(got, want):
    torch.testing.assert_close(got, want.float(), **TOLERANCE[torch.float32])


def check_cuda(got, want, dtype):
    torch.testing.assert_close(got.double(), want.to(dtype).double(), **CUDA_TOL[dtype])


# softmax

SOFTMAX_CASES = [
    ((2, 50257), -1),  # a vocabulary-sized row
    ((4097,), 0),
    ((3, 127), -1),
    ((3, 127), 0),
    ((1000, 3), 1),
    ((2, 3, 5, 7), 1),
    ((2, 3, 5, 7), -3),
    ((4, 33, 300), 1),  # many strided rows (CUDA thread-per-row path)
    ((6, 1), -1),
    ((0, 7), -1),
    ((), -1),
]


def torch_softmax(x, axis, log):
    return (F.log_softmax if log else F.softmax)(x, dim=axis)


def add_softmax(axis, log):
    return lambda net, x: net.add_softmax(x, axis, log)


@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES)
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dynamic", [False, True])
def test_reference_softmax(shape, axis, log, dynamic):
    x = torch.randn(shape) * 4 + 30  # an offset that overflows exp without the max subtraction
    got = run_layer(add_softmax(axis, log), [x], "cpu", dynamic=dynamic)
    check_reference(got, torch_softmax(x.double(), axis, log))


def test_reference_softmax_default_axis_is_last():
    x = torch.randn(3, 5, 7)
    got = run_layer(lambda net, t: net.add_layer("softmax", [t], {}), [x], "cpu")
    check_reference(got, torch_softmax(x.double(), -1, False))


@pytest.mark.gpu
@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES)
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_softmax(shape, axis, log, dtype):
    x = (torch.randn(shape) * 4 + 30).to(dtype)
    got = run_layer(add_softmax(axis, log), [x], "cuda", dynamic=len(shape) > 1)
    check_cuda(got, torch_softmax(x.double(), axis, log), dtype)


# batch_norm

BN_SHAPES = [(2, 3), (2, 3, 5), (4, 7, 9, 11), (1, 13, 1, 1), (3, 5, 127), (0, 3, 4)]


def bn_params(c, dtype):
    scale, bias = torch.randn(c), torch.randn(c)
    mean, var = torch.randn(c), torch.rand(c) + 0.5
    return [p.to(dtype) for p in (scale, bias, mean, var)]


def torch_batch_norm(x, scale, bias, mean, var, eps):
    d = torch.float64
    return F.batch_norm(x.to(d), mean.to(d), var.to(d), scale.to(d), bias.to(d), False, 0.0, eps)


def add_batch_norm(eps):
    return lambda net, x, s, b, m, v: net.add_batch_norm(x, s, b, m, v, eps)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
@pytest.mark.parametrize("dynamic", [False, True])
def test_reference_batch_norm(shape, eps, dynamic):
    x = torch.randn(shape) * 2
    params = bn_params(shape[1], torch.float32)
    got = run_layer(add_batch_norm(eps), [x, *params], "cpu", dynamic=dynamic)
    check_reference(got, torch_batch_norm(x, *params, eps))


@pytest.mark.parametrize("dtype", [torch.float16])  # host bindings have no bfloat16 (numpy)
@pytest.mark.parametrize("param_dtype", ["same", torch.float32])
def test_reference_batch_norm_low_precision(dtype, param_dtype):
    x = (torch.randn(4, 6, 5) * 2).to(dtype)
    params = bn_params(6, dtype if param_dtype == "same" else param_dtype)
    got = run_layer(add_batch_norm(1e-5), [x, *params], "cpu")
    torch.testing.assert_close(
        got.double(), torch_batch_norm(x, *params, 1e-5).to(dtype).double(), **TOLERANCE[dtype]
    )


@pytest.mark.gpu
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("param_dtype", ["same", torch.float32])
def test_cuda_batch_norm(shape, dtype, param_dtype):
    x = (torch.randn(shape) * 2).to(dtype)
    params = bn_params(shape[1], dtype if param_dtype == "same" else param_dtype)
    got = run_layer(add_batch_norm(1e-3), [x, *params], "cuda", dynamic=True)
    check_cuda(got, torch_batch_norm(x, *params, 1e-3), dtype)


# layer_norm and rms_norm: (shape, normalized_ndim)

ROW_CASES = [
    ((3, 127), 1),
    ((2, 1000), 1),
    ((4097,), 1),
    ((2, 3, 5, 7), 2),
    ((2, 3, 5, 7), 3),
    ((5, 1), 1),
    ((64, 32), 1),
    ((0, 8), 1),
    # CUDA's warp-per-row kernel (16-bit rows of up to 128 vectors): BERT's 768 with a row count
    # that leaves its last block part empty, and 33 vectors (the two-vector variant, one lane busy).
    ((33, 768), 1),
    ((5, 264), 1),
]
AFFINE = ["none", "weight", "weight_bias"]


def row_inputs(shape, k, affine, dtype, param_dtype=None):
    pd = param_dtype or dtype
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    params = []
    if affine != "none":
        params.append((torch.randn(shape[-k:]) + 1).to(pd))
    if affine == "weight_bias":
        params.append(torch.randn(shape[-k:]).to(pd))
    return x, params


def torch_layer_norm(x, params, k, eps):
    d = torch.float64
    w = params[0].to(d) if params else None
    b = params[1].to(d) if len(params) > 1 else None
    return F.layer_norm(x.to(d), x.shape[len(x.shape) - k :], w, b, eps)


def torch_rms_norm(x, params, k, eps):
    d = torch.float64
    w = params[0].to(d) if params else None
    return F.rms_norm(x.to(d), x.shape[len(x.shape) - k :], w, eps)


def add_layer_norm(k, eps):
    return lambda net, x, *p: net.add_layer_norm(x, *p, normalized_ndim=k, eps=eps)


def add_rms_norm(k, eps):
    return lambda net, x, *p: net.add_rms_norm(x, *p, normalized_ndim=k, eps=eps)


@pytest.mark.parametrize("shape,k", ROW_CASES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("dynamic", [False, True])
def test_reference_layer_norm(shape, k, affine, dynamic):
    x, params = row_inputs(shape, k, affine, torch.float32)
    # A dynamic normalized dim cannot match a fixed-size weight: only dim 0 of longer shapes.
    dynamic = dynamic and (len(shape) > k or not params)
    got = run_layer(add_layer_norm(k, 1e-5), [x, *params], "cpu", dynamic=dynamic)
    check_reference(got, torch_layer_norm(x, params, k, 1e-5))


@pytest.mark.parametrize("shape,k", ROW_CASES)
@pytest.mark.parametrize("affine", ["none", "weight"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_reference_rms_norm(shape, k, affine, dynamic):
    x, params = row_inputs(shape, k, affine, torch.float32)
    # A dynamic normalized dim cannot match a fixed-size weight: only dim 0 of longer shapes.
    dynamic = dynamic and (len(shape) > k or not params)
    got = run_layer(add_rms_norm(k, 1e-6), [x, *params], "cpu", dynamic=dynamic)
    check_reference(got, torch_rms_norm(x, params, k, 1e-6))


def test_reference_norm_defaults():
    # layer_norm: eps 1e-5, last dim; rms_norm: eps 1e-6 (Kiln's choice, not torch's finfo.eps).
    x = torch.randn(4, 6) * 0.01  # small values make eps visible
    got = run_layer(lambda net, t: net.add_layer("layer_norm", [t], {}), [x], "cpu")
    check_reference(got, torch_layer_norm(x, [], 1, 1e-5))
    got = run_layer(lambda net, t: net.add_layer("rms_norm", [t], {}), [x], "cpu")
    check_reference(got, torch_rms_norm(x, [], 1, 1e-6))
    with pytest.raises(AssertionError):
        check_reference(got, torch_rms_norm(x, [], 1, torch.finfo(torch.float32).eps))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "op,affine",
    # rms_norm has no bias (a third input is refused: test_rms_norm_errors), so no such pair.
    [
        (op, affine)
        for op in ("layer_norm", "rms_norm")
        for affine in AFFINE
        if not (op == "rms_norm" and affine == "weight_bias")
    ],
)
@pytest.mark.parametrize("shape,k", ROW_CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("param_dtype", [None, torch.float32])
def test_cuda_row_norms(op, shape, k, affine, dtype, param_dtype):
    x, params = row_inputs(shape, k, affine, dtype, param_dtype)
    add = add_layer_norm if op == "layer_norm" else add_rms_norm
    want = (torch_layer_norm if op == "layer_norm" else torch_rms_norm)(x, params, k, 1e-5)
    got = run_layer(add(k, 1e-5), [x, *params], "cuda", dynamic=len(shape) > k)
    check_cuda(got, want, dtype)


# group_norm: (shape, num_groups)

GROUP_CASES = [
    ((2, 6, 5, 7), 3),
    ((1, 32, 127), 8),
    ((3, 4, 1000), 1),  # one group of 4000 elements: must not take the per-element register path
    ((5, 64), 1),  # spatial 1, one group: the register path (parameter index = row position)
    ((2, 4, 3, 3), 4),
    ((2, 6), 2),
    ((3, 5, 4097), 5),
    ((0, 6, 3), 3),
]


def group_inputs(shape, affine, dtype, param_dtype=None):
    pd = param_dtype or dtype
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    c = shape[1]
    params = []
    if affine != "none":
        params.append((torch.randn(c) + 1).to(pd))
    if affine == "weight_bias":
        params.append(torch.randn(c).to(pd))
    return x, params


def torch_group_norm(x, params, groups, eps):
    d = torch.float64
    w = params[0].to(d) if params else None
    b = params[1].to(d) if len(params) > 1 else None
    return F.group_norm(x.to(d), groups, w, b, eps)


def add_group_norm(groups, eps):
    return lambda net, x, *p: net.add_group_norm(x, groups, *p, eps=eps)


@pytest.mark.parametrize("shape,groups", GROUP_CASES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("dynamic", [False, True])
def test_reference_group_norm(shape, groups, affine, dynamic):
    x, params = group_inputs(shape, affine, torch.float32)
    got = run_layer(add_group_norm(groups, 1e-5), [x, *params], "cpu", dynamic=dynamic)
    check_reference(got, torch_group_norm(x, params, groups, 1e-5))


@pytest.mark.gpu
@pytest.mark.parametrize("shape,groups", GROUP_CASES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("param_dtype", [None, torch.float32])
def test_cuda_group_norm(shape, groups, affine, dtype, param_dtype):
    x, params = group_inputs(shape, affine, dtype, param_dtype)
    got = run_layer(add_group_norm(groups, 1e-5), [x, *params], "cuda", dynamic=True)
    check_cuda(got, torch_group_norm(x, params, groups, 1e-5), dtype)


# errors


def net_with(*shapes, dtypes=None):
    net = kiln.Network()
    dtypes = dtypes or ["float32"] * len(shapes)
    return net, [
        net.add_input(f"t{i}", d, s) for i, (s, d) in enumerate(zip(shapes, dtypes, strict=True))
    ]


def layer_error(op, match):
    return pytest.raises(kiln.KilnError, match=rf"layer 'n1' \({op}\).*" + re.escape(match))


def test_softmax_errors():
    net, (x,) = net_with((2, 3))
    with layer_error("softmax", "axis 2 is out of range for rank 2"):
        net.add_softmax(x, 2, name="n1")
    with layer_error("softmax", "log must be 0 or 1"):
        net.add_layer("softmax", [x], {"log": 3}, name="n1")
    net, (i,) = net_with((2, 3), dtypes=["int32"])
    with layer_error("softmax", "x must be floating point, got int32"):
        net.add_softmax(i, name="n1")


def test_batch_norm_errors():
    net, (x, p, q, x1) = net_with((2, 3, 4), (3,), (4,), (5,))
    with layer_error("batch_norm", "mean has shape [4], expected [3]"):
        net.add_batch_norm(x, p, p, q, p, name="n1")
    with layer_error("batch_norm", "x must be [N, C, ...], got [5]"):
        net.add_batch_norm(x1, p, p, p, p, name="n1")
    with layer_error("batch_norm", "eps must be >= 0"):
        net.add_batch_norm(x, p, p, p, p, eps=-1.0, name="n1")
    with pytest.raises(kiln.KilnError, match=r"'n1'.*takes 5 inputs, got 4"):
        net.add_layer("batch_norm", [x, p, p, p], {}, name="n1")


def test_layer_norm_errors():
    net, (x, w, h, v, b) = net_with(
        (2, 3, 4),
        (3,),
        (4,),
        (3, 4),
        (4,),
        dtypes=["float32", "float32", "float16", "float32", "float32"],
    )
    with layer_error("layer_norm", "weight has shape [3], expected [4]"):
        net.add_layer_norm(x, w, name="n1")
    with layer_error("layer_norm", "bias has shape [4], expected [3, 4]"):
        net.add_layer_norm(x, v, b, normalized_ndim=2, name="n1")
    with layer_error("layer_norm", "normalized_ndim 4 must be in 1..3"):
        net.add_layer_norm(x, normalized_ndim=4, name="n1")
    with layer_error("layer_norm", "weight must be float32, got float16"):
        net.add_layer_norm(x, h, name="n1")
    with pytest.raises(ValueError, match="a bias needs a weight"):
        net.add_layer_norm(x, None, w)


def test_parameter_dtypes_must_agree():
    net, (x, w, b) = net_with((2, 4), (4,), (4,), dtypes=["float16", "float16", "float32"])
    with layer_error("layer_norm", "bias is float32 but weight is float16"):
        net.add_layer_norm(x, w, b, name="n1")


def test_group_norm_errors():
    net, (x, w) = net_with((2, 6, 5), (4,))
    with layer_error("group_norm", "num_groups 4 does not divide the 6 channels"):
        net.add_group_norm(x, 4, name="n1")
    with layer_error("group_norm", "num_groups must be >= 1"):
        net.add_group_norm(x, 0, name="n1")
    with layer_error("group_norm", "missing attribute 'num_groups'"):
        net.add_layer("group_norm", [x], {}, name="n1")
    with layer_error("group_norm", "weight has shape [4], expected [6]"):
        net.add_group_norm(x, 3, w, name="n1")


def test_group_norm_dynamic_channels_checked_at_run_time():
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, -1, 4))
    net.mark_output(net.add_group_norm(x, 4, name="n1"), "out")
    config = kiln.BuilderConfig(device="cpu")
    config.add_optimization_profile({"x": ([2, 4, 4], [2, 8, 4], [2, 12, 4])})
    ctx = kiln.Engine(kiln.Builder().build(net, config), device="cpu").create_execution_context()
    x8 = torch.randn(2, 8, 4)
    check_reference(ctx.execute({"x": x8})["out"], torch_group_norm(x8, [], 4, 1e-5))
    with layer_error("group_norm", "num_groups 4 does not divide the 6 channels"):
        ctx.execute({"x": torch.randn(2, 6, 4)})


def test_rms_norm_errors():
    net, (x, w) = net_with((2, 3, 4), (3,))
    with layer_error("rms_norm", "weight has shape [3], expected [4]"):
        net.add_rms_norm(x, w, name="n1")
    with pytest.raises(kiln.KilnError, match=r"'n1'.*takes 1 to 2 inputs, got 3"):
        net.add_layer("rms_norm", [x, w, w], {}, name="n1")
