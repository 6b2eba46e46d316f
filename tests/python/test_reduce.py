"""reduce and arg_reduce layers: reference backend vs eager torch (CPU), CUDA vs torch (GPU).

Tolerances. The reference backend computes in double and rounds once to float32, so it is
compared with torch in float64 at TOLERANCE[float32]. CUDA accumulates in float32. A float32 sum's
error is bounded by (summation depth) * u * sum(|x|), u = 2^-24; CUDA's depth here (sequential adds
per thread, then the shuffle tree; the column tile's threads add every 32nd element, then a tree of
5) is at most ~40, hence sum and mean get an extra absolute term
ACCUM_ATOL * sum(|x|) (mean: mean(|x|)) of the reduced row. prod and the two-pass var have a
relative error of that order (~2.5e-6), inside rtol. float16/bfloat16 results are compared with
torch's float64 result of the same (rounded) inputs, rounded to the dtype, at TOLERANCE[dtype]
(about two ulp: one rounding that may land on either side) plus that term. Integer reductions
and max/min/argmax/argmin are exact.
"""

import re

import pytest
import torch
from layer_util import TOLERANCE, per_device, run_layer
from test_ops_doc import documented_ops

import kiln

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
pytestmark = pytest.mark.filterwarnings(
    r"ignore:var\(\). degrees of freedom"
)  # torch, N <= correction
ACCUM_ATOL = 2.5e-6  # ~40 * 2^-24, see the module docstring

# (shape, axes): odd sizes along the reduced axes (1, 3, 127, 1000, 4097), contiguous and strided
# axis sets, negative axes, all axes ([]), size-1 dims, many outputs with a kept innermost dim
# (the CUDA thread-per-output path), long reductions with a kept innermost dim (the column tile: a
# channels-last spatial mean; from 512 reduced elements split over blocks), empty outputs and
# empty reduced axes.
CASES = [
    ((4097,), [0]),
    ((3, 127), [-1]),
    ((3, 127), [0]),
    ((2, 1000), [1]),
    ((7, 1), [-1]),
    ((1, 3), [0, 1]),
    ((2, 3, 5, 7), [1, 3]),
    ((2, 3, 5, 7), [0, -1]),
    ((2, 3, 5, 7), [-3, -2]),
    ((2, 3, 5, 7), []),
    ((4, 1, 6), [1]),
    ((4, 33, 300), [1]),
    ((2, 28, 28, 72), [1, 2]),
    ((1, 56, 56, 48), [1, 2]),  # a squeeze-excitation mean at batch 1: the column split
    ((3, 1000, 40), [1]),
    ((0, 4), [1]),
    ((3, 0, 4), [1]),
    ((), []),
]
OPS = ["sum", "mean", "max", "min", "prod", "var"]


def torch_reduce(op, x, axes, keepdim, correction=1):
    dims = list(range(x.dim())) if not axes else [a % max(x.dim(), 1) for a in axes]
    if x.dim() == 0:
        dims = []
    if op == "sum":
        return x.sum(dims, keepdim=keepdim) if dims else x.clone()
    if op == "mean":
        return x.mean(dims, keepdim=keepdim) if dims else x.clone()
    if op == "var":
        return x.var(dims, keepdim=keepdim, correction=correction) if dims else x * float("nan")
    y = x
    for d in sorted(dims, reverse=True):  # amax/amin/prod: one axis at a time for prod
        if op == "prod":
            y = y.prod(d, keepdim=keepdim)
        elif op == "max":
            y = y.amax(d, keepdim=keepdim)
        else:
            y = y.amin(d, keepdim=keepdim)
    return y


def sample(op, shape, dtype=torch.float32):
    if op == "prod":  # near 1 so products of thousands of factors stay finite
        return torch.exp(torch.randn(shape) * 0.02).to(dtype)
    return (torch.randn(shape) * 3).to(dtype)


def accum_atol(op, x, axes):
    """ACCUM_ATOL * the largest sum(|x|) (mean: mean(|x|)) over a reduced row; 0 for other ops."""
    if op not in ("sum", "mean") or x.numel() == 0:
        return 0.0
    mag = torch_reduce(op, x.double().abs(), axes, False)
    return ACCUM_ATOL * float(mag.max()) if mag.numel() else 0.0


