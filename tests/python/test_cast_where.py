"""cast and where layers: reference backend vs eager torch (CPU), CUDA vs torch (GPU).

Both ops are exact (a conversion with one defined rounding, or a selection), so results are
compared bit for bit.
"""

import numpy as np
import pytest
import torch
from layer_util import run_layer

import kiln

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.int8,
]
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
NAME = {t: str(t).removeprefix("torch.") for t in DTYPES}


def cast_source(src, dst):
    """Values of dtype `src` whose cast to `dst` torch defines, with the edge cases of the pair."""
    if src == torch.bool:
        return torch.rand(3, 7) > 0.5
    if src in FLOATS:
        ties = [
            0.5, 1.5, -2.5, 2.5, -0.7, 0.0, -0.0, 1.9999,
            1 + 2**-11, 1 + 3 * 2**-11,  # float16 ties: round to even (1.0, 1 + 2**-9)
            1 + 2**-8, 1 + 3 * 2**-8,  # bfloat16 ties
            -(1 + 2**-9 + 2**-10),
        ]  # fmt: skip
        x = torch.cat([torch.tensor(ties), torch.randn(40) * 30])
        if dst in FLOATS:
            x = torch.cat(
                [x, torch.tensor([65519.0, 65520.0, 1e5, -3e38, float("inf"), float("nan")])]
            )
        elif dst == torch.bool:
            x = torch.cat([x, torch.tensor([float("nan"), float("-inf"), 1e-30])])
        if dst == torch.int8:
            x = x.clamp(-100, 100)  # out-of-range float -> int is undefined in torch
        return x.to(src)  # the source dtype's own rounding happens here, in torch
    info = torch.iinfo(src)
    x = torch.randint(-100, 100, (30,), dtype=src)
    if src == torch.int64:
        big = [2**53 + 1, 2**40 + 3, -(2**62) - 7, 2**31 + 5, 2**24 + 2**16 + 1, 123456789]
        x = torch.cat([x, torch.tensor(big, dtype=src)])
    elif src == torch.int32:
        big = [info.max, info.min, 2**24 + 2**16 + 1, 2**24 + 1, 70000, -65521]
        x = torch.cat([x, torch.tensor(big, dtype=src)])
    else:
        x = torch.cat([x, torch.tensor([info.max, info.min, 0], dtype=src)])
    return x


def run_cast(x, dst, target, dynamic=False):
    """x.to(dst) through a cast layer. numpy has no bfloat16, so on the host path a bfloat16
    source is fed as float32 and cast to bfloat16 first, and a bfloat16 result is cast back to
    float32 (both extra casts are exact)."""
    bf16_in, bf16_out = x.dtype == torch.bfloat16, dst == torch.bfloat16

    def build(net, t):
        if bf16_in:
            t = net.add_cast(t, "bfloat16")
        y = net.add_cast(t, NAME[dst])
        return net.add_cast(y, "float32") if bf16_out else y

    got = run_layer(build, [x.float() if bf16_in else x], target, dynamic=dynamic)
    return got.to(torch.bfloat16) if bf16_out else got


@pytest.mark.parametrize("src", DTYPES, ids=NAME.get)
@pytest.mark.parametrize("dst", DTYPES, ids=NAME.get)
def test_cast_reference_matches_torch(src, dst):
    x = cast_source(src, dst)
    torch.testing.assert_close(run_cast(x, dst, "cpu"), x.to(dst), rtol=0, atol=0, equal_nan=True)


def test_cast_dynamic_and_empty():
    x = torch.randn(5, 3, 2) * 10
    torch.testing.assert_close(run_cast(x, torch.int32, "cpu", dynamic=True), x.to(torch.int32))
    assert run_cast(torch.randn(0, 4), torch.float16, "cpu").shape == (0, 4)


def test_cast_propagates_tracked_values():
    # fill takes its shape only from a tensor with tracked values: the cast must keep them.
    net = kiln.Network()
    shape = net.add_constant(np.array([2, 3, 4], dtype=np.int64))
    net.mark_output(net.add_fill(net.add_cast(shape, "int32"), 1.0), "out")
    assert net.outputs[0].shape == (2, 3, 4)
    # int64 -> int32 wraps in tracked values as in the data: 2**32 + 5 -> 5
    net = kiln.Network()
    shape = net.add_constant(np.array([2**32 + 5, 2], dtype=np.int64))
    assert net.add_fill(net.add_cast(shape, "int32"), 1.0).output.shape == (5, 2)


def test_cast_refuses_unknown_dtype():
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3))
    with pytest.raises(kiln.KilnError, match=r"layer 'c' \(cast\).*unknown dtype 'float64'"):
        net.add_layer("cast", [x], {"to": "float64"}, name="c")
    with pytest.raises(kiln.KilnError, match=r"layer 'c2' \(cast\).*missing attribute 'to'"):
        net.add_layer("cast", [x], {}, name="c2")


