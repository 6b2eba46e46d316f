"""Shape ops (reshape, transpose, flatten, squeeze, unsqueeze, expand, shape, concat, slice, split):
reference backend vs eager torch (CPU), CUDA vs torch (GPU), tracked shape values (dynamic
reshape targets computed on the host, build-time folding) and error messages.

Every op only moves elements, so results must equal torch's exactly (no tolerance).
"""

import pytest
import torch
from layer_util import DEVICES, build_engine, per_device, run_layer

import kiln

END = 2**63 - 1  # "to the end" for slice


def fresh(shape, dtype=torch.float32):
    """Random data that is never all zeros (and distinct enough to catch index mistakes)."""
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype in (torch.int32, torch.int64):
        return torch.randint(-1000, 1000, shape, dtype=dtype)
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, dtype=dtype)
    return (torch.randn(shape) * 3).to(dtype)


# name -> (input shape, add(net, x), torch(x), dynamic dim 0 allowed)
CASES = {
    "reshape_infer": (
        (2, 3, 4),
        lambda n, x: n.add_reshape(x, [4, -1]),
        lambda x: x.reshape(4, -1),
        False,
    ),
    "reshape_batch": (
        (5, 3, 4),
        lambda n, x: n.add_reshape(x, [-1, 2, 6]),
        lambda x: x.reshape(-1, 2, 6),
        True,
    ),
    "reshape_flat": (
        (3, 5, 7),
        lambda n, x: n.add_reshape(x, [105]),
        lambda x: x.reshape(105),
        False,
    ),
    "reshape_scalar": ((1, 1), lambda n, x: n.add_reshape(x, []), lambda x: x.reshape(()), False),
    "reshape_zero": (
        (2, 0, 4),
        lambda n, x: n.add_reshape(x, [0, 5, 3]),
        lambda x: x.reshape(0, 5, 3),
        False,
    ),
    "transpose_2d": ((13, 7), lambda n, x: n.add_transpose(x, [1, 0]), lambda x: x.t(), True),
    "transpose_3d": (
        (3, 5, 7),
        lambda n, x: n.add_transpose(x, [2, 0, 1]),
        lambda x: x.permute(2, 0, 1),
        True,
    ),
    "transpose_neg": (
        (2, 3, 4, 5),
        lambda n, x: n.add_transpose(x, [0, -1, 1, -2]),
        lambda x: x.permute(0, 3, 1, 2),
        True,
    ),
    "transpose_inner_kept": (
        (4, 3, 2, 9),
        lambda n, x: n.add_transpose(x, [1, 0, 2, 3]),
        lambda x: x.transpose(0, 1),
        True,
    ),
    # NCHW <-> NHWC with 3 channels (a stem's input): CUDA's narrow transpose, both directions.
    "transpose_to_nhwc_narrow": (
        (2, 3, 5, 7),
        lambda n, x: n.add_transpose(x, [0, 2, 3, 1]),
        lambda x: x.permute(0, 2, 3, 1),
        True,
    ),
    "transpose_to_nchw_narrow": (
        (2, 5, 7, 3),
        lambda n, x: n.add_transpose(x, [0, 3, 1, 2]),
        lambda x: x.permute(0, 3, 1, 2),
        True,
    ),
    "transpose_narrow_16": (
        (1, 16, 300),
        lambda n, x: n.add_transpose(x, [0, 2, 1]),
        lambda x: x.permute(0, 2, 1),
        True,
    ),
    # A 2x2 space-to-depth fold into channels last ([N, C, H/2, 2, W/2, 2] -> [N, H/2, W/2, 2, 2,
    # C]) and pixel_shuffle's gather ([N, C, 2, 2, H, W] -> [N, C, H, 2, W, 2]): CUDA's grouped
    # copy.
    "transpose_fold_2x2": (
        (2, 4, 6, 2, 10, 2),
        lambda n, x: n.add_transpose(x, [0, 2, 4, 3, 5, 1]),
        lambda x: x.permute(0, 2, 4, 3, 5, 1),
        True,
    ),
    "transpose_pixel_shuffle": (
        (2, 3, 2, 2, 5, 7),
        lambda n, x: n.add_transpose(x, [0, 1, 4, 2, 5, 3]),
        lambda x: x.permute(0, 1, 4, 2, 5, 3),
        True,
    ),
    "transpose_rank8": (
        (2, 1, 3, 2, 1, 2, 3, 2),
        lambda n, x: n.add_transpose(x, [7, 6, 5, 4, 3, 2, 1, 0]),
        lambda x: x.permute(7, 6, 5, 4, 3, 2, 1, 0),
        True,
    ),
    "transpose_empty": (
        (0, 4, 3),
        lambda n, x: n.add_transpose(x, [2, 1, 0]),
        lambda x: x.permute(2, 1, 0),
        False,
    ),
    "flatten_all": ((2, 3, 5), lambda n, x: n.add_flatten(x), lambda x: x.flatten(), True),
    "flatten_mid": (
        (2, 3, 5, 7),
        lambda n, x: n.add_flatten(x, 1, 2),
        lambda x: x.flatten(1, 2),
        True,
    ),
    "flatten_neg": (
        (2, 3, 5, 7),
        lambda n, x: n.add_flatten(x, -3, -2),
        lambda x: x.flatten(-3, -2),
        True,
    ),
    "flatten_batch": (
        (4, 3, 5),
        lambda n, x: n.add_flatten(x, 0, 1),
        lambda x: x.flatten(0, 1),
        True,
    ),
    "flatten_scalar": ((), lambda n, x: n.add_flatten(x), lambda x: x.flatten(), False),
    "squeeze": (
        (3, 1, 5, 1),
        lambda n, x: n.add_squeeze(x, [1, -1]),
        lambda x: x.squeeze(3).squeeze(1),
        True,
    ),
    "squeeze_lead": ((1, 4), lambda n, x: n.add_squeeze(x, [0]), lambda x: x.squeeze(0), False),
    "unsqueeze": (
        (3, 5),
        lambda n, x: n.add_unsqueeze(x, [0, -1]),
        lambda x: x[None, :, :, None],
        True,
    ),
    "unsqueeze_mid": (
        (3, 5),
        lambda n, x: n.add_unsqueeze(x, [1, 2]),
        lambda x: x[:, None, None, :],
        True,
    ),
    "expand": (
        (3, 1, 5),
        lambda n, x: n.add_expand(x, [2, -1, 4, 5]),
        lambda x: x.expand(2, -1, 4, 5),
        True,
    ),
    "expand_same": ((3, 5), lambda n, x: n.add_expand(x, [3, 5]), lambda x: x.expand(3, 5), False),
    "expand_zero": ((1, 5), lambda n, x: n.add_expand(x, [0, 5]), lambda x: x.expand(0, 5), False),
    "concat_1": ((4, 3), lambda n, x: n.add_concat([x], 0), lambda x: torch.cat([x]), True),
    "slice_basic": ((7, 9), lambda n, x: n.add_slice(x, [1], [2], [7]), lambda x: x[:, 2:7], True),
    "slice_steps": (
        (11, 13),
        lambda n, x: n.add_slice(x, [0, 1], [1, 0], [END, END], [3, 4]),
        lambda x: x[1::3, ::4],
        True,
    ),
    "slice_negative": (
        (7, 9),
        lambda n, x: n.add_slice(x, [0, -1], [-3, -5], [-1, -2]),
        lambda x: x[-3:-1, -5:-2],
        True,
    ),
    "slice_clamp": (
        (5, 6),
        lambda n, x: n.add_slice(x, [0, 1], [-100, 2], [100, 100]),
        lambda x: x[-100:100, 2:100],
        True,
    ),
    "slice_empty": ((5, 6), lambda n, x: n.add_slice(x, [1], [4], [2]), lambda x: x[:, 4:2], True),
    "slice_odd_tail": (
        (3, 127),
        lambda n, x: n.add_slice(x, [1], [1], [END], [2]),
        lambda x: x[:, 1::2],
        True,
    ),
}
DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.int64,
    torch.int8,
    torch.bool,
]