def add_reduce(op, axes, keepdim, **extra):
    return lambda net, x: net.add_reduce(x, op, axes, keepdim, **extra)


def valid(op, shape, axes):
    """max/min over an empty axis is refused (test_max_over_empty_axis_is_refused*)."""
    if op not in ("max", "min"):
        return True
    reduced = range(len(shape)) if not axes else [a % len(shape) for a in axes]
    return all(shape[a] != 0 for a in reduced)


def valid_cases(ops, cases):
    """(op, shape, axes) for every op and (shape, axes) case that is valid (see valid())."""
    return [(op, shape, axes) for op in ops for shape, axes in cases if valid(op, shape, axes)]


@pytest.mark.parametrize("op,shape,axes", valid_cases(OPS, CASES))
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dynamic", [False, True])
def test_reference_matches_torch(op, shape, axes, keepdim, dynamic):
    x = sample(op, shape)
    got = run_layer(add_reduce(op, axes, keepdim), [x], "cpu", dynamic=dynamic)
    want = torch_reduce(op, x.double(), axes, keepdim).float()
    torch.testing.assert_close(got, want, equal_nan=True, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("correction", [0, 1, 2])
@pytest.mark.parametrize("shape,axes", [((5, 127), [1]), ((2, 1), [1]), ((4, 6, 3), [0, 2])])
def test_reference_var_correction(correction, shape, axes):
    x = sample("var", shape)
    got = run_layer(add_reduce("var", axes, False, correction=correction), [x], "cpu")
    want = torch_reduce("var", x.double(), axes, False, correction).float()
    torch.testing.assert_close(got, want, equal_nan=True, **TOLERANCE[torch.float32])


def int_sample(op, shape, dtype):
    if op == "prod":  # int32 products wrap (checked against torch's wrapped cast)
        return torch.tensor([-1, 1, 2])[torch.randint(0, 3, shape)].to(dtype)
    hi = 2**50 if dtype == torch.int64 else 2**20  # int64 sums past 2^53: exact, not via double
    return torch.randint(-hi, hi, shape, dtype=dtype)


INT_CASES = [
    ((3, 127), [-1]),
    ((2, 1000), [1]),
    ((2, 3, 5, 7), [0, 2]),
    ((4, 33, 40), [1]),
    ((3, 100, 40), [1]),
    ((3, 0, 4), [1]),
]
INT_OPS = ["sum", "max", "min", "prod"]


def torch_int_reduce(op, x, axes, keepdim):
    return torch_reduce(op, x.long(), axes, keepdim).to(x.dtype)  # int64 math, wrapped to x's dtype


@pytest.mark.parametrize("op,shape,axes", valid_cases(INT_OPS, INT_CASES))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("target,keepdim", per_device(cpu=[False, True], cuda=[False]))
def test_integer(op, dtype, shape, axes, target, keepdim):
    x = int_sample(op, shape, dtype)
    got = run_layer(add_reduce(op, axes, keepdim), [x], target, dynamic=True)
    assert got.dtype == dtype
    assert torch.equal(got, torch_int_reduce(op, x, axes, keepdim))


def test_reference_nan_propagates_through_max_min():
    x = torch.randn(4, 9)
    x[1, 3] = float("nan")
    for op in ("max", "min", "sum"):
        got = run_layer(add_reduce(op, [1], False), [x], "cpu")
        torch.testing.assert_close(got, torch_reduce(op, x, [1], False), equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("op,shape,axes", valid_cases(OPS, CASES))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("keepdim", [False, True])
def test_cuda_matches_torch(op, dtype, shape, axes, keepdim):
    x = sample(op, shape, dtype)
    got = run_layer(add_reduce(op, axes, keepdim), [x], "cuda", dynamic=len(shape) > 1)
    want = torch_reduce(op, x.double(), axes, keepdim).to(dtype)
    tol = dict(TOLERANCE[dtype])
    tol["atol"] += accum_atol(op, x, axes)
    torch.testing.assert_close(got.double(), want.double(), equal_nan=True, **tol)


# Many outputs over a contiguous kept innermost dim (the CUDA vector-columns path: a thread per 16
# bytes of outputs): a large batch's channels-last spatial mean, and a kept [4, 32768] over 9 rows.
VECTOR_CASES = [((64, 7, 7, 2048), [1, 2]), ((4, 9, 32768), [1])]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "op,shape,axes", valid_cases(["sum", "mean", "max", "min", "prod"], VECTOR_CASES)
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_vector_columns_match_torch(op, dtype, shape, axes):
    x = sample(op, shape, dtype)
    x.view(-1)[12345] = float("nan")  # one output NaN (max/min propagate it, as torch)
    got = run_layer(add_reduce(op, axes, True), [x], "cuda")
    want = torch_reduce(op, x.double(), axes, True).to(dtype)
    tol = dict(TOLERANCE[dtype])
    tol["atol"] += accum_atol(op, x.nan_to_num(), axes)
    torch.testing.assert_close(got.double(), want.double(), equal_nan=True, **tol)


@pytest.mark.gpu
def test_cuda_nan_and_var_correction():
    x = torch.randn(64, 300)
    x[5, 17] = float("nan")
    for op in ("max", "min"):
        got = run_layer(add_reduce(op, [1], False), [x], "cuda")
        torch.testing.assert_close(got, torch_reduce(op, x, [1], False), equal_nan=True)
    y = torch.randn(6, 1000)
    for correction in (0, 2):
        got = run_layer(add_reduce("var", [1], False, correction=correction), [y], "cuda")
        torch.testing.assert_close(
            got, y.double().var(1, correction=correction).float(), rtol=1e-5, atol=1e-5
        )


# arg_reduce

ARG_CASES = [
    ((4097,), 0),
    ((3, 127), -1),
    ((3, 127), 0),
    ((2, 1000), 1),
    ((5, 1), 1),
    ((2, 3, 5, 7), 1),
    ((2, 3, 5, 7), -2),
    ((4, 33, 300), 1),
    ((0, 6), 1),
    ((), 0),
]


def add_arg(op, axis, keepdim):
    return lambda net, x: net.add_arg_reduce(x, op, axis, keepdim)


def torch_arg(op, x, axis, keepdim):
    return (torch.argmax if op == "argmax" else torch.argmin)(x, axis, keepdim=keepdim)


def arg_sample(shape, dtype):
    """Few distinct values, so ties are common (the first index must win)."""
    x = torch.randint(-3, 4, shape)
    return x.to(dtype)


@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
@pytest.mark.parametrize("shape,axis", ARG_CASES)
@pytest.mark.parametrize("keepdim", [False, True])
def test_reference_arg_matches_torch(op, dtype, shape, axis, keepdim):
    x = arg_sample(shape, dtype)
    got = run_layer(add_arg(op, axis, keepdim), [x], "cpu", dynamic=len(shape) > 1)
    assert got.dtype == torch.int64
    assert torch.equal(got, torch_arg(op, x, axis, keepdim))


@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_reference_arg_nan_is_extreme(op):
    x = torch.randn(6, 50)
    x[2, 7] = x[2, 30] = x[4, 0] = float("nan")  # first NaN of each row wins
    got = run_layer(add_arg(op, -1, False), [x], "cpu")
    assert torch.equal(got, torch_arg(op, x, -1, False))


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, torch.int32, torch.int64])
@pytest.mark.parametrize("shape,axis", ARG_CASES)
@pytest.mark.parametrize("keepdim", [False, True])
def test_cuda_arg_matches_torch(op, dtype, shape, axis, keepdim):
    x = arg_sample(shape, dtype)
    got = run_layer(add_arg(op, axis, keepdim), [x], "cuda", dynamic=len(shape) > 1)
    assert torch.equal(got, torch_arg(op, x, axis, keepdim))


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("shape,axis", [((6, 4097), -1), ((8, 50, 300), 1)])
def test_cuda_arg_nan_and_random(op, shape, axis):
    x = torch.randn(shape)
    x.view(-1)[::997] = float("nan")
    got = run_layer(add_arg(op, axis, False), [x], "cuda")
    assert torch.equal(got, torch_arg(op, x, axis, False))


