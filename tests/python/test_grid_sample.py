"""grid_sample layer: reference backend (CPU) and CUDA (GPU) vs torch.nn.functional.grid_sample.

Every mode x padding mode x align_corners, on grids with points inside and outside [-1, 1] (and
the corners exactly). Both backends compute pixel coordinates with torch's float32 arithmetic, so
nearest copies the same pixels as torch: exact. Bilinear and bicubic are compared with torch in
float32: the reference sums in double and CUDA in float while torch rounds each float32 product
and sum, so results differ by a few float32 ulp of the largest term, not of the result (see
FLOAT32_TOLERANCE). float16/bfloat16 are compared with torch on the same values in float32, rounded
once to the dtype (TOLERANCE of that dtype).
"""

import pytest
import torch
import torch.nn.functional as F
from layer_util import DEVICES, TOLERANCE, build_engine, device_of, run_layer

import kiln
from kiln import _C

MODES = ["bilinear", "nearest", "bicubic"]
PADDINGS = ["zeros", "border", "reflection"]
SHAPES = [  # input [N, C, H_in, W_in], output (H_out, W_out)
    ((2, 3, 5, 7), (4, 6)),
    ((1, 13, 4, 9), (7, 3)),  # odd channel count
    ((3, 2, 8, 8), (1, 17)),  # one output row
    ((1, 2, 1, 1), (3, 5)),  # a single input pixel
    ((2, 1, 1, 6), (2, 4)),  # a single input row
]
# float32 inputs are randn (|x| up to ~4). Bilinear: torch rounds four products and their sum in
# float32, so its result can be off by ~1e-6 absolute where the terms are large and cancel.
# Bicubic adds 16 products whose weights reach 1.1 in magnitude: up to ~1e-5.
FLOAT32_TOLERANCE = {
    "bilinear": {"rtol": 1e-5, "atol": 2e-6},
    "bicubic": {"rtol": 1e-5, "atol": 1e-5},
    "nearest": {"rtol": 0, "atol": 0},
}


def make_grid(n, h_out, w_out):
    """Points spread over [-1.6, 1.6] (inside and outside the image), with the first point of each
    row at (-1, -1) and the last at (1, 1): the corners exactly."""
    grid = torch.rand(n, h_out, w_out, 2) * 3.2 - 1.6
    grid[:, :, 0, :] = -1.0
    if w_out > 1:
        grid[:, :, -1, :] = 1.0
    return grid


def grid_sample_layer(mode, padding, align):
    attrs = {"mode": mode, "padding_mode": padding, "align_corners": int(align)}
    return lambda net, x, grid: net.add_layer("grid_sample", [x, grid], attrs)


def run_grid_sample(x, grid, mode, padding, align, target, **options):
    """The layer on `target`. numpy has no bfloat16, so on the host path bfloat16 inputs are fed
    as float32 and cast to bfloat16 in the network, and the result is cast back (all exact)."""
    layer = grid_sample_layer(mode, padding, align)
    if x.dtype != torch.bfloat16 or target != "cpu":
        return run_layer(layer, [x, grid], target, **options)

    def build(net, a, b):
        y = layer(net, net.add_cast(a, "bfloat16"), net.add_cast(b, "bfloat16"))
        return net.add_cast(y, "float32")

    return run_layer(build, [x.float(), grid.float()], target, **options).to(torch.bfloat16)


def torch_grid_sample(x, grid, mode, padding, align):
    """torch's result on the CPU in float32, rounded to x's dtype."""
    want = F.grid_sample(
        x.float().cpu(), grid.float().cpu(), mode=mode, padding_mode=padding, align_corners=align
    )
    return want.to(x.dtype)