@pytest.mark.parametrize(
    "target,case,dtype,dynamic",
    # A dynamic dim 0 only where the case allows one (elsewhere the target shape fixes dim 0): on
    # the reference backend float32 with and without, on CUDA every dtype with it where allowed.
    per_device(
        cpu=[
            (case, torch.float32, dynamic)
            for case in CASES
            for dynamic in (False, True)
            if CASES[case][3] or not dynamic
        ],
        cuda=[(case, dtype, CASES[case][3]) for case in CASES for dtype in DTYPES],
    ),
)
def test_matches_torch(target, case, dtype, dynamic):
    shape, add, ref, _ = CASES[case]
    x = fresh(shape, dtype)
    got = run_layer(add, [x], target, dynamic=dynamic)
    torch.testing.assert_close(got, ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.float16])
@pytest.mark.parametrize("case", ["transpose_3d", "slice_steps", "expand", "reshape_infer"])
def test_reference_other_dtypes(case, dtype):
    shape, add, ref, _ = CASES[case]
    x = fresh(shape, dtype)
    torch.testing.assert_close(run_layer(add, [x], "cpu"), ref(x), rtol=0, atol=0)


CONCAT_CASES = [
    ([(2, 3), (4, 3)], 0),
    ([(2, 3), (2, 5), (2, 1)], 1),
    ([(2, 3, 4), (2, 3, 1), (2, 3, 7)], -1),
    ([(3, 0, 2), (3, 4, 2)], 1),
    ([(1, 5)] * 17, 0),
    # DenseNet's channels-last concat: 40 inputs (two launches of up to 32), 16-byte rows in half
    # precision beside odd ones, so the copy unit narrows to what every input allows.
    ([(2, 3, 8)] * 20 + [(2, 3, 3)] + [(2, 3, 8)] * 19, -1),
    ([(2, 4, 16), (2, 4, 24), (2, 4, 8)], 2),
    # fold_channel_shuffles' interleave: rows of one element from each input, on a new last axis.
    ([(1, 3, 3, 4, 1)] * 2, -1),
]


