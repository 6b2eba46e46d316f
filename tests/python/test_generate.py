"""arange and fill layers: reference backend vs eager torch (CPU), CUDA vs torch (GPU).

A layer without inputs is folded into a constant at build time by the reference kernel, so each
case also runs with optimization_level=0, where the target backend's kernel runs at run time.
"""

import numpy as np
import pytest
import torch
from layer_util import TOLERANCE, per_device, run_network

import kiln


def run_generated(build, target, optimization_level=None):
    """build(net) -> Layer; returns the output of a network without inputs. numpy has no
    bfloat16, so a bfloat16 result is cast to float32 in the network (exact) and back here."""
    net = kiln.Network()
    out = build(net)
    bf16 = out.output.dtype == "bfloat16"
    net.mark_output(net.add_cast(out, "float32") if bf16 else out, "out")
    t = run_network(net, {}, target, level=optimization_level)["out"]
    return t.to(torch.bfloat16) if bf16 else t


TARGETS = [None, 0]  # default pipeline (folded), and no folding
# (device, level): the reference backend at both levels; CUDA at level 0, where its kernel runs.
DEVICE_LEVELS = per_device(cpu=TARGETS, cuda=[0])

ARANGE_CASES = [  # start, end, step, dtype
    (0, 10, 1, torch.int64),
    (2, 17, 3, torch.int32),
    (10, -3, -2, torch.int64),
    (-7, 8, 5, torch.int32),
    (3, 3, 1, torch.int64),  # empty
    (0, 2**40 + 5, 2**38, torch.int64),  # exact beyond int32
    (0, 1, 0.1, torch.float32),
    (-1.5, 2.3, 0.25, torch.float32),
    (5, 0.5, -0.7, torch.float32),
    (0.5, 100.5, 1.0, torch.float32),
    (0, 10, 0.3, torch.float16),
    (0, 4, 0.3, torch.bfloat16),
]
DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.int8,
]
NAME = {t: str(t).removeprefix("torch.") for t in DTYPES}


def check_arange(got, start, end, step, dtype):
    want = torch.arange(start, end, step, dtype=dtype)
    assert got.shape == want.shape  # the length rule ceil((end - start) / step) is exact
    if dtype in TOLERANCE:
        # Computed in double and rounded once (float32); torch CPU also accumulates in double
        # (in float for float16/bfloat16), so the two differ by at most one rounding step.
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("target,level", DEVICE_LEVELS)
@pytest.mark.parametrize("case", ARANGE_CASES, ids=str)
def test_arange_matches_torch(case, target, level):
    start, end, step, dtype = case
    got = run_generated(lambda net: net.add_arange(start, end, step, NAME[dtype]), target, level)
    check_arange(got, start, end, step, dtype)