@pytest.mark.gpu
@pytest.mark.parametrize("src", DTYPES, ids=NAME.get)
@pytest.mark.parametrize("dst", DTYPES, ids=NAME.get)
def test_cast_cuda_matches_torch(src, dst):
    x = cast_source(src, dst)
    got = run_layer(lambda net, t: net.add_cast(t, NAME[dst]), [x], "cuda", dynamic=True)
    torch.testing.assert_close(got, x.to(dst), rtol=0, atol=0, equal_nan=True)


# ---- where ---------------------------------------------------------------------------------------

WHERE_SHAPES = [  # (cond, a, b): each operand broadcast in turn, rank-0 and empty included
    ((2, 3, 4), (2, 3, 4), (2, 3, 4)),
    ((3, 1), (1, 4), (3, 4)),
    ((4, 5), (5,), (4, 1)),
    ((2, 1, 5), (1, 3, 1), (2, 3, 5)),
    ((5,), (3, 1), (1,)),
    ((), (2, 3), (3,)),
    ((3, 7), (), ()),
    ((0, 3), (1, 3), (3,)),
]


def values(dtype, shape):
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype in FLOATS:
        return (torch.randn(shape) * 5).to(dtype)
    if dtype == torch.int64:  # beyond 2^53: a path through double would lose the low bits
        return torch.randint(-(2**62), 2**62, shape, dtype=dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, dtype=dtype)


def cond_dim0_can_vary(shapes):
    """True when dim 0 of cond may be dynamic (run_layer's profile goes up to twice its size):
    a and b must broadcast along it (size 1 there, or too low a rank to reach it)."""
    cond = shapes[0]
    if not cond or cond[0] == 0:
        return False
    return all(len(s) < len(cond) or s[len(s) - len(cond)] == 1 for s in shapes[1:])


def where_layer(net, c, a, b):
    return net.add_where(c, a, b)


def run_where(c, a, b, target, dynamic=False):
    """torch.where through a where layer; bfloat16 operands travel as float32 on the host path
    (see run_cast)."""
    if a.dtype != torch.bfloat16:
        return run_layer(where_layer, [c, a, b], target, dynamic=dynamic)

    def build(net, c, a, b):
        y = net.add_where(c, net.add_cast(a, "bfloat16"), net.add_cast(b, "bfloat16"))
        return net.add_cast(y, "float32")

    return run_layer(build, [c, a.float(), b.float()], target, dynamic=dynamic).to(torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=NAME.get)
@pytest.mark.parametrize("shapes", WHERE_SHAPES, ids=str)
def test_where_reference_matches_torch(dtype, shapes):
    c = torch.rand(shapes[0]) > 0.5
    a, b = values(dtype, shapes[1]), values(dtype, shapes[2])
    torch.testing.assert_close(run_where(c, a, b, "cpu"), torch.where(c, a, b), rtol=0, atol=0)


@pytest.mark.parametrize(
    "shapes", [((6, 4), (1, 4), (4,)), ((3, 1, 2), (1, 5, 2), (5, 1))], ids=str
)
def test_where_dynamic(shapes):
    c = torch.rand(shapes[0]) > 0.5
    a, b = values(torch.float32, shapes[1]), values(torch.float32, shapes[2])
    got = run_layer(where_layer, [c, a, b], "cpu", dynamic=True)
    torch.testing.assert_close(got, torch.where(c, a, b), rtol=0, atol=0)


def test_where_refuses_bad_operands():
    net = kiln.Network()
    c = net.add_input("c", "bool", (2, 3))
    f = net.add_input("f", "float32", (2, 3))
    h = net.add_input("h", "float16", (2, 3))
    g = net.add_input("g", "float32", (4, 3))
    with pytest.raises(kiln.KilnError, match=r"layer 'w1' \(where\).*cond must be bool"):
        net.add_where(f, f, f, name="w1")
    with pytest.raises(kiln.KilnError, match=r"layer 'w2' \(where\).*dtypes differ"):
        net.add_where(c, f, h, name="w2")
    with pytest.raises(kiln.KilnError, match=r"layer 'w3' \(where\).*do not broadcast"):
        net.add_where(c, f, g, name="w3")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=NAME.get)
@pytest.mark.parametrize("shapes", WHERE_SHAPES, ids=str)
def test_where_cuda_matches_torch(dtype, shapes):
    c = torch.rand(shapes[0]) > 0.5
    a, b = values(dtype, shapes[1]), values(dtype, shapes[2])
    got = run_layer(where_layer, [c, a, b], "cuda", dynamic=cond_dim0_can_vary(shapes))
    torch.testing.assert_close(got, torch.where(c, a, b), rtol=0, atol=0)