def add_concat(axis):
    return lambda net, *xs: net.add_concat(xs, axis)


@pytest.mark.parametrize("shapes,axis", CONCAT_CASES)
@pytest.mark.parametrize(
    "target,dtype",
    per_device(
        cpu=[torch.float32],
        cuda=[torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool],
    ),
)
def test_concat(shapes, axis, target, dtype):
    xs = [fresh(s, dtype) for s in shapes]
    got = run_layer(add_concat(axis), xs, target)
    torch.testing.assert_close(got, torch.cat(xs, axis), rtol=0, atol=0)


def test_reference_concat_dynamic_axis():
    xs = [fresh((5, 3)), fresh((2, 3))]  # input 0 has a dynamic batch; the axis sum is dynamic
    got = run_layer(add_concat(0), xs, "cpu", dynamic=True)
    torch.testing.assert_close(got, torch.cat(xs), rtol=0, atol=0)


def run_split(x, sizes, axis, target, dynamic=False):
    return run_layer(lambda net, t: net.add_split(t, sizes, axis).outputs, [x], target, dynamic)


SPLIT_CASES = [
    ((7, 4), [2, 5], 0),
    ((3, 10, 2), [1, 0, 6, 3], 1),
    ((2, 3, 9), [4, 5], -1),
    ((6,), [6], 0),
]


@pytest.mark.parametrize("shape,sizes,axis", SPLIT_CASES)
@pytest.mark.parametrize(
    "target,dtype",
    per_device(cpu=[torch.float32], cuda=[torch.float32, torch.float16, torch.int32]),
)
def test_split(shape, sizes, axis, target, dtype):
    x = fresh(shape, dtype)
    for got, want in zip(
        run_split(x, sizes, axis, target), torch.split(x, sizes, axis), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_reference_split_dynamic_batch():
    x = fresh((5, 7))
    outs = run_split(x, [3, 4], 1, "cpu", dynamic=True)
    for got, want in zip(outs, torch.split(x, [3, 4], 1), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.int32])
@pytest.mark.parametrize("dynamic", [False, True])
def test_reference_shape_of(dtype, dynamic):
    x = fresh((4, 3, 5), dtype)
    got = run_layer(lambda n, t: n.add_shape(t), [x], "cpu", dynamic=dynamic)
    assert got.dtype == torch.int64
    torch.testing.assert_close(got, torch.tensor(x.shape))


