"""NaN (and +-inf) propagate as in eager torch through every activation, elementwise max/min,
reductions, max pooling, and the fused forms: fused_pointwise chains, the convolution epilogue
(cuDNN's fused conv + bias + relu and Kiln's own) and the fully_connected epilogue (cuBLASLt's
and Kiln's). torch keeps NaN where a NaN goes in: F.relu(nan) = clamp(nan) = hardtanh(nan) = nan,
torch.maximum(x, nan) = nan, max_pool2d and amax propagate NaN. fminf/fmaxf-style code (and
cuDNN's CUDNN_NOT_PROPAGATE_NAN) would return the bound instead: a silent wrong answer.

Each case runs standalone and fused, on the reference backend and on CUDA (marked gpu), and is
compared with eager torch by torch.testing.assert_close(equal_nan=True), so a NaN must be NaN and
an inf the same inf. Tolerances are layer_util.TOLERANCE (one rounding of float32 math) unless a
case says why it needs more.
"""

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from layer_util import DEVICES, TOLERANCE, build_plan, per_device, run_layer, run_plan

import kiln
from kiln import runtime as rt

NAN, INF = float("nan"), float("inf")

# Values every case feeds: NaN, both infinities, the bounds of the clamps (-1, 0, 1, 6) and
# values on either side of them; the rest of each tensor is random.
SPECIAL = [NAN, INF, -INF, -7.0, -1.0, -0.5, 0.0, 0.25, 1.0, 3.0, 6.0, 8.0]


