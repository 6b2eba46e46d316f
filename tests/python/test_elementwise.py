"""elementwise layer: arithmetic, comparison and logical ops with broadcasting; reference backend
vs eager torch (CPU), CUDA vs torch (GPU)."""

import pytest
import torch
from layer_util import DEVICES, TOLERANCE, per_device, run_layer

import kiln

ARITH = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "floor_div": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "pow": torch.pow,
    "max": torch.maximum,
    "min": torch.minimum,
}
FLOATING = {"atan2": torch.atan2}  # floating operands only
COMPARE = {
    "eq": torch.eq,
    "ne": torch.ne,
    "lt": torch.lt,
    "le": torch.le,
    "gt": torch.gt,
    "ge": torch.ge,
}
LOGICAL = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}
SHAPES = [
    ((3, 1, 5), (4, 5)),
    ((2, 3, 4), (2, 3, 4)),
    ((1,), (7, 3)),
    ((5, 0, 3), (1, 3)),
    ((2, 3, 1, 1), (1, 1, 4, 5)),
    ((4, 6, 7, 10), (4, 1, 1, 10)),  # channels-last scale: the CUDA kernel merges dims 1-2
    ((2, 5, 3, 16), (2, 1, 1, 16)),  # ... and reads 16-byte vectors (C a multiple of 8)
    ((3, 1, 1, 2, 5), (1, 4, 6, 2, 1)),
]


def operands(op, sa, sb, dtype=torch.float32):
    if dtype in (torch.int32, torch.int64) or op in COMPARE:
        a, b = torch.randint(-6, 7, sa), torch.randint(-6, 7, sb)  # repeats, so eq/le see ties
    else:
        a, b = torch.randn(sa) * 3, torch.randn(sb) * 3
    if op in ("div", "floor_div"):
        b = torch.where(b.abs() < 0.5, torch.full_like(b, 2), b)
    if op == "pow":
        a, b = a.abs() + 0.1, b.clamp(-2, 2)
    return a.to(dtype), b.to(dtype)


def add(op):
    return lambda net, a, b: net.add_elementwise(a, b, op)


def torch_ref(op, a, b):
    if op == "div" and not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return {**ARITH, **FLOATING, **COMPARE, **LOGICAL}[op](a, b)


@pytest.mark.parametrize("op", [*ARITH, *FLOATING, *COMPARE])
@pytest.mark.parametrize("shapes", SHAPES)
def test_reference_matches_torch(op, shapes):
    a, b = operands(op, *shapes)
    got = run_layer(add(op), [a, b], "cpu")
    torch.testing.assert_close(got, torch_ref(op, a, b), **TOLERANCE[torch.float32])


INT_SHAPES = {"cpu": ((4, 6), (6,)), "cuda": ((4, 1, 6), (3, 6))}  # operand shapes per backend


@pytest.mark.parametrize("target,op", per_device(cpu=[*ARITH, "lt"], cuda=[*ARITH, "lt", "eq"]))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_integer_ops(target, op, dtype):
    a, b = operands(op, *INT_SHAPES[target], dtype)
    if op == "pow":  # exact powers up to 6^4; torch refuses negative integer exponents
        a, b = a.abs(), b.abs().clamp(max=4)
    torch.testing.assert_close(run_layer(add(op), [a, b], target), torch_ref(op, a, b))


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("op", LOGICAL)
def test_logical_ops(target, op):
    a, b = torch.rand(3, 1, 4) > 0.5, torch.rand(5, 4) > 0.5
    torch.testing.assert_close(run_layer(add(op), [a, b], target), LOGICAL[op](a, b))


def test_reference_dynamic_batch():
    a, b = operands("add", (6, 5), (5,))
    got = run_layer(add("mul"), [a, b], "cpu", dynamic=True)
    torch.testing.assert_close(got, a * b, **TOLERANCE[torch.float32])


def test_atan2_refuses_integer_operands():
    net = kiln.Network()
    a = net.add_input("a", "int32", (3,))
    with pytest.raises(kiln.KilnError, match="atan2 takes floating operands"):
        net.add_elementwise(a, a, "atan2")


def test_mismatched_operands_are_refused():
    net = kiln.Network()
    a = net.add_input("a", "float32", (3, 4))
    b = net.add_input("b", "float32", (5, 4))
    c = net.add_input("c", "bool", (3, 4))
    with pytest.raises(kiln.KilnError, match="do not broadcast"):
        net.add_elementwise(a, b, "add")
    with pytest.raises(kiln.KilnError, match="and takes bool operands"):
        net.add_elementwise(a, a, "and")
    with pytest.raises(kiln.KilnError, match="does not take bool operands"):
        net.add_elementwise(c, c, "add")


@pytest.mark.gpu
@pytest.mark.parametrize("op", [*ARITH, *FLOATING, *COMPARE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shapes", SHAPES)
def test_cuda_matches_torch(op, dtype, shapes):
    a, b = operands(op, *shapes, dtype)
    got = run_layer(add(op), [a, b], "cuda")
    want = torch_ref(op, a.double(), b.double())
    if op in ARITH or op in FLOATING:
        want = want.to(dtype)
        torch.testing.assert_close(got.double(), want.double(), **TOLERANCE[dtype])
    else:
        torch.testing.assert_close(got, want)