def test_reference_reshape_shape_input_constant():
    x = fresh((2, 3, 4))
    for dtype in (torch.int32, torch.int64):
        target = torch.tensor([3, -1, 2], dtype=dtype)
        got = run_layer(
            lambda n, t, target=target: n.add_reshape(t, n.add_constant(target)), [x], "cpu"
        )
        torch.testing.assert_close(got, x.reshape(3, -1, 2), rtol=0, atol=0)


def test_reference_expand_shape_input():
    x = fresh((3, 1))
    target = torch.tensor([2, 3, 4])
    got = run_layer(lambda n, t: n.add_expand(t, n.add_constant(target)), [x], "cpu")
    torch.testing.assert_close(got, x.expand(2, 3, 4), rtol=0, atol=0)


# --- tracked shape values: dynamic targets computed on the host --------------------------------


def build_dynamic_reshape(target, profile=((1, 3, 4), (2, 3, 4), (8, 3, 4))):
    """x [B, 3, 4] -> shape -> slice (B) -> mul 2 -> concat [-1] -> reshape x to [2B, 6]."""
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 3, 4))
    dims = net.add_shape(x)
    batch = net.add_slice(dims, [0], [0], [1])
    doubled = net.add_elementwise(batch, torch.tensor([2]), "mul")
    shape = net.add_concat([doubled, torch.tensor([-1])], 0)
    out = net.add_reshape(x, shape)
    assert out.output.shape == (-1, -1)  # both dims depend on the dynamic batch
    net.mark_output(out, "out")
    return build_engine(net, target, profile={"x": profile})


def check_dynamic_reshape(target):
    engine = build_dynamic_reshape(target)
    assert any("[shape]" in line for line in engine.describe())  # computed at run time
    ctx = engine.create_execution_context()
    device = "cuda" if target == "cuda" else "cpu"
    for batch in (3, 8, 1):
        ctx.set_input_shape("x", (batch, 3, 4))
        assert ctx.tensor_shape("out") == (2 * batch, 6)
        x = fresh((batch, 3, 4)).to(device)
        got = ctx.execute({"x": x})["out"]
        if target == "cuda":
            torch.cuda.synchronize()
        torch.testing.assert_close(got.cpu(), x.cpu().reshape(2 * batch, -1), rtol=0, atol=0)


@pytest.mark.parametrize("target", DEVICES)
def test_dynamic_shape_arithmetic(target):
    check_dynamic_reshape(target)


def run_value_chain(build, x):
    """build(net, x) -> a 1-D int tensor; reshape x (dim 0 dynamic) to it and run on the reference
    backend."""
    return run_layer(lambda net, xin: net.add_reshape(xin, build(net, xin)), [x], "cpu", True)


