"""unary layer: reference backend vs eager torch (CPU), CUDA vs torch in float64 (GPU)."""

import pytest
import torch
from layer_util import TOLERANCE, run_layer

POSITIVE = {"log", "sqrt", "rsqrt", "log2", "log10"}  # domains; reciprocal avoids 0 below
UNIT = {"asin", "acos", "atanh"}  # (-1, 1)
CASES = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "abs": torch.abs,
    "neg": torch.neg,
    "erf": torch.erf,
    "sin": torch.sin,
    "cos": torch.cos,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,
    "reciprocal": torch.reciprocal,
    "sign": torch.sign,
    "tan": torch.tan,
    "asin": torch.asin,
    "acos": torch.acos,
    "atan": torch.atan,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "asinh": torch.asinh,
    "acosh": torch.acosh,
    "atanh": torch.atanh,
    "expm1": torch.expm1,
    "log1p": torch.log1p,
    "log2": torch.log2,
    "log10": torch.log10,
}
SHAPES = [(13,), (3, 127), (2, 3, 5, 7), (0,)]


def sample(op, shape, dtype=torch.float32):
    x = torch.randn(shape) * 3
    if op in POSITIVE:
        x = x.abs() + 0.1
    if op in UNIT:
        x = torch.tanh(x) * 0.95
    if op == "acosh":
        x = x.abs() + 1
    if op == "log1p":
        x = x.abs() - 0.5  # > -1
    if op == "tan":
        x = x.clamp(-1.4, 1.4)  # away from the poles
    if op in ("sinh", "cosh", "expm1"):
        x = x.clamp(-8, 8)  # finite in float16
    if op == "reciprocal":
        x = torch.where(x.abs() < 0.1, torch.full_like(x, 0.5), x)
    if op == "round":
        x = torch.cat([x.flatten(), torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5])])[
            : x.numel()
        ].reshape(shape)
    return x.to(dtype)


def add(op):
    return lambda net, x: net.add_layer("unary", [x], {"op": op})


@pytest.mark.parametrize("op", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_torch(op, shape):
    x = sample(op, shape)
    got = run_layer(add(op), [x], "cpu", dynamic=len(shape) > 1)
    torch.testing.assert_close(got, CASES[op](x), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("op", ["abs", "neg", "sign"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_reference_integer_ops(op, dtype):
    x = torch.randint(-50, 50, (4, 9), dtype=dtype)
    torch.testing.assert_close(run_layer(add(op), [x], "cpu"), CASES[op](x))


def test_reference_not():
    x = torch.rand(5, 7) > 0.5
    torch.testing.assert_close(run_layer(add("not"), [x], "cpu"), ~x)


def test_bad_dtype_is_refused():
    import kiln

    net = kiln.Network()
    x = net.add_input("x", "int32", (3,))
    with pytest.raises(kiln.KilnError, match="exp takes floating input"):
        net.add_layer("unary", [x], {"op": "exp"})


@pytest.mark.gpu
@pytest.mark.parametrize("op", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_torch(op, dtype, shape):
    x = sample(op, shape, dtype)
    got = run_layer(add(op), [x], "cuda", dynamic=len(shape) > 1)
    want = CASES[op](x.double()).to(dtype)
    torch.testing.assert_close(got.double(), want.double(), **TOLERANCE[dtype])


INTEGER_CASES = [
    (op, dtype) for op in ("abs", "neg", "sign") for dtype in (torch.int32, torch.int64)
]


@pytest.mark.gpu
@pytest.mark.parametrize("op, dtype", [*INTEGER_CASES, ("not", torch.bool)])
def test_cuda_integer_and_bool_ops(op, dtype):
    x = (
        torch.rand(6, 11) > 0.5
        if dtype == torch.bool
        else torch.randint(-50, 50, (6, 11), dtype=dtype)
    )
    want = ~x if op == "not" else CASES[op](x)
    torch.testing.assert_close(run_layer(add(op), [x], "cuda"), want)