def with_specials(*shape, dtype=torch.float32, seed=0):
    """Random normal values (scaled to cross every activation's kinks) with SPECIAL spread in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 4
    flat = x.view(-1)
    pos = torch.randperm(flat.numel(), generator=g)[: len(SPECIAL)]
    flat[pos] = torch.tensor(SPECIAL[: len(pos)])
    return x.to(dtype)


def close(got, want, dtype=torch.float32, **tol):
    torch.testing.assert_close(got, want, equal_nan=True, **(tol or TOLERANCE[dtype]))


def assert_nans_at(got, want):
    """NaN exactly where torch has NaN; a failure counts both (assert_close would only say that
    some values differ)."""
    assert torch.equal(got.isnan(), want.isnan()), (got.isnan().sum(), want.isnan().sum())


# ---- activations ------------------------------------------------------------------------------

# type -> (attributes, eager function)
ACTIVATIONS = {
    "relu": ({}, F.relu),
    "sigmoid": ({}, torch.sigmoid),
    "tanh": ({}, torch.tanh),
    "leaky_relu": ({"alpha": 0.2}, lambda x: F.leaky_relu(x, 0.2)),
    "gelu": ({}, F.gelu),
    "gelu_tanh": ({}, lambda x: F.gelu(x, approximate="tanh")),
    "silu": ({}, F.silu),
    "hardswish": ({}, F.hardswish),
    "hardsigmoid": ({}, F.hardsigmoid),
    "elu": ({"alpha": 1.5}, lambda x: F.elu(x, 1.5)),
    "softplus": ({"beta": 2.0, "threshold": 15.0}, lambda x: F.softplus(x, 2.0, 15.0)),
    "mish": ({}, F.mish),
    "clip": ({"alpha": -1.0, "beta": 6.0}, lambda x: torch.clamp(x, -1.0, 6.0)),
    "selu": ({}, torch.selu),
}


def eager_input(x, kind):
    # torch's CPU gelu (erf form) returns NaN at +inf where its CUDA gelu and the definition
    # give inf: feed gelu no +inf, so the comparison is about NaN, not that quirk.
    return x.nan_to_num(nan=NAN, posinf=3.0, neginf=-INF) if kind == "gelu" else x


def add_activation(kind):
    attrs, _ = ACTIVATIONS[kind]

    def add(net, x):
        return net.add_layer("activation", [x], {"type": kind, **attrs})

    return add


def test_every_activation_type_is_covered():
    # A new activation type must join ACTIVATIONS (and so these NaN tests): the types docs/ops.md
    # lists, which test_ops_doc checks against the schema.
    from test_ops_doc import documented_ops

    cell = documented_ops()["activation"][1].split(";")[0].split(":", 1)[1]
    assert set(re.findall(r"[a-z_]+", cell)) == set(ACTIVATIONS)


@pytest.mark.parametrize(
    "target, dtype",
    per_device(cpu=[torch.float32], cuda=[torch.float32, torch.float16, torch.bfloat16]),
)
@pytest.mark.parametrize("kind", list(ACTIVATIONS))
def test_activation_propagates_nan(target, dtype, kind):
    x = eager_input(with_specials(3, 41, dtype=dtype), kind)
    got = run_layer(add_activation(kind), [x], target)
    want = ACTIVATIONS[kind][1](x.float()).to(dtype)
    assert_nans_at(got, want)
    close(got, want, dtype)


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("kind", ["relu", "clip", "hardswish", "hardsigmoid", "leaky_relu"])
def test_activation_nan_in_a_fused_pointwise_chain(target, kind):
    # (x * 2 + b) -> activation -> - 1: three pointwise layers that fuse_pointwise makes one
    # fused_pointwise (generated CUDA code on the GPU), each NaN of x or b surviving.
    x = with_specials(4, 37)
    b = with_specials(37, seed=1)
    attrs, fn = ACTIVATIONS[kind]
    net = kiln.Network()
    xt, bt = net.add_input("x", "float32", x.shape), net.add_input("b", "float32", b.shape)
    two, one = net.add_constant(torch.tensor(2.0)), net.add_constant(torch.tensor(1.0))
    h = net.add_elementwise(net.add_elementwise(xt, two, "mul"), bt, "add")
    h = net.add_layer("activation", [h], {"type": kind, **attrs})
    net.mark_output(net.add_elementwise(h, one, "sub"), "y")
    plan = build_plan(net, target)
    assert [layer["op"] for layer in plan.layers()] == ["fused_pointwise"]
    got = run_plan(plan, {"x": x, "b": b}, target)["y"]
    want = fn(x * 2 + b) - 1
    assert_nans_at(got, want)
    close(got, want)


# ---- elementwise max / min ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, dtype",
    per_device(cpu=[torch.float32], cuda=[torch.float32, torch.float16, torch.bfloat16]),
)
@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("fused", [False, True], ids=["standalone", "fused"])
def test_elementwise_max_min_propagate_nan_from_either_side(target, dtype, op, fused):
    a = with_specials(5, 29, dtype=dtype)
    b = with_specials(5, 29, dtype=dtype, seed=3)
    eager = torch.maximum if op == "max" else torch.minimum
    net = kiln.Network()
    at, bt = net.add_input("a", a.dtype, a.shape), net.add_input("b", b.dtype, b.shape)
    if fused:  # op(-a, -b) and op(-b, -a): the negations and both ops make one fused_pointwise
        at = net.add_layer("unary", [at], {"op": "neg"})
        bt = net.add_layer("unary", [bt], {"op": "neg"})
    net.mark_output(net.add_elementwise(at, bt, op), "ab")
    net.mark_output(net.add_elementwise(bt, at, op), "ba")
    plan = build_plan(net, target)
    if fused:
        assert [layer["op"] for layer in plan.layers()] == ["fused_pointwise"]
    got = run_plan(plan, {"a": a, "b": b}, target)
    x, y = (-a, -b) if fused else (a, b)
    for name, want in (("ab", eager(x, y)), ("ba", eager(y, x))):
        assert_nans_at(got[name], want)
        close(got[name], want, dtype)


@pytest.mark.parametrize("target", DEVICES)
def test_integer_max_min_are_unchanged(target):
    a = torch.randint(-50, 50, (4, 33), dtype=torch.int32)
    b = torch.randint(-50, 50, (4, 33), dtype=torch.int32)
    for op, eager in (("max", torch.maximum), ("min", torch.minimum)):
        got = run_layer(lambda net, x, y, op=op: net.add_elementwise(x, y, op), [a, b], target)
        assert torch.equal(got, eager(a, b))


# ---- reductions and max pooling ----------------------------------------------------------------


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("axes", [(1,), (0,), (0, 1)])
def test_reduce_max_min_propagate_nan(target, op, axes):
    x = with_specials(6, 300)
    x[4] = torch.randn(300)  # a row without NaN must keep its true max
    got = run_layer(lambda net, t: net.add_reduce(t, op, axes), [x], target)
    want = torch.amax(x, axes) if op == "max" else torch.amin(x, axes)
    assert_nans_at(got, want)
    close(got, want)


@pytest.mark.parametrize(
    "target, dtype", per_device(cpu=[torch.float32], cuda=[torch.float32, torch.float16])
)
def test_max_pooling_propagates_nan(target, dtype):
    # float16 on CUDA: cuDNN's pooling (CUDNN_PROPAGATE_NAN).
    x = with_specials(2, 3, 9, 9, dtype=dtype)
    got = run_layer(lambda net, t: net.add_pooling(t, "max", 3, stride=2, padding=1), [x], target)
    want = F.max_pool2d(x.float(), 3, stride=2, padding=1).to(dtype)
    assert_nans_at(got, want)
    close(got, want, dtype)


# ---- convolution epilogue -----------------------------------------------------------------------

CONV_EPILOGUES = {
    "relu": ({"type": "relu"}, F.relu),  # cuDNN's fused conv + bias + relu on the GPU
    "clip": ({"type": "clip", "alpha": 0.0, "beta": 6.0}, F.relu6),  # Kiln's own epilogue
    "leaky_relu": ({"type": "leaky_relu", "alpha": 0.1}, lambda y: F.leaky_relu(y, 0.1)),
}


@pytest.mark.parametrize(
    "target, dtype",
    per_device(cpu=[torch.float32], cuda=[torch.float32, torch.float16]),
)
@pytest.mark.parametrize("act", list(CONV_EPILOGUES))
@pytest.mark.parametrize("residual", [False, True])
def test_convolution_epilogue_propagates_nan(target, dtype, act, residual):
    # conv + bias (+ residual add) + activation: fuse_conv_epilogue makes one convolution. A NaN
    # in x spreads to the 3x3 window around it in every output channel; it must come out NaN.
    # float16 convolutions run channels last on CUDA. CUDA pins cuDNN's implicit-GEMM algorithm
    # (tactic 1): FFT and Winograd ones spread a NaN over whole tiles (see the per-algorithm test).
    attrs, fn = CONV_EPILOGUES[act]
    x = torch.randn(2, 8, 10, 10)
    x[0, 1, 4, 4] = NAN
    x[1, 5, 0, 9] = NAN
    w, b = torch.randn(16, 8, 3, 3) * 0.2, torch.randn(16)
    r = torch.randn(2, 16, 10, 10)
    r[1, 3, 7, 2] = NAN
    net = kiln.Network()
    xt = net.add_input("x", dtype, x.shape)
    pin = {"tactic": 1} if target == "cuda" else {}
    h = net.add_layer("convolution", [xt, w.to(dtype), b.to(dtype)], {"pads": [1, 1], **pin})
    if residual:
        h = net.add_elementwise(h, net.add_input("r", dtype, r.shape), "add")
    net.mark_output(net.add_layer("activation", [h], attrs), "y")
    plan = build_plan(net, target)
    convs = [layer for layer in plan.layers() if layer["op"] == "convolution"]
    assert len(convs) == 1 and convs[0]["attrs"].get("activation") == attrs["type"], plan.layers()
    feed = {"x": x.to(dtype)} | ({"r": r.to(dtype)} if residual else {})
    got = run_plan(plan, feed, target)["y"]
    y = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    want = fn(y + r.double() if residual else y).to(dtype)
    assert_nans_at(got, want)
    # float16: FP32 accumulation of 72 products rounded to float16 once (torch's float16 conv
    # rounds differently): a few ulp of the output.
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 4e-3, "atol": 4e-3}
    close(got, want, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("tactic", range(8))
def test_cudnn_fused_relu_keeps_nan_for_every_algorithm(tactic):
    # cuDNN's cudnnConvolutionBiasActivationForward per algorithm (the layer's tactic). Algorithms
    # cuDNN does not support for this shape are refused at run time: skip those.
    x = torch.randn(2, 8, 12, 12)
    x[0, 0, 6, 6] = NAN
    w, b = torch.randn(16, 8, 3, 3), torch.randn(16)
    net = kiln.Network()
    conv = net.add_layer(
        "convolution",
        [net.add_input("x", "float32", x.shape), w, b],
        {"pads": [1, 1], "activation": "relu", "tactic": tactic},
    )
    net.mark_output(conv, "y")
    try:
        got = run_plan(build_plan(net, "cuda"), {"x": x}, "cuda")["y"]
    except kiln.KilnError as e:
        pytest.skip(f"cuDNN algorithm {tactic} refused: {e}")
    want = F.relu(F.conv2d(x, w, b, padding=1))
    # FFT and Winograd algorithms spread a NaN over their whole tile: every NaN of torch's must be
    # NaN here; more is the algorithm's nature, not an epilogue that dropped them.
    assert bool(got.isnan()[want.isnan()].all()), f"tactic {tactic} dropped NaN"


# ---- fully_connected epilogue -------------------------------------------------------------------

FC_EPILOGUES = {
    "relu": F.relu,  # cuBLASLt's RELU / RELU_BIAS epilogue on the GPU
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),  # cuBLASLt's GELU for 16-bit outputs
    "clip": lambda y: torch.clamp(y, -1.0, 2.0),  # Kiln's own epilogue
}


def fc_net(x, w, b, act, dtype, tactic=None):
    net = kiln.Network()
    attrs = {"activation": act} | ({"alpha": -1.0, "beta": 2.0} if act == "clip" else {})
    if tactic is not None:
        attrs["tactic"] = tactic
    inputs = [net.add_input("x", dtype, x.shape), w.to(dtype)] + (
        [b.to(dtype)] if b is not None else []
    )
    net.mark_output(net.add_layer("fully_connected", inputs, attrs), "y")
    return net


def fc_case(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[0, k // 2] = NAN  # row 0 of y is NaN
    x[m - 1, 0] = INF  # row m - 1: +-inf or NaN, as torch computes it
    w, b = torch.randn(n, k, generator=g) / k**0.5, torch.randn(n, generator=g)
    return x, w, b


@pytest.mark.parametrize(
    "target, dtype",
    per_device(cpu=[torch.float32], cuda=[torch.float32, torch.float16, torch.bfloat16]),
)
@pytest.mark.parametrize("act", list(FC_EPILOGUES))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mnk", [(16, 16, 16), (37, 24, 72), (256, 128, 512)])
def test_fully_connected_epilogue_propagates_nan(target, dtype, act, bias, mnk):
    x, w, b = fc_case(*mnk)
    b = b if bias else None
    got = run_plan(build_plan(fc_net(x, w, b, act, dtype), target), {"x": x.to(dtype)}, target)["y"]
    assert_fc_result(got, x, w, b, act, dtype)


def assert_fc_result(got, x, w, b, act, dtype):
    """NaN where torch has NaN, the rest close to the float64 product of the dtype's values."""
    y = x.to(dtype).double() @ w.to(dtype).double().T + (
        b.to(dtype).double() if b is not None else 0
    )
    want = FC_EPILOGUES[act](y).to(dtype)
    assert_nans_at(got, want)
    # 16-bit: FP32 accumulation over K terms rounded once; bfloat16's 8-bit mantissa dominates.
    tol = {
        torch.float32: {"rtol": 3e-5, "atol": 3e-5},
        torch.float16: {"rtol": 4e-3, "atol": 4e-3},
        torch.bfloat16: {"rtol": 3e-2, "atol": 3e-2},
    }[dtype]
    close(got, want, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "mnk", [(16, 16, 16), (8, 8, 8), (17, 9, 40), (37, 24, 72), (1, 512, 4096)]
)
def test_fully_connected_relu_keeps_nan_for_every_tactic(dtype, mnk):
    # Every cuBLASLt algorithm the heuristic offers (tactics 0-7): an H200 probe found one
    # (float32 16x16x16) whose RELU epilogue returned 0 for NaN. Tactics the heuristic does not
    # offer for the shape are refused: skip those.
    x, w, b = fc_case(*mnk)
    y = x.to(dtype).double() @ w.to(dtype).double().T + b.to(dtype).double()
    want = F.relu(y).to(dtype)
    ran = 0
    for tactic in range(8):
        net = fc_net(x, w, b, "relu", dtype, tactic)
        try:
            got = run_plan(build_plan(net, "cuda"), {"x": x.to(dtype)}, "cuda")["y"]
        except kiln.KilnError:
            continue
        ran += 1
        assert_nans_at(got, want)
    assert ran >= 1