def test_values_propagate_through_shape_and_int_ops():
    # [B, 6, 10] -> [B * 6 / 3, 0 - 10 // -2 + 1 - 1, max(min(B, 2), 6)] = [2B, 5, 6]: every op
    # of the chain must carry values, or the reshape is refused at build time.
    x = fresh((4, 6, 10))

    def build(net, xin):
        dims = net.add_shape(xin)
        b = net.add_slice(dims, [0], [0], [1])
        c = net.add_slice(dims, [0], [1], [2])
        w = net.add_slice(dims, [0], [-1], [END])
        first = net.add_elementwise(net.add_elementwise(b, c, "mul"), torch.tensor([3]), "div")
        half = net.add_elementwise(w, torch.tensor([-2]), "floor_div")  # floor(10 / -2) = -5
        half = net.add_elementwise(torch.tensor([0]), half, "sub")  # 5
        half = net.add_elementwise(half, torch.tensor([1]), "add")
        half = net.add_elementwise(half, torch.tensor([1]), "sub")
        six = net.add_elementwise(
            net.add_elementwise(b, torch.tensor([2]), "min"), torch.tensor([6]), "max"
        )
        six = net.add_identity(net.add_flatten(net.add_unsqueeze(six, [0])))
        six = net.add_squeeze(net.add_unsqueeze(six, [1]), [1])
        return net.add_concat([first, half, six], 0)

    got = run_value_chain(build, x)
    torch.testing.assert_close(got, x.reshape(4 * 6 // 3, 5, 6), rtol=0, atol=0)


def test_values_propagate_through_reshape_and_transpose():
    x = fresh((3, 4, 5))

    def build(net, xin):
        dims = net.add_shape(xin)
        pair = net.add_slice(dims, [0], [0], [2])  # [B, 4]
        grid = net.add_reshape(
            net.add_concat([pair, torch.tensor([5, 1])], 0), [2, 2]
        )  # [[B, 4], [5, 1]]
        cols = net.add_flatten(net.add_transpose(grid, [1, 0]))  # [B, 5, 4, 1]
        return net.add_slice(cols, [0], [0], [3])  # [B, 5, 4]

    torch.testing.assert_close(run_value_chain(build, x), x.reshape(3, 5, 4), rtol=0, atol=0)


def test_values_propagate_through_split_expand_and_concat_axis_1():
    x = fresh((3, 4, 5))

    def build(net, xin):
        b, rest = net.add_split(net.add_shape(xin), [1, 2]).outputs  # [B], [4, 5]
        col = net.add_reshape(net.add_expand(b, [2]), [2, 1])  # [[B], [B]]
        grid = net.add_concat([col, torch.tensor([[1], [2]])], 1)  # [[B, 1], [B, 2]]
        b_again = net.add_slice(net.add_flatten(grid), [0], [2], [3])  # [B]
        return net.add_concat([b_again, rest], 0)  # [B, 4, 5]

    torch.testing.assert_close(run_value_chain(build, x), x, rtol=0, atol=0)


def test_expand_to_a_dynamic_target():
    net = kiln.Network()
    xin = net.add_input("x", "float32", (-1, 1, 4))
    batch = net.add_slice(net.add_shape(xin), [0], [0], [1])
    out = net.add_expand(xin, net.add_concat([batch, torch.tensor([3, -1])], 0))
    assert out.output.shape == (-1, 3, 4)
    net.mark_output(out, "out")
    config = kiln.BuilderConfig(device="cpu")
    config.add_optimization_profile({"x": ([1, 1, 4], [5, 1, 4], [9, 1, 4])})
    ctx = kiln.Engine(kiln.Builder().build(net, config), device="cpu").create_execution_context()
    for b in (5, 2):
        xv = fresh((b, 1, 4))
        torch.testing.assert_close(
            ctx.execute({"x": xv})["out"], xv.expand(b, 3, 4), rtol=0, atol=0
        )


def test_values_propagate_through_int32_arithmetic():
    x = fresh((3, 4, 5))
    net = kiln.Network()
    xin = net.add_input("x", "float32", (3, 4, 5))
    a = net.add_constant(torch.tensor([3, 10], dtype=torch.int32))
    target = net.add_elementwise(a, torch.tensor([1, 2], dtype=torch.int32), "mul")  # [3, 20]
    out = net.add_reshape(xin, target)
    assert out.output.shape == (3, 20)
    net.mark_output(out, "out")
    engine = kiln.Engine(kiln.Builder().build(net, kiln.BuilderConfig(device="cpu")), device="cpu")
    got = engine.create_execution_context().execute({"x": x})["out"]
    torch.testing.assert_close(got, x.reshape(3, 20), rtol=0, atol=0)


def test_static_shape_chain_is_folded():
    net = kiln.Network()
    x = net.add_input("x", "float32", (3, 4, 5))
    dims = net.add_shape(x)
    lead = net.add_elementwise(
        net.add_slice(dims, [0], [0], [2]), torch.tensor([1, 5]), "mul"
    )  # [3, 20]
    is_three = net.add_elementwise(net.add_slice(dims, [0], [0], [1]), torch.tensor([3]), "eq")
    out = net.add_reshape(x, net.add_concat([lead, torch.tensor([-1])], 0))
    assert out.output.shape == (3, 20, 1)  # fully known at build time
    net.mark_output(out, "out")
    net.mark_output(is_three, "flag")
    config = kiln.BuilderConfig(device="cpu")
    engine = kiln.Engine(kiln.Builder().build(net, config), device="cpu")
    layers = engine.describe()
    assert len(layers) == 1 and "[reshape]" in layers[0], (
        layers
    )  # shape, slice, mul, eq, concat folded
    xv = fresh((3, 4, 5))
    got = engine.create_execution_context().execute({"x": xv})
    torch.testing.assert_close(got["out"], xv.reshape(3, 20, 1), rtol=0, atol=0)
    torch.testing.assert_close(got["flag"], torch.tensor([True]))


VALUE_OPS = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    "floor_div": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "max": torch.maximum,
    "min": torch.minimum,
    "eq": torch.eq,
    "ne": torch.ne,
    "lt": torch.lt,
    "le": torch.le,
    "gt": torch.gt,
    "ge": torch.ge,
}


@pytest.mark.parametrize("op", VALUE_OPS)
def test_folded_values_match_torch(op):
    # Host-side value arithmetic on shape-of a static input, broadcast against a [2, 1] constant
    # with negative entries (so div/floor_div differ): folded to a constant, no layer left.
    net = kiln.Network()
    x = net.add_input("x", "float32", (3, 7, 4))
    other = torch.tensor([[-2], [5]])
    y = net.add_elementwise(net.add_shape(x), other, op)
    net.mark_output(y, "y")
    net.mark_output(net.add_identity(x), "x_out")  # keeps the engine non-trivial
    engine = kiln.Engine(kiln.Builder().build(net, kiln.BuilderConfig(device="cpu")), device="cpu")
    assert not any("[elementwise]" in line or "[shape]" in line for line in engine.describe())
    got = engine.create_execution_context().execute({"x": fresh((3, 7, 4))})["y"]
    torch.testing.assert_close(got, VALUE_OPS[op](torch.tensor([3, 7, 4]), other))


def test_squeeze_of_dynamic_dim_checked_against_the_profile():
    # A dynamic dim passes squeeze when the layer is added; concrete shapes (the profile's corners
    # when building, the set shapes when running) must then have size 1 there.
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 4))
    net.mark_output(net.add_squeeze(x, [0], name="sq"), "out")
    assert net.outputs[0].shape == (4,)
    config = kiln.BuilderConfig(device="cpu")
    config.add_optimization_profile({"x": ([1, 4], [1, 4], [3, 4])})
    with pytest.raises(
        kiln.KilnError, match=r"layer 'sq' \(squeeze\).*has size 3, only size-1 dims"
    ):
        kiln.Builder().build(net, config)
    config = kiln.BuilderConfig(device="cpu")
    config.add_optimization_profile({"x": ([1, 4], [1, 4], [1, 4])})
    ctx = kiln.Engine(kiln.Builder().build(net, config), device="cpu").create_execution_context()
    xv = fresh((1, 4))
    torch.testing.assert_close(ctx.execute({"x": xv})["out"], xv[0], rtol=0, atol=0)


