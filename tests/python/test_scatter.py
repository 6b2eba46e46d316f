"""scatter_elements layer: every reduction, include_self, updates larger than indices, dynamic
shapes and bad input; reference backend vs eager torch (CPU), CUDA vs torch (GPU)."""

import pytest
import torch
from layer_util import DEVICES, TOLERANCE, per_device, run_layer

import kiln

TORCH_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def scatter(axis, reduction="none", include_self=1):
    attrs = {"axis": axis, "reduction": reduction, "include_self": include_self}
    return lambda net, x, i, u: net.add_layer("scatter_elements", [x, i, u], attrs)


def want(x, axis, i, u, reduction, include_self):
    u = u[tuple(slice(0, n) for n in i.shape)]  # torch reads the region index covers
    if reduction == "none":
        return x.scatter(axis, i, u)
    return x.scatter_reduce(axis, i, u, TORCH_REDUCE[reduction], include_self=bool(include_self))


def distinct_rows(n, shape, axis):
    """Indices that never repeat a position along `axis` (writes cannot race)."""
    full = list(shape)
    full[axis] = n
    return torch.argsort(torch.rand(full), dim=axis).narrow(axis, 0, shape[axis])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int32, torch.bool])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_write(device, dtype, index_dtype):
    x = (torch.randn(4, 6) * 4).to(dtype)
    i = distinct_rows(6, (3, 4), 1).to(index_dtype)
    u = (torch.randn(4, 5) * 4).to(dtype)  # larger than i: only u[:3, :4] is read
    got = run_layer(scatter(1), [x, i, u], device)
    assert torch.equal(got, want(x, 1, i.long(), u, "none", 1))


REDUCTION_DTYPES = [torch.float32, torch.float16, torch.int64]  # host bindings: no bfloat16 on CPU


@pytest.mark.parametrize(
    "device,dtype", per_device(cpu=REDUCTION_DTYPES, cuda=[*REDUCTION_DTYPES, torch.bfloat16])
)
@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
@pytest.mark.parametrize("include_self", [1, 0])
def test_reductions(device, dtype, reduction, include_self):
    x = (torch.randn(5, 3) * 3).to(dtype)
    i = torch.randint(0, 5, (8, 3))  # repeated positions fold together
    u = (
        (torch.rand(8, 3) + 0.5).to(dtype)
        if reduction == "mul"
        else (torch.randn(8, 3) * 3).to(dtype)
    )
    got = run_layer(scatter(0, reduction, include_self), [x, i, u], device)
    expected = want(x.double(), 0, i, u.double(), reduction, include_self).to(dtype)
    if dtype.is_floating_point:
        tol = TOLERANCE[dtype] if dtype != torch.float16 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(got.double(), expected.double(), **tol)
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates_through_max(device):
    x = torch.tensor([[1.0, 2.0, 3.0]])
    i = torch.tensor([[0, 1, 1]])
    u = torch.tensor([[float("nan"), 5.0, 0.0]])
    got = run_layer(scatter(1, "max"), [x, i, u], device)
    assert torch.equal(got.isnan(), torch.tensor([[True, False, False]]))
    assert got[0, 1] == 5.0 and got[0, 2] == 3.0


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_shapes(device):
    x = torch.randn(4, 7, 3)
    i = torch.randint(0, 7, (4, 5, 3))
    u = torch.randn(4, 5, 3)
    got = run_layer(scatter(-2, "add"), [x, i, u], device, dynamic=(0, 1, 2))
    torch.testing.assert_close(got, want(x, 1, i, u, "add", 1), **TOLERANCE[torch.float32])


def test_out_of_range_index_is_an_error_on_the_reference_backend():
    x, u = torch.zeros(2, 3), torch.ones(2, 3)
    for bad in (3, -1):
        i = torch.tensor([[0, 1, 2], [bad, 0, 0]])
        with pytest.raises(
            kiln.KilnError, match=f"index {bad} is out of range for an axis of size 3"
        ):
            run_layer(scatter(1), [x, i, u], "cpu")


@pytest.mark.gpu
def test_out_of_range_index_is_skipped_on_cuda():
    x, u = torch.zeros(2, 3), torch.ones(2, 3)
    i = torch.tensor([[0, 1, 2], [7, -1, 0]])
    got = run_layer(scatter(1), [x, i, u], "cuda")
    assert torch.equal(got, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))


def test_bad_input_is_refused():
    net = kiln.Network()
    x = net.add_input("x", "float32", (4, 3))
    i = net.add_input("i", "int64", (2, 3))
    u = net.add_input("u", "float32", (2, 3))
    with pytest.raises(kiln.KilnError, match="updates dtype int64 differs from data's float32"):
        net.add_layer("scatter_elements", [x, i, i], {})
    with pytest.raises(kiln.KilnError, match="indices must be int32 or int64"):
        net.add_layer("scatter_elements", [x, u, u], {})
    with pytest.raises(kiln.KilnError, match="unknown reduction 'mean'"):
        net.add_layer("scatter_elements", [x, i, u], {"reduction": "mean"})
    small = net.add_input("small", "float32", (2, 2))
    with pytest.raises(kiln.KilnError, match="smaller than indices"):
        net.add_layer("scatter_elements", [x, i, small], {})
    wide = net.add_input("wide", "int64", (2, 4))
    with pytest.raises(kiln.KilnError, match="larger than data"):
        net.add_layer(
            "scatter_elements", [x, wide, net.add_input("w", "float32", (2, 4))], {"axis": 0}
        )
    b = net.add_input("b", "bool", (4, 3))
    with pytest.raises(kiln.KilnError, match="reduction add takes floating, int32 or int64 data"):
        net.add_layer(
            "scatter_elements", [b, i, net.add_input("bu", "bool", (2, 3))], {"reduction": "add"}
        )