# errors


def net_with(shape, dtype="float32"):
    net = kiln.Network()
    return net, net.add_input("x", dtype, shape)


@pytest.mark.parametrize(
    "attrs,match",
    [
        ({"op": "median", "axes": [0]}, "unknown reduce op 'median'"),
        ({"op": "sum", "axes": [2]}, "axis 2 is out of range for rank 2"),
        ({"op": "sum", "axes": [-3]}, "axis -3 is out of range"),
        ({"op": "sum", "axes": [1, -1]}, "listed twice"),
        ({"op": "sum", "axes": [0], "correction": 1}, "correction applies to var only"),
        ({"op": "var", "axes": [0], "correction": -1}, "correction must be >= 0"),
        ({"op": "sum", "keepdim": 2}, "keepdim must be 0 or 1"),
    ],
)
def test_reduce_errors_name_the_layer(attrs, match):
    net, x = net_with((2, 3))
    with pytest.raises(kiln.KilnError, match=r"layer 'r1' \(reduce\).*" + re.escape(match)):
        net.add_layer("reduce", [x], attrs, name="r1")


def test_reduce_dtype_errors():
    net, x = net_with((2, 3), "int32")
    with pytest.raises(kiln.KilnError, match=r"'r1'.*mean does not take int32"):
        net.add_reduce(x, "mean", [0], name="r1")
    net, b = net_with((2, 3), "bool")
    with pytest.raises(kiln.KilnError, match=r"'r2'.*sum does not take bool"):
        net.add_reduce(b, "sum", [0], name="r2")


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_over_empty_axis_is_refused(op):
    net, x = net_with((3, 0, 4))
    with pytest.raises(kiln.KilnError, match=rf"'r1'.*{op} over axis 1 of size 0"):
        net.add_reduce(x, op, [1], name="r1")
    # A dynamic dim that is 0 at run time: refused when the shapes are known.
    with pytest.raises(kiln.KilnError, match=rf"\({'reduce'}\).*{op} over axis 0 of size 0"):
        run_layer(add_reduce(op, [0], False), [torch.empty(0, 4)], "cpu", dynamic=True)