# --- errors -----------------------------------------------------------------------------------


def test_errors_name_the_layer():
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3, 4))
    shp = net.add_input("shp", "int64", (2,))
    with pytest.raises(kiln.KilnError, match=r"layer 'p' \(transpose\).*not a permutation"):
        net.add_transpose(x, [0, 0, 1], name="p")
    with pytest.raises(kiln.KilnError, match=r"layer 'p2' \(transpose\).*out of range"):
        net.add_transpose(x, [0, 1, 3], name="p2")
    with pytest.raises(kiln.KilnError, match=r"layer 'p3' \(transpose\).*one entry per dim"):
        net.add_transpose(x, [1, 0], name="p3")
    with pytest.raises(kiln.KilnError, match=r"layer 'r' \(reshape\).*element counts must match"):
        net.add_reshape(x, [5, 5], name="r")
    with pytest.raises(kiln.KilnError, match=r"layer 'r2' \(reshape\).*not a multiple"):
        net.add_reshape(x, [5, -1], name="r2")
    with pytest.raises(kiln.KilnError, match=r"layer 'r3' \(reshape\).*more than one -1"):
        net.add_reshape(x, [-1, -1], name="r3")
    with pytest.raises(kiln.KilnError, match=r"layer 'r4' \(reshape\).*not known when building"):
        net.add_reshape(x, shp, name="r4")
    with pytest.raises(kiln.KilnError, match=r"layer 'e' \(expand\).*only size-1 dims expand"):
        net.add_expand(x, [2, 5, 4], name="e")
    with pytest.raises(kiln.KilnError, match=r"layer 's' \(split\).*sum to 3.*size 4"):
        net.add_split(x, [1, 2], 2, name="s")
    with pytest.raises(kiln.KilnError, match=r"layer 'c' \(concat\).*differs.*in dim 1"):
        net.add_concat([x, net.add_input("y", "float32", (2, 5, 4))], 0, name="c")
    with pytest.raises(kiln.KilnError, match=r"layer 'c2' \(concat\).*one dtype"):
        net.add_concat([x, net.add_input("z", "float16", (2, 3, 4))], 0, name="c2")
    with pytest.raises(kiln.KilnError, match=r"layer 'sl' \(slice\).*steps must be >= 1"):
        net.add_slice(x, [0], [0], [2], [0], name="sl")
    with pytest.raises(kiln.KilnError, match=r"layer 'sl2' \(slice\).*steps must be >= 1"):
        net.add_slice(x, [0], [-1], [0], [-1], name="sl2")
    with pytest.raises(kiln.KilnError, match=r"layer 'sq' \(squeeze\).*only size-1 dims"):
        net.add_squeeze(x, [1], name="sq")
    with pytest.raises(kiln.KilnError, match=r"layer 'f' \(flatten\).*start_dim"):
        net.add_flatten(x, 2, 1, name="f")
    with pytest.raises(kiln.KilnError, match=r"layer 'u' \(unsqueeze\).*out of range"):
        net.add_unsqueeze(x, [5], name="u")


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_large_transpose_and_slice():
    # 2.5M elements of odd sizes: many blocks, uneven tails; [2, 0, 1] coalesces to a 2-D transpose.
    x = fresh((37, 1025, 67))
    got = run_layer(lambda n, t: n.add_transpose(t, [2, 0, 1]), [x], "cuda", dynamic=True)
    torch.testing.assert_close(got, x.permute(2, 0, 1), rtol=0, atol=0)
    got = run_layer(lambda n, t: n.add_transpose(t, [1, 0, 2]), [x], "cuda", dynamic=True)
    torch.testing.assert_close(got, x.transpose(0, 1), rtol=0, atol=0)  # generic strided walk
    y = fresh((3, 129, 257), torch.float16)  # batched 2-D transpose: the tiled path, partial tiles
    got = run_layer(lambda n, t: n.add_transpose(t, [0, 2, 1]), [y], "cuda", dynamic=True)
    torch.testing.assert_close(got, y.transpose(1, 2), rtol=0, atol=0)
    got = run_layer(
        lambda n, t: n.add_slice(t, [1, 2], [3, -60], [END, END], [5, 3]), [x], "cuda", dynamic=True
    )
    torch.testing.assert_close(got, x[:, 3::5, -60::3], rtol=0, atol=0)


