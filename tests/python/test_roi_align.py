"""roi_align layer and the torchvision.roi_align converter: reference backend (CPU) and CUDA (GPU)
against torchvision.ops.roi_align.

Boxes inside, across and outside the image, tiny (under a pixel) and inverted ones; fixed and
adaptive sampling (sampling_ratio <= 0: ceil(box side / bins) per box), aligned or not, a spatial
scale. float32 is compared with torchvision's float32 result to a few ulp of the largest term
(the reference sums in double, CUDA in float, torchvision in float32 in another order); float16
and bfloat16 with torchvision's float32 result on the same values rounded once to the dtype.
"""

import pytest
import torch
from layer_util import DEVICES, TOLERANCE, as_cpu_tensor, build_engine, device_of, run_layer

import kiln

torchvision = pytest.importorskip("torchvision")
roi_align = torchvision.ops.roi_align

FLOAT32_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def make_rois(k, n, h, w, g, spatial_scale=1.0):
    """[K, 5] rows (batch index, x1, y1, x2, y2) in the coordinates before spatial_scale: boxes
    spread over 1.4 times the image (some across or outside its edges), a few under a pixel, one
    inverted (x2 < x1)."""
    size = torch.tensor([w, h, w, h]) / spatial_scale
    corners = (torch.rand(k, 2, 2, generator=g) * 1.4 - 0.2) * size.reshape(1, 2, 2)
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    boxes[0, 2:] = boxes[0, :2] + 0.3  # under a pixel
    if k > 2:
        boxes[2] = boxes[2, [2, 3, 0, 1]]  # inverted
    batch = torch.randint(0, n, (k, 1), generator=g).float()
    return torch.cat([batch, boxes], 1)


def roi_align_layer(**attrs):
    return lambda net, x, rois: net.add_layer("roi_align", [x, rois], attrs)


def run(x, rois, target, dynamic=False, **attrs):
    """The layer on `target`. numpy has no bfloat16, so on the host path bfloat16 inputs are fed
    as float32 and cast in the network (exact), and the result is cast back (exact)."""
    if x.dtype != torch.bfloat16 or target != "cpu":
        return run_layer(roi_align_layer(**attrs), [x, rois], target, dynamic=dynamic)

    def build(net, a, b):
        y = roi_align_layer(**attrs)(net, net.add_cast(a, "bfloat16"), net.add_cast(b, "bfloat16"))
        return net.add_cast(y, "float32")

    return run_layer(build, [x.float(), rois.float()], target, dynamic=dynamic).to(torch.bfloat16)


def torchvision_roi_align(x, rois, pooled, scale, ratio, aligned):
    want = roi_align(x.float(), rois.float(), pooled, scale, ratio, aligned)
    return want.to(x.dtype)


CASES = [  # input shape, boxes, (pooled h, w), spatial_scale, sampling_ratio, aligned
    ((1, 3, 10, 12), 6, (2, 3), 1.0, 2, False),
    ((2, 4, 9, 7), 7, (3, 3), 0.5, -1, False),  # adaptive sampling, a spatial scale
    ((2, 5, 8, 8), 5, (2, 2), 0.25, 0, True),  # aligned, adaptive (0 means adaptive too)
    ((3, 2, 6, 11), 9, (4, 1), 1.0, 1, True),
    ((1, 1, 1, 1), 3, (2, 2), 1.0, 2, False),  # a single pixel
]


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("shape,boxes,pooled,scale,ratio,aligned", CASES, ids=str)
def test_float32_matches_torchvision(shape, boxes, pooled, scale, ratio, aligned, target):
    g = torch.Generator().manual_seed(len(shape) + boxes)
    x = torch.randn(shape, generator=g)
    rois = make_rois(boxes, shape[0], shape[2], shape[3], g, scale)
    attrs = dict(
        spatial_scale=scale,
        pooled_height=pooled[0],
        pooled_width=pooled[1],
        sampling_ratio=ratio,
        aligned=int(aligned),
    )
    got = run(x, rois, target, **attrs)
    want = torchvision_roi_align(x, rois, pooled, scale, ratio, aligned)
    torch.testing.assert_close(got, want, **FLOAT32_TOLERANCE)


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
def test_reduced_precision_matches_torchvision(dtype, aligned, target):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 12, 10, generator=g).to(dtype)
    rois = make_rois(8, 2, 12, 10, g, 0.5).to(dtype)
    got = run(
        x, rois, target, spatial_scale=0.5, pooled_height=3, pooled_width=2, aligned=int(aligned)
    )
    assert got.dtype == dtype
    want = torchvision_roi_align(x, rois, (3, 2), 0.5, -1, aligned)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("target", DEVICES)