@pytest.mark.parametrize("target", DEVICES)
def test_matmul_bias_relu_fused_by_the_builder_propagates_nan(target):
    # matmul + bias add + relu + residual add: fuse_gemm_epilogue makes one fully_connected.
    x, w, b = fc_case(24, 40, 32)
    r = torch.randn(24, 40)
    r[5, 7] = NAN
    net = kiln.Network()
    xt, rt_ = net.add_input("x", "float32", x.shape), net.add_input("r", "float32", r.shape)
    h = net.add_layer("matmul", [xt, net.add_constant(w.T.contiguous())], {})
    h = net.add_layer(
        "activation", [net.add_elementwise(h, net.add_constant(b), "add")], {"type": "relu"}
    )
    net.mark_output(net.add_elementwise(h, rt_, "add"), "y")
    plan = build_plan(net, target)
    assert [layer["op"] for layer in plan.layers()] == ["fully_connected"], plan.layers()
    got = run_plan(plan, {"x": x, "r": r}, target)["y"]
    want = (F.relu(x.double() @ w.double().T + b.double()) + r.double()).float()
    assert_nans_at(got, want)
    close(got, want, rtol=3e-5, atol=3e-5)


# ---- kiln.compile end to end ---------------------------------------------------------------------

needs_runtime = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")