@pytest.mark.parametrize("level", TARGETS)
@pytest.mark.parametrize("end_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("end_shape", [(), (1,)])
def test_arange_end_from_tensor(end_shape, end_dtype, level):
    def build(net):
        end = net.add_constant(np.full(end_shape, 9, dtype=end_dtype))
        return net.add_arange(1, end, 2)

    check_arange(run_generated(build, "cpu", level), 1, 9, 2, torch.int64)


def test_arange_values_are_tracked():
    # arange(1, 4) = [1, 2, 3] is known on the host, so it can serve as a shape.
    net = kiln.Network()
    assert net.add_fill(net.add_arange(1, 4), 2.0).output.shape == (1, 2, 3)


def test_arange_refuses_bad_attributes():
    net = kiln.Network()
    with pytest.raises(kiln.KilnError, match=r"layer 'a1' \(arange\).*step must not be 0"):
        net.add_arange(0, 5, 0, name="a1")
    with pytest.raises(kiln.KilnError, match=r"layer 'a2' \(arange\).*wrong side"):
        net.add_arange(5, 0, 1, name="a2")
    with pytest.raises(kiln.KilnError, match=r"layer 'a3' \(arange\).*must be an integer"):
        net.add_arange(0, 5, 0.5, dtype="int64", name="a3")
    with pytest.raises(kiln.KilnError, match=r"layer 'a4' \(arange\).*dtype must be"):
        net.add_arange(0, 5, 1, dtype="bool", name="a4")
    with pytest.raises(kiln.KilnError, match=r"layer 'a5' \(arange\).*missing attribute 'end'"):
        net.add_layer("arange", [], {"start": 0}, name="a5")
    x = net.add_input("n", "int64", ())
    with pytest.raises(kiln.KilnError, match=r"layer 'a6' \(arange\).*tracked values"):
        net.add_arange(0, x, name="a6")
    f = net.add_constant(np.array([3.0], dtype=np.float32))
    with pytest.raises(kiln.KilnError, match=r"layer 'a7' \(arange\).*int32 or int64"):
        net.add_arange(0, f, name="a7")
    e = net.add_constant(np.array([3], dtype=np.int64))
    with pytest.raises(kiln.KilnError, match=r"layer 'a8' \(arange\).*not both"):
        net.add_layer("arange", [e], {"end": 3}, name="a8")


FILL_CASES = [  # shape, value, dtype
    ((2, 3), 1.5, torch.float32),
    ((4,), 7, torch.int64),
    ((), -0.3, torch.float16),
    ((0, 5), 1.0, torch.float32),
    ((3, 1, 2), 1, torch.bool),
    ((5,), -5, torch.int8),
    ((2, 2), 3.14159, torch.bfloat16),
    ((3,), 2**53 + 1, torch.int64),  # exact: an int attribute never passes through double
    ((2,), -2.7, torch.int32),  # truncates toward zero, as torch.full
    ((1, 7), 0.0, torch.float32),
]


@pytest.mark.parametrize("target,level", DEVICE_LEVELS)
@pytest.mark.parametrize("case", FILL_CASES, ids=str)
def test_fill_matches_torch(case, target, level):
    shape, value, dtype = case
    got = run_generated(lambda net: net.add_fill(shape, value, NAME[dtype]), target, level)
    want = torch.full(shape, value, dtype=torch.float64 if dtype == torch.int32 else dtype)
    torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("level", TARGETS)
def test_fill_shape_from_tensor(level):
    def build(net):
        return net.add_fill(net.add_constant(np.array([2, 3, 4], dtype=np.int32)), 0.25)

    torch.testing.assert_close(run_generated(build, "cpu", level), torch.full((2, 3, 4), 0.25))


def test_fill_refuses_bad_shapes():
    net = kiln.Network()
    with pytest.raises(kiln.KilnError, match=r"layer 'f1' \(fill\).*missing attribute 'shape'"):
        net.add_layer("fill", [], {"value": 1.0}, name="f1")
    with pytest.raises(kiln.KilnError, match=r"layer 'f2' \(fill\).*negative dim"):
        net.add_fill([2, -1], name="f2")
    x = net.add_input("s", "int64", (2,))
    with pytest.raises(kiln.KilnError, match=r"layer 'f3' \(fill\).*tracked values"):
        net.add_fill(x, name="f3")
    m = net.add_constant(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(kiln.KilnError, match=r"layer 'f4' \(fill\).*1-D"):
        net.add_fill(m, name="f4")
    with pytest.raises(kiln.KilnError, match=r"layer 'f5' \(fill\).*unknown dtype"):
        net.add_fill([2], dtype="complex64", name="f5")


@pytest.mark.gpu
def test_generate_cuda_with_shape_inputs():
    def build(net):
        end = net.add_constant(np.array([9], dtype=np.int64))
        return net.add_arange(1, end, 2)

    check_arange(run_generated(build, "cuda", 0), 1, 9, 2, torch.int64)

    def full(net):
        return net.add_fill(net.add_constant(np.array([2, 3], dtype=np.int64)), 4.5, "float16")

    torch.testing.assert_close(
        run_generated(full, "cuda", 0), torch.full((2, 3), 4.5, dtype=torch.float16)
    )
