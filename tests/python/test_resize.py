"""resize layer: reference backend vs torch.nn.functional.interpolate (CPU), CUDA vs torch (GPU).

Nearest modes pick pixels, so they must match exactly. Linear modes use torch's float32 source
coordinates and weights; the reference sums in double and CUDA in float, torch in float, so
float32 results agree to a few ulp (TOLERANCE[float32]). float16/bfloat16 (CUDA only) are
compared with torch on the same input in float32, rounded once: TOLERANCE of that dtype.
"""

import pytest
import torch
import torch.nn.functional as F
from layer_util import DEVICES, TOLERANCE, build_engine, device_of, run_layer

import kiln

TORCH_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}
CASES = [  # input shape, sizes, scales
    ((2, 3, 7), (13,), None),
    ((2, 3, 7), (4,), None),
    ((2, 3, 7), (7,), None),
    ((1, 2, 1), (5,), None),  # a single input pixel
    ((2, 3, 7), None, (2.0,)),
    ((2, 3, 7), None, (0.6,)),
    ((2, 3, 5), None, (2.1,)),  # out = 2 * in, but the mapping uses 1 / 2.1
    ((2, 3, 7), None, (1.7,)),
    ((2, 3, 5, 7), (9, 11), None),
    ((2, 3, 5, 7), (3, 4), None),
    ((1, 2, 5, 7), (5, 14), None),  # one dim unchanged
    ((2, 3, 5, 7), None, (2.0, 2.0)),
    ((2, 3, 5, 7), None, (1.5, 0.7)),
    ((1, 4, 6, 9), None, (0.45, 2.3)),
    ((1, 3, 10, 10), None, (1 / 3, 3.0)),
    ((1, 2, 3, 4, 5), (5, 3, 7), None),
    ((1, 2, 3, 4, 5), None, (1.5, 0.8, 2.0)),
]
MODES = [("nearest", False), ("nearest_exact", False), ("linear", False), ("linear", True)]


def torch_resize(x, mode, align, sizes, scales):
    spatial = x.dim() - 2
    kwargs = (
        {"size": sizes}
        if sizes is not None
        else {"scale_factor": scales, "recompute_scale_factor": False}
    )
    if mode == "linear":
        return F.interpolate(x, mode=TORCH_LINEAR[spatial], align_corners=align, **kwargs)
    return F.interpolate(x, mode="nearest-exact" if mode == "nearest_exact" else mode, **kwargs)


def resize_layer(mode, align, sizes, scales):
    return lambda net, x: net.add_resize(x, mode, sizes=sizes, scales=scales, align_corners=align)


def check(got, want, mode, dtype):
    if mode == "linear":
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "mode,align", MODES, ids=["nearest", "nearest_exact", "linear", "linear_ac"]
)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_matches_torch(case, mode, align):
    shape, sizes, scales = case
    x = torch.randn(shape)
    got = run_layer(resize_layer(mode, align, sizes, scales), [x], "cpu")
    check(got, torch_resize(x, mode, align, sizes, scales), mode, torch.float32)


@pytest.mark.parametrize(
    "mode,align", MODES, ids=["nearest", "nearest_exact", "linear", "linear_ac"]
)
def test_reference_dynamic_batch(mode, align):
    x = torch.randn(3, 2, 5, 6)
    got = run_layer(resize_layer(mode, align, None, (1.5, 0.7)), [x], "cpu", dynamic=True)
    check(got, torch_resize(x, mode, align, None, (1.5, 0.7)), mode, torch.float32)


def build_dynamic_spatial(target, scales, mode):
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 2, -1, -1))
    layer = net.add_resize(x, mode, scales=scales)
    assert layer.output.shape == (-1, 2, -1, -1)
    net.mark_output(layer, "out")
    profile = {"x": ([1, 2, 2, 2], [2, 2, 6, 6], [3, 2, 12, 12])}
    return build_engine(net, target, profile=profile).create_execution_context()


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_dynamic_spatial_dims_with_scales(target, mode):
    ctx = build_dynamic_spatial(target, [1.5, 0.7], mode)
    for shape in [(2, 2, 5, 7), (1, 2, 12, 3), (3, 2, 4, 11)]:  # one engine, several shapes
        x = torch.randn(shape)
        got = ctx.execute({"x": x.to(device_of(target))})["out"]
        if target == "cuda":
            torch.cuda.synchronize()
        check(got.cpu(), torch_resize(x, mode, False, None, (1.5, 0.7)), mode, torch.float32)


def test_empty_batch():
    x = torch.randn(0, 3, 4, 4)
    assert run_layer(resize_layer("linear", False, (7, 3), None), [x], "cpu").shape == (
        0,
        3,
        7,
        3,
    )


def test_refuses_bad_attributes():
    net = kiln.Network()
    x = net.add_input("x", "float32", (1, 3, 4, 4))
    with pytest.raises(kiln.KilnError, match=r"layer 'r1' \(resize\).*exactly one of `sizes`"):
        net.add_resize(x, "linear", name="r1")
    with pytest.raises(kiln.KilnError, match=r"layer 'r2' \(resize\).*not both"):
        net.add_resize(x, "linear", sizes=(2, 2), scales=(2.0, 2.0), name="r2")
    with pytest.raises(kiln.KilnError, match=r"layer 'r3' \(resize\).*2 spatial dims"):
        net.add_resize(x, "nearest", sizes=(8,), name="r3")
    with pytest.raises(
        kiln.KilnError, match=r"layer 'r4' \(resize\).*align_corners applies to linear"
    ):
        net.add_resize(x, "nearest", sizes=(8, 8), align_corners=True, name="r4")
    with pytest.raises(kiln.KilnError, match=r"layer 'r5' \(resize\).*unknown mode 'cubic'"):
        net.add_resize(x, "cubic", sizes=(8, 8), name="r5")
    with pytest.raises(kiln.KilnError, match=r"layer 'r6' \(resize\).*output size of 0"):
        net.add_resize(x, "nearest", scales=(0.1, 1.0), name="r6")
    with pytest.raises(kiln.KilnError, match=r"layer 'r7' \(resize\).*scales must be positive"):
        net.add_resize(x, "nearest", scales=(-2.0, 1.0), name="r7")
    flat = net.add_input("flat", "float32", (4, 4))
    with pytest.raises(kiln.KilnError, match=r"layer 'r8' \(resize\).*\[N, C, spatial"):
        net.add_resize(flat, "nearest", sizes=(8,), name="r8")
    ints = net.add_input("ints", "int32", (1, 1, 4))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'r9' \(resize\).*float32, float16 or bfloat16"
    ):
        net.add_resize(ints, "nearest", sizes=(8,), name="r9")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "mode,align", MODES, ids=["nearest", "nearest_exact", "linear", "linear_ac"]
)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_matches_torch(case, mode, align, dtype):
    shape, sizes, scales = case
    x = torch.randn(shape).to(dtype)
    got = run_layer(resize_layer(mode, align, sizes, scales), [x], "cuda", dynamic=True)
    want = torch_resize(x.float(), mode, align, sizes, scales).to(dtype)
    check(got, want, mode, dtype)