# Copies whose innermost dim is contiguous on both sides move words of up to 16 bytes: heads
# transposes (inner 64 halves: 16-byte words), inner runs that allow 8 or 4 bytes, offsets that
# break the alignment (slices starting at an odd column), and NCHW <-> NHWC with 3 channels.
WORD_CASES = {
    "heads_fp16": ((2, 77, 12, 64), torch.float16, lambda n, t: n.add_transpose(t, [0, 2, 1, 3])),
    "heads_fp32": ((3, 5, 4, 32), torch.float32, lambda n, t: n.add_transpose(t, [0, 2, 1, 3])),
    "inner6_fp16": ((4, 7, 3, 6), torch.float16, lambda n, t: n.add_transpose(t, [2, 0, 1, 3])),
    "inner2_int8ish": ((5, 3, 9, 2), torch.bool, lambda n, t: n.add_transpose(t, [1, 0, 2, 3])),
    "nchw_to_nhwc_c3": (
        (2, 3, 33, 35),
        torch.float16,
        lambda n, t: n.add_transpose(t, [0, 2, 3, 1]),
    ),
    "nhwc_to_nchw_c3": (
        (2, 33, 35, 3),
        torch.float16,
        lambda n, t: n.add_transpose(t, [0, 3, 1, 2]),
    ),
    "slice_odd_start": ((6, 40), torch.float16, lambda n, t: n.add_slice(t, [1], [1], [33])),
    "slice_even_start": ((6, 40), torch.float16, lambda n, t: n.add_slice(t, [1], [8], [40])),
}
WORD_REFS = {
    "heads_fp16": lambda x: x.transpose(1, 2),
    "heads_fp32": lambda x: x.transpose(1, 2),
    "inner6_fp16": lambda x: x.permute(2, 0, 1, 3),
    "inner2_int8ish": lambda x: x.transpose(0, 1),
    "nchw_to_nhwc_c3": lambda x: x.permute(0, 2, 3, 1),
    "nhwc_to_nchw_c3": lambda x: x.permute(0, 3, 1, 2),
    "slice_odd_start": lambda x: x[:, 1:33],
    "slice_even_start": lambda x: x[:, 8:40],
}