def check(got, want, mode, dtype):
    if mode == "nearest":
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # a copied pixel or 0
    elif dtype == torch.float32:
        torch.testing.assert_close(got, want, **FLOAT32_TOLERANCE[mode])
    else:
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("align", [False, True], ids=["edges", "align_corners"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,out", SHAPES, ids=str)
def test_float32_matches_torch(shape, out, mode, padding, align, target):
    x = torch.randn(shape)
    grid = make_grid(shape[0], *out)
    got = run_layer(grid_sample_layer(mode, padding, align), [x, grid], target)
    check(got, torch_grid_sample(x, grid, mode, padding, align), mode, torch.float32)


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("align", [False, True], ids=["edges", "align_corners"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", MODES)
def test_reduced_precision_matches_torch(mode, padding, align, dtype, target):
    x = torch.randn(2, 5, 6, 7).to(dtype)
    grid = make_grid(2, 5, 9).to(dtype)
    got = run_grid_sample(x, grid, mode, padding, align, target)
    assert got.dtype == dtype
    check(got, torch_grid_sample(x, grid, mode, padding, align), mode, dtype)


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("align", [False, True], ids=["edges", "align_corners"])
def test_nearest_rounds_half_to_even(target, align):
    # Grid points whose pixel coordinate is exactly 0.5, 1.5 and 2.5 pick pixels 0, 2 and 2
    # (torch's nearbyint), not 1, 2, 3 (half up or away from zero). Pixel coordinates:
    # ((g + 1) * W - 1) / 2 with W = 4, or (g + 1) * (W - 1) / 2 with align_corners and W = 5.
    w, points = (5, [-0.75, -0.25, 0.25]) if align else (4, [-0.5, 0.0, 0.5])
    x = torch.arange(w, dtype=torch.float32).reshape(1, 1, 1, w) + 10
    grid = torch.tensor([[p, 0.0] for p in points]).reshape(1, 1, len(points), 2)
    got = run_layer(grid_sample_layer("nearest", "zeros", align), [x, grid], target)
    assert got.flatten().tolist() == [10.0, 12.0, 12.0]
    check(got, torch_grid_sample(x, grid, "nearest", "zeros", align), "nearest", torch.float32)


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_dynamic_batch(target, mode):
    x = torch.randn(3, 2, 5, 6)
    grid = make_grid(3, 4, 7)
    got = run_layer(grid_sample_layer(mode, "reflection", False), [x, grid], target, dynamic={0, 1})
    check(got, torch_grid_sample(x, grid, mode, "reflection", False), mode, torch.float32)


def build_dynamic(target, mode, padding):
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 3, -1, -1))
    grid = net.add_input("grid", "float32", (-1, -1, -1, 2))
    layer = net.add_layer("grid_sample", [x, grid], {"mode": mode, "padding_mode": padding})
    assert layer.output.shape == (-1, 3, -1, -1)
    net.mark_output(layer, "y")
    profile = {
        "x": ([1, 3, 1, 1], [2, 3, 6, 6], [3, 3, 12, 12]),
        "grid": ([1, 1, 1, 2], [2, 5, 5, 2], [3, 9, 9, 2]),
    }
    return build_engine(net, target, profile=profile).create_execution_context()


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize(
    "mode,padding", [("bilinear", "zeros"), ("nearest", "border"), ("bicubic", "reflection")]
)
def test_dynamic_input_and_output_sizes(target, mode, padding):
    ctx = build_dynamic(target, mode, padding)
    for n, h_in, w_in, h_out, w_out in [(2, 5, 7, 4, 6), (1, 12, 3, 9, 1), (3, 1, 11, 2, 9)]:
        x = torch.randn(n, 3, h_in, w_in)
        grid = make_grid(n, h_out, w_out)
        got = ctx.execute({"x": x.to(device_of(target)), "grid": grid.to(device_of(target))})["y"]
        if target == "cuda":
            torch.cuda.synchronize()
        assert got.shape == (n, 3, h_out, w_out)
        check(got.cpu(), torch_grid_sample(x, grid, mode, padding, False), mode, torch.float32)


def test_batch_mismatch_at_run_time_is_refused():
    ctx = build_dynamic("cpu", "bilinear", "zeros")
    with pytest.raises(kiln.KilnError, match=r"\(grid_sample\).*same batch size"):
        ctx.execute({"x": torch.randn(2, 3, 4, 4), "grid": make_grid(3, 2, 2)})


def test_empty_output():
    x = torch.randn(2, 3, 4, 4)
    grid = torch.zeros(2, 0, 5, 2)
    got = run_layer(grid_sample_layer("bilinear", "zeros", False), [x, grid], "cpu")
    assert got.shape == (2, 3, 0, 5)


def test_defaults_are_torchs():
    x = torch.randn(2, 3, 5, 6)
    grid = make_grid(2, 4, 4)
    got = run_layer(lambda net, a, b: net.add_layer("grid_sample", [a, b]), [x, grid], "cpu")
    check(got, F.grid_sample(x, grid, align_corners=False), "bilinear", torch.float32)


def test_refuses_bad_inputs_and_attributes():
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3, 4, 4))
    grid = net.add_input("grid", "float32", (2, 5, 5, 2))

    def refused(inputs, attrs, name, message):
        with pytest.raises(kiln.KilnError, match=rf"layer '{name}' \(grid_sample\).*{message}"):
            net.add_layer("grid_sample", inputs, attrs, name=name)

    flat = net.add_input("flat", "float32", (2, 3, 4))
    refused([flat, grid], {}, "g1", r"input must be 4-D \[N, C, H_in, W_in\]")
    grid3 = net.add_input("grid3", "float32", (2, 5, 2))
    refused([x, grid3], {}, "g2", r"grid must be 4-D \[N, H_out, W_out, 2\]")
    half_grid = net.add_input("half_grid", "float16", (2, 5, 5, 2))
    refused([x, half_grid], {}, "g3", "grid must have the input's dtype float32, got float16")
    wide = net.add_input("wide", "float32", (2, 5, 5, 3))
    refused([x, wide], {}, "g4", "last dim of the grid must be 2")
    other_batch = net.add_input("other_batch", "float32", (3, 5, 5, 2))
    refused([x, other_batch], {}, "g5", "same batch size")
    ints = net.add_input("ints", "int32", (2, 3, 4, 4))
    int_grid = net.add_input("int_grid", "int32", (2, 5, 5, 2))
    refused([ints, int_grid], {}, "g6", "float32, float16 or bfloat16")
    empty = net.add_input("empty", "float32", (2, 3, 0, 4))
    refused([empty, grid], {}, "g7", "spatial dims must not be empty")
    refused(
        [x, grid], {"mode": "cubic"}, "g8", "unknown mode 'cubic': use bilinear, nearest, bicubic"
    )
    refused([x, grid], {"padding_mode": "wrap"}, "g9", "unknown padding_mode 'wrap'")
    refused([x, grid], {"align_corners": 2}, "g10", "align_corners must be 0 or 1")
    with pytest.raises(kiln.KilnError, match=r"layer 'g11' \(grid_sample\): takes 2 inputs, got 1"):
        net.add_layer("grid_sample", [x], {}, name="g11")