class Model(nn.Module):
    """Every NaN-sensitive converter in one graph: conv + relu6 (conv epilogue), max pooling,
    maximum/minimum, hardtanh, clamp with one bound, linear + relu (GEMM epilogue)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x, y):
        h = F.max_pool2d(F.relu6(self.conv(x)), 2)
        h = torch.maximum(h, y) - torch.minimum(y, h)
        h = F.hardtanh(h, -2.0, 2.0) + torch.clamp(h, min=0.5)
        return F.relu(self.fc(h.flatten(1))), h, torch.clamp(y, max=0.0)


@needs_runtime
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_model_propagates_nan_and_inf(device):
    # NaN and +-inf enter through y (x stays finite, so no convolution algorithm's own NaN
    # spreading is involved); eager runs on the CPU.
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(2, 3, 8, 8)
    y = torch.randn(2, 8, 4, 4)
    y[1, 2, 1, 1], y[1, 0, 0, 0], y[0, 4, 2, 2], y[0, 5, 3, 0] = NAN, INF, -INF, NAN
    want = model(x, y)
    compiled = kiln.compile(
        model.to(device),
        [x.to(device), y.to(device)],
        device=device,
        min_block_size=1,
        require_full_compilation=True,
    )
    got = compiled(x.to(device), y.to(device))
    assert want[1].isnan().any() and want[2].isnan().any() and want[2].isinf().any()
    for g, w in zip(got, want, strict=True):
        assert_nans_at(g.cpu(), w)
        close(g.cpu(), w, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", list(FC_EPILOGUES))
@pytest.mark.parametrize(
    "mnk", [(1, 8, 48), (1, 1000, 440), (3, 37, 72), (16, 24, 4096), (17, 9, 40)]
)
def test_fully_connected_gemv_tactic_matches_and_keeps_nan(dtype, act, mnk):
    """Tactic 8 (cuda_fully_connected_gemv, one warp per output with the epilogue): 16-byte loads
    (K a multiple of the vector), scalar loads (K = 72 in float32 is, 40 in float16 is not), and
    above 16 rows cuBLASLt's heuristic algorithm; NaN and inf rows as torch computes them."""
    x, w, b = fc_case(*mnk)
    plan = build_plan(fc_net(x, w, b, act, dtype, tactic=8), "cuda", tactic_timing=False)
    described = "\n".join(kiln.Engine(plan, device="cuda").describe())
    assert "cuda_fully_connected_gemv" in described, described
    got = run_plan(plan, {"x": x.to(dtype)}, "cuda")["y"]
    assert_fc_result(got, x, w, b, act, dtype)


@pytest.mark.gpu
def test_fully_connected_gemv_tactic_adds_the_residual_after_the_activation():
    x, w, b = torch.randn(2, 64), torch.randn(24, 64) / 8, torch.randn(24)
    r = torch.randn(2, 24)
    net = kiln.Network()
    t = net.add_input("x", "float16", [2, 64])
    rt = net.add_input("r", "float16", [2, 24])
    attrs = {"activation": "sigmoid", "residual": 1, "tactic": 8}
    net.mark_output(net.add_layer("fully_connected", [t, w.half(), b.half(), rt], attrs), "y")
    plan = build_plan(net, "cuda", tactic_timing=False)
    got = run_plan(plan, {"x": x.half(), "r": r.half()}, "cuda")["y"]
    want = (
        torch.sigmoid(x.half().double() @ w.half().double().T + b.half().double())
        + r.half().double()
    )
    close(got, want.half(), rtol=4e-3, atol=4e-3)