@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("dtype", ["int32", "int64", "float16"])
def test_max_over_empty_axis_is_refused_any_dtype_all_axes(op, dtype):
    net, x = net_with((3, 0, 4), dtype)
    with pytest.raises(kiln.KilnError, match=rf"'r1'.*{op} over axis 1 of size 0"):
        net.add_reduce(x, op, [1], name="r1")
    with pytest.raises(kiln.KilnError, match=rf"'r2'.*{op} over axis 1 of size 0"):
        net.add_reduce(x, op, [], name="r2")  # all axes


@pytest.mark.parametrize(
    "attrs,match",
    [
        ({"op": "argmid", "axis": 0}, "unknown arg_reduce op 'argmid'"),
        ({"op": "argmax"}, "missing attribute 'axis'"),
        ({"op": "argmax", "axis": 2}, "axis 2 is out of range for rank 2"),
        ({"op": "argmax", "axis": -3}, "axis -3 is out of range"),
    ],
)
def test_arg_reduce_errors_name_the_layer(attrs, match):
    net, x = net_with((2, 3))
    with pytest.raises(kiln.KilnError, match=r"layer 'a1' \(arg_reduce\).*" + re.escape(match)):
        net.add_layer("arg_reduce", [x], attrs, name="a1")


def test_argmax_over_empty_axis_is_refused():
    net, x = net_with((3, 0))
    with pytest.raises(kiln.KilnError, match=r"'a1'.*argmax over axis 1 of size 0"):
        net.add_arg_reduce(x, "argmax", 1, name="a1")


def test_documented_op_values_are_accepted():
    rows = documented_ops()
    net, x = net_with((2, 3))
    for op_name, helper in (("reduce", net.add_reduce), ("arg_reduce", net.add_arg_reduce)):
        values = re.findall(r"[a-z_]+", rows[op_name][1].split(";")[0].split(":", 1)[1])
        assert values, op_name
        for value in values:
            helper(x, value, [0]) if op_name == "reduce" else helper(x, value, 0)