# ---- the aten converter ------------------------------------------------------------------------


def grid_sampler_graph(mode_arg, padding_arg=0, align_arg=False):
    """A KGraph holding one aten.grid_sampler_2d node (node 1) whose interpolation_mode is
    `mode_arg`: an int, or "symbolic" for a size computed from the input (node 0)."""
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3, 5, 7])
    grid = g.add_input("grid", "float32", [2, 4, 6, 2])
    n = g.add_value("n", "int64", [], True)
    g.add_node("n", "aten.sym_size.int", [("self", _C.ValueRef(x)), ("dim", 0)], [n], "")
    y = g.add_value("y", "float32", [2, 3, 4, 6], False)
    args = [
        ("input", _C.ValueRef(x)),
        ("grid", _C.ValueRef(grid)),
        ("interpolation_mode", _C.ValueRef(n) if mode_arg == "symbolic" else mode_arg),
        ("padding_mode", padding_arg),
        ("align_corners", align_arg),
    ]
    g.add_node("gs", "aten.grid_sampler_2d.default", args, [y], "")
    g.mark_output(y)
    return g


def test_converter_accepts_constant_modes():
    for mode in (0, 1, 2):
        for padding in (0, 1, 2):
            assert grid_sampler_graph(mode, padding, True).check_node(1) == ""


def test_converter_refuses_computed_or_unknown_modes():
    # A refused node runs in PyTorch; the reason names the argument.
    reason = grid_sampler_graph("symbolic").check_node(1)
    assert "interpolation_mode" in reason and "must be a constant int" in reason
    assert "must be 0 to 2, got 3" in grid_sampler_graph(3).check_node(1)
    assert "padding_mode" in grid_sampler_graph(0, 5).check_node(1)