@pytest.mark.parametrize("case", WORD_CASES)
@pytest.mark.parametrize("target,dynamic", per_device(cpu=[False], cuda=[False, True]))
def test_copies_in_words(case, target, dynamic):
    shape, dtype, add = WORD_CASES[case]
    x = fresh(shape, dtype)
    got = run_layer(add, [x], target, dynamic=dynamic)
    torch.testing.assert_close(got, WORD_REFS[case](x), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_shape_of():
    x = fresh((4, 3, 5))
    got = run_layer(lambda n, t: n.add_shape(t), [x], "cuda", dynamic=True)
    torch.testing.assert_close(got, torch.tensor([4, 3, 5]))


# --- space_to_depth ------------------------------------------------------------------------------


def torch_space_to_depth(x, pads, channels, layout):
    """x padded (rows top/bottom, columns left/right, channels to `channels`) and folded 2x2 into
    channels in (dy, dx, c) order: [N, 4C', H'/2, W'/2], or its channels-last permute."""
    top, bottom, left, right = pads
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (left, right, top, bottom, 0, channels - c))
    hs, ws = xp.shape[2] // 2, xp.shape[3] // 2
    y = (
        xp.reshape(n, channels, hs, 2, ws, 2)
        .permute(0, 3, 5, 1, 2, 4)
        .reshape(n, 4 * channels, hs, ws)
    )
    return y.permute(0, 2, 3, 1) if layout == "nhwc" else y


# (input dims, pads, channels): ResNet's stem geometry, odd sizes with an extra bottom/right row,
# no padding, more channels than 4 (one 16-byte chunk of halves per 2 channels).
S2D_CASES = [
    ((2, 3, 14, 14), [3, 3, 3, 3], 4),
    ((3, 1, 9, 6), [2, 3, 2, 0], 1),
    ((1, 4, 8, 10), [0, 0, 0, 0], 4),
    ((2, 5, 6, 4), [1, 1, 0, 2], 8),
]


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("shape,pads,channels", S2D_CASES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8])
def test_space_to_depth_matches_torch(target, shape, pads, channels, layout, dtype):
    x = fresh(shape) if dtype.is_floating_point else torch.randint(-128, 128, shape)
    x = x.to(dtype)
    attrs = {"pads": pads, "channels": channels, "layout": layout}
    got = run_layer(
        lambda n, t: n.add_layer("space_to_depth", [t], attrs), [x], target, dynamic=True
    )
    torch.testing.assert_close(got, torch_space_to_depth(x, pads, channels, layout), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_space_to_depth_resnet_stem_batch():
    # A batch of 224 x 224 images as the ResNet stem folds them, channels last (the 16-byte path).
    x = fresh((8, 3, 224, 224), torch.float16)
    attrs = {"pads": [3, 5, 3, 5], "channels": 4, "layout": "nhwc"}
    got = run_layer(lambda n, t: n.add_layer("space_to_depth", [t], attrs), [x], "cuda")
    torch.testing.assert_close(
        got, torch_space_to_depth(x, [3, 5, 3, 5], 4, "nhwc"), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    "shape,attrs,message",
    [
        ((2, 3, 7, 8), {"pads": [0, 0, 0, 0]}, "even number of rows"),
        ((2, 3, 8, 8), {"pads": [1, 0, 0, 0]}, "even number of rows"),
        ((2, 3, 8, 8), {"channels": 2}, "at least the input's 3"),
        ((2, 3, 8, 8), {"pads": [1, 1, -1, 1]}, "four values >= 0"),
        ((2, 3, 8, 8), {"layout": "nwhc"}, "layout must be nchw or nhwc"),
        ((3, 8, 8), {}, "rank-4"),
    ],
)
def test_space_to_depth_errors(shape, attrs, message):
    net = kiln.Network()
    x = net.add_input("x", "float32", list(shape))
    with pytest.raises(kiln.KilnError, match=message):
        net.add_layer("space_to_depth", [x], attrs)