def test_dynamic_box_count(target):
    # K (the boxes a detector kept) varies from run to run: one engine, rois' dim 0 dynamic.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 9, generator=g)
    net = kiln.Network()
    xi = net.add_input("x", "float32", (2, 3, 9, 9))
    ri = net.add_input("rois", "float32", (-1, 5))
    layer = net.add_layer("roi_align", [xi, ri], {"pooled_height": 2, "pooled_width": 2})
    assert layer.output.shape == (-1, 3, 2, 2)
    net.mark_output(layer, "y")
    profile = {"rois": ([0, 5], [8, 5], [16, 5])}
    engine = build_engine(net, target, profile=profile)
    ctx = engine.create_execution_context()
    device = device_of(target)
    for k in (1, 8, 16, 0):
        rois = make_rois(max(k, 1), 2, 9, 9, g)[:k]
        got = as_cpu_tensor(ctx.execute({"x": x.to(device), "rois": rois.to(device)})["y"])
        torch.testing.assert_close(
            got, roi_align(x, rois, (2, 2), 1.0, -1, False), **FLOAT32_TOLERANCE
        )


@pytest.mark.parametrize("target", DEVICES)
def test_batch_index_outside_the_input_gives_zeros(target):
    # torchvision reads out of bounds there; Kiln writes zeros for such a box, never reads.
    x = torch.randn(2, 3, 6, 6)
    rois = torch.tensor([[2.0, 0, 0, 4, 4], [-1.0, 1, 1, 3, 3], [1.0, 0, 0, 5, 5]])
    got = run(x, rois, target, pooled_height=2, pooled_width=2, sampling_ratio=2)
    assert torch.equal(got[:2], torch.zeros(2, 3, 2, 2))
    torch.testing.assert_close(got[2:], roi_align(x, rois[2:], (2, 2), 1.0, 2), **FLOAT32_TOLERANCE)


def test_bad_attributes_are_refused():
    net = kiln.Network()
    x = net.add_input("x", "float32", (1, 3, 4, 4))
    rois = net.add_input("rois", "float32", (2, 5))
    with pytest.raises(kiln.KilnError, match="pooled_height and pooled_width must be >= 1"):
        net.add_layer("roi_align", [x, rois], {"pooled_height": 0, "pooled_width": 2})
    bad = net.add_input("bad", "float32", (2, 4))
    with pytest.raises(kiln.KilnError, match="5 values"):
        net.add_layer("roi_align", [x, bad], {"pooled_height": 2, "pooled_width": 2})


class Pooler(torch.nn.Module):
    """A detector head's pooling: features and [K, 5] boxes in, a linear layer over the bins."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4 * 3 * 3, 5)

    def forward(self, x, rois):
        pooled = roi_align(x, rois, (3, 3), 0.5, 2, True)
        return self.fc(pooled.flatten(1))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_converts_roi_align_with_a_dynamic_box_count(device):
    torch.manual_seed(0)
    model = Pooler().eval().to(device)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 16, 16, generator=g).to(device)
    inputs = [
        kiln.Input(shape=x.shape, dtype=torch.float32),
        kiln.Input(min_shape=(1, 5), opt_shape=(6, 5), max_shape=(32, 5), dtype=torch.float32),
    ]
    compiled = kiln.compile(model, inputs, device=device, require_full_compilation=True)
    engine_ops = {op for s in compiled.report.segments if s["kind"] == "engine" for op in s["ops"]}
    assert "torchvision.roi_align.default" in engine_ops
    for k in (6, 1, 32):
        r = make_rois(k, 2, 16, 16, g, 0.5).to(device)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, r), model(x, r), rtol=1e-4, atol=1e-4)
