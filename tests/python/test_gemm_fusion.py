"""GEMM epilogues: fully_connected with activation / residual (reference and CUDA vs eager), the
fuse_gemm_epilogue and fuse_parallel_gemms passes (structure through Plan.layers(), and numbers:
the plan with the passes equals the plan without them)."""

import pytest
import torch
from layer_util import build_plan, run_layer, run_plan

import kiln

# Reference: float64 accumulation against torch's float64 -> float32 rounding and the activation's
# math library. CUDA: FP32 accumulation in a different order than torch (a few ulp per sqrt(K)
# terms); 16-bit outputs rounded once from FP32 (2 ulp) plus torch's own rounding of the GEMM
# result before its activation (eager rounds between the ops; the epilogue does not).
TOL = {
    torch.float32: {"rtol": 3e-5, "atol": 3e-5},
    torch.float16: {"rtol": 4e-3, "atol": 4e-3},
    torch.bfloat16: {"rtol": 3e-2, "atol": 3e-2},
}

ACTS = {
    "none": lambda x: x,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "silu": torch.nn.functional.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "leaky_relu": lambda x: torch.nn.functional.leaky_relu(x, 0.2),
}


def eager_fc(x, w, b, act, r):
    y = x.double() @ w.double().T
    if b is not None:
        y = y + b.double()
    y = ACTS[act](y)
    if r is not None:
        y = y + r.double()
    return y


def fc_layer(w, b, act, with_residual):
    def add(net, x, *rest):
        return net.add_fully_connected(
            x,
            w,
            b,
            activation=act,
            residual=rest[0] if with_residual else None,
            alpha=0.2 if act == "leaky_relu" else None,
        )

    return add


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12), (12,), (0, 12)])
def test_fully_connected_epilogue_reference(shape, act, bias, residual):
    w, b = torch.randn(7, 12), torch.randn(7) if bias else None
    x = torch.randn(shape)
    r = torch.randn(*shape[:-1], 7)
    inputs = [x, r] if residual else [x]
    got = run_layer(fc_layer(w, b, act, residual), inputs, "cpu")
    want = eager_fc(x, w, b, act, r if residual else None).float()
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_fully_connected_epilogue_errors():
    net = kiln.Network()
    x = net.add_input("x", "float32", [4, 12])
    r = net.add_input("r", "float32", [4, 8])
    w = torch.randn(7, 12)
    with pytest.raises(kiln.KilnError, match="fc1.*residual must have the output's shape"):
        net.add_fully_connected(x, w, residual=r, name="fc1")
    with pytest.raises(kiln.KilnError, match="fc2.*unknown activation 'swish'"):
        net.add_fully_connected(x, w, activation="swish", name="fc2")
    with pytest.raises(kiln.KilnError, match="fc3.*residual=1"):
        net.add_layer("fully_connected", [x, w, torch.randn(7), torch.randn(4, 7)], {}, "fc3")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("residual", [True, False])
# N 64 / K 96: 16-byte vector epilogue; N 7 / K 13: scalar epilogue and 2-byte alignment.
@pytest.mark.parametrize("m,n,k", [(33, 64, 96), (5, 7, 13), (0, 8, 16), (4, 8, 0)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_fully_connected_epilogue_cuda(dtype, act, bias, residual, m, n, k, dynamic):
    w = torch.randn(n, k, dtype=dtype) / max(k, 1) ** 0.5
    b = torch.randn(n, dtype=dtype) if bias else None
    x, r = torch.randn(m, k, dtype=dtype), torch.randn(m, n, dtype=dtype)
    inputs = [x, r] if residual else [x]
    if dynamic and residual:
        return  # run_layer makes only input 0 dynamic; the residual's shape must match
    got = run_layer(fc_layer(w, b, act, residual), inputs, "cuda", dynamic=dynamic)
    want = eager_fc(x, w, b, act, r if residual else None).to(dtype)
    torch.testing.assert_close(got, want, **TOL[dtype])


# ---------------------------------------------------------------------------------------------
# Passes.


def mlp_block(act="gelu", transpose_b=False, bias_shape=(16,), bias_first=False):
    """x -> matmul(W const) -> + b -> act -> + x (residual): the addmm pattern of the models."""
    net = kiln.Network()
    x = net.add_input("x", "float32", [3, 5, 16])
    w = torch.randn(16, 16) / 4
    mm = net.add_matmul(
        x, w.T.contiguous() if transpose_b else w, transpose_b=transpose_b, name="mm"
    )
    b = net.add_constant(torch.randn(bias_shape))
    add = (
        net.add_elementwise(b, mm, "add", name="bias_add")
        if bias_first
        else net.add_elementwise(mm, b, "add", name="bias_add")
    )
    a = net.add_activation(add, act, name="act")
    res = net.add_elementwise(a, x, "add", name="res_add")
    net.mark_output(res, "y")
    return net


def assert_same_results(net, feed, target="cpu", profile=None, **tol):
    fused = build_plan(net, target, level=1, profile=profile)
    plain = build_plan(net, target, level=0, profile=profile)
    got, want = run_plan(fused, feed, target), run_plan(plain, feed, target)
    for name in want:
        torch.testing.assert_close(got[name], want[name], **tol)
    return fused


@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("bias_shape", [(16,), (1, 1, 16)])
@pytest.mark.parametrize("bias_first", [False, True])
def test_fuse_gemm_epilogue_matmul_bias_act_residual(transpose_b, bias_shape, bias_first):
    net = mlp_block("gelu", transpose_b, bias_shape, bias_first)
    plan = assert_same_results(net, {"x": torch.randn(3, 5, 16)}, rtol=1e-5, atol=1e-5)
    layers = plan.layers()
    assert [layer["op"] for layer in layers] == ["fully_connected"]
    attrs = layers[0]["attrs"]
    assert attrs["fused"] == "mm,bias_add,act,res_add"
    assert attrs["activation"] == "gelu" and attrs["residual"] == 1
    assert [t[2] for t in layers[0]["inputs"]] == [[3, 5, 16], [16, 16], [16], [3, 5, 16]]


@pytest.mark.parametrize("bias_first", [False, True])
def test_fuse_gemm_epilogue_through_leading_dim_reshapes(bias_first):
    # torch's Linear on [B, S, K] after decomposition: view -> mm -> view -> add(bias) -> gelu, or
    # (addmm) view -> mm -> add(bias) -> view -> gelu.
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 5, 16])
    flat = net.add_layer("reshape", [x], {"shape": [10, 16]}, "r1")
    y = net.add_matmul(flat, torch.randn(16, 8), name="mm")
    b = torch.randn(8)
    if bias_first:
        y = net.add_elementwise(y, b, "add", name="add")
    y = net.add_layer("reshape", [y], {"shape": [2, 5, 8]}, "r2")
    if not bias_first:
        y = net.add_elementwise(y, b, "add", name="add")
    net.mark_output(net.add_activation(y, "gelu", name="act"), "y")
    plan = assert_same_results(net, {"x": torch.randn(2, 5, 16)}, rtol=1e-5, atol=1e-5)
    (layer,) = plan.layers()
    order = "mm,add,r2,act" if bias_first else "mm,r2,add,act"
    assert layer["op"] == "fully_connected" and layer["attrs"]["fused"] == order
    assert layer["inputs"][0][2] == [2, 5, 16]
    assert layer["outputs"][0][2] == [2, 5, 8]


def test_fuse_gemm_epilogue_reads_rows_through_a_view():
    # The GEMM's input [10, 16] comes from [2, 5, 4, 4] (heads merged back, as after attention):
    # no reshape of [2, 5, 16] to read instead, so the fused layer reads a view of its input as
    # [2, 5, 16] and the residual add joins the epilogue.
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 5, 4, 4])
    r = net.add_input("r", "float32", [2, 5, 8])
    flat = net.add_layer("reshape", [x], {"shape": [10, 16]}, "merge")
    y = net.add_matmul(flat, torch.randn(16, 8), name="mm")
    y = net.add_layer("reshape", [y], {"shape": [2, 5, 8]}, "split")
    net.mark_output(net.add_elementwise(y, r, "add", name="res"), "y")
    feed = {"x": torch.randn(2, 5, 4, 4), "r": torch.randn(2, 5, 8)}
    plan = assert_same_results(net, feed, rtol=1e-5, atol=1e-5)
    assert [layer["op"] for layer in plan.layers()] == ["reshape", "reshape", "fully_connected"]
    fc = plan.layers()[-1]
    assert fc["attrs"]["residual"] == 1 and fc["attrs"]["fused"] == "mm,split,res"
    assert fc["inputs"][0][2] == [2, 5, 16]


def test_fuse_gemm_epilogue_leaves_a_trailing_reshape():
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 5, 16])
    flat = net.add_layer("reshape", [x], {"shape": [10, 16]}, "r1")
    y = net.add_elementwise(
        net.add_matmul(flat, torch.randn(16, 8), name="mm"), torch.randn(8), "add"
    )
    net.mark_output(net.add_layer("reshape", [y], {"shape": [2, 5, 8]}, "r2"), "y")
    plan = assert_same_results(net, {"x": torch.randn(2, 5, 16)}, rtol=1e-5, atol=1e-5)
    assert [layer["op"] for layer in plan.layers()] == ["reshape", "fully_connected", "reshape"]


def test_fuse_gemm_epilogue_keeps_other_reshapes():
    # The second reshape regroups rows ([10, 8] -> [5, 16]): the GEMM output must stay as it is.
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 5, 16])
    flat = net.add_layer("reshape", [x], {"shape": [10, 16]}, "r1")
    mm = net.add_matmul(flat, torch.randn(16, 8), name="mm")
    back = net.add_layer("reshape", [mm], {"shape": [5, 16]}, "r2")
    net.mark_output(net.add_elementwise(back, torch.randn(16), "add", name="add"), "y")
    plan = assert_same_results(net, {"x": torch.randn(2, 5, 16)}, rtol=1e-5, atol=1e-5)
    assert [layer["op"] for layer in plan.layers()] == [
        "reshape",
        "matmul",
        "reshape",
        "elementwise",
    ]


def test_fuse_gemm_epilogue_linear_then_relu():
    # fully_connected (nn.Linear with its bias) + relu: only the activation is left to fuse.
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 12])
    fc = net.add_fully_connected(x, torch.randn(8, 12), torch.randn(8), name="fc")
    net.mark_output(net.add_activation(fc, "relu", name="relu"), "y")
    profile = {"x": ([1, 12], [4, 12], [9, 12])}
    plan = assert_same_results(net, {"x": torch.randn(6, 12)}, profile=profile)
    (layer,) = plan.layers()
    assert layer["attrs"]["fused"] == "fc,relu" and layer["attrs"]["activation"] == "relu"


def test_fuse_gemm_epilogue_nothing_to_fuse():
    # No change: B is not a constant; the GEMM result has a second consumer; the add broadcasts a
    # column (neither a bias vector nor a same-shape residual). (mm3 reads an input of its own:
    # two plain GEMMs on one input would merge, fuse_parallel_gemms.)
    net = kiln.Network()
    a = net.add_input("a", "float32", [4, 6])
    a3 = net.add_input("a3", "float32", [4, 6])
    b = net.add_input("b", "float32", [6, 5])
    net.mark_output(
        net.add_elementwise(net.add_matmul(a, b, name="mm1"), torch.randn(5), "add"), "y1"
    )
    mm2 = net.add_matmul(a, torch.randn(6, 5), name="mm2")
    net.mark_output(net.add_elementwise(mm2, torch.randn(5), "add", name="add2"), "y2")
    net.mark_output(net.add_activation(mm2, "relu"), "y3")
    mm3 = net.add_matmul(a3, torch.randn(6, 5), name="mm3")
    net.mark_output(net.add_elementwise(mm3, torch.randn(4, 1), "add", name="add3"), "y4")
    plan = build_plan(net, level=1)
    ops = [layer["op"] for layer in plan.layers()]
    assert ops.count("matmul") == 3 and "fully_connected" not in ops
    assert not any("fused" in layer["attrs"] for layer in plan.layers())


def test_fuse_gemm_epilogue_stops_at_shared_tensor():
    # The bias-add result is a network output and feeds a relu: the bias fuses (the fused layer
    # writes that output), the relu stays a layer of its own. A constant of the output's shape is
    # a residual like any other tensor.
    net = kiln.Network()
    a = net.add_input("a", "float32", [4, 6])
    add = net.add_elementwise(
        net.add_matmul(a, torch.randn(6, 5), name="mm"), torch.randn(5), "add", name="add"
    )
    net.mark_output(add, "y1")
    net.mark_output(net.add_activation(add, "relu", name="relu"), "y2")
    mm2 = net.add_matmul(a, torch.randn(6, 5), name="mm2")
    net.mark_output(net.add_elementwise(mm2, torch.randn(4, 5), "add", name="add2"), "y3")
    plan = assert_same_results(net, {"a": torch.randn(4, 6)}, rtol=1e-5, atol=1e-5)
    layers = plan.layers()
    assert [layer["op"] for layer in layers] == ["fully_connected", "activation", "fully_connected"]
    assert layers[0]["attrs"]["fused"] == "mm,add" and "activation" not in layers[0]["attrs"]
    assert layers[2]["attrs"]["fused"] == "mm2,add2" and layers[2]["attrs"]["residual"] == 1


def qkv_network(bias=True):
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 7, 16])
    outs = []
    for name, n in (("q", 16), ("k", 8), ("v", 8)):
        fc = net.add_fully_connected(
            x, torch.randn(n, 16), torch.randn(n) if bias else None, name=name
        )
        outs.append(fc)
    # A transpose (as the heads' permutes) is no epilogue: the projections stay plain.
    net.mark_output(outs[0], "q_out")
    net.mark_output(net.add_layer("transpose", [outs[1]], {"perm": [0, 2, 1]}, "k_t"), "k_out")
    net.mark_output(outs[2], "v_out")
    return net


@pytest.mark.parametrize("bias", [True, False])
def test_fuse_parallel_gemms_qkv(bias):
    net = qkv_network(bias)
    profile = {"x": ([1, 7, 16], [2, 7, 16], [4, 7, 16])}
    plan = assert_same_results(
        net, {"x": torch.randn(3, 7, 16)}, profile=profile, rtol=1e-5, atol=1e-5
    )
    layers = plan.layers()
    assert [layer["op"] for layer in layers] == ["fully_connected", "split", "transpose"]
    assert layers[0]["attrs"]["fused"] == "q,k,v"
    assert layers[0]["inputs"][1][2] == [32, 16]
    assert layers[1]["attrs"]["sizes"] == [16, 8, 8]


def test_fuse_parallel_gemms_nothing_to_fuse():
    # Different inputs, and an in-feature mismatch, leave the layers alone.
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 16])
    y = net.add_input("y", "float32", [2, 16])
    net.mark_output(net.add_fully_connected(x, torch.randn(4, 16), name="a"), "a")
    net.mark_output(net.add_fully_connected(y, torch.randn(4, 16), name="b"), "b")
    plan = build_plan(net, level=1)
    assert [layer["op"] for layer in plan.layers()] == ["fully_connected", "fully_connected"]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", [None, "fp16"])
def test_fused_passes_cuda(precision):
    net = mlp_block("gelu")
    feed = {"x": torch.randn(3, 5, 16)}
    fused = build_plan(net, "cuda", precisions=[precision] if precision else None)
    got = run_plan(fused, feed, "cuda")["y"]
    want = run_plan(build_plan(net, level=0), feed)["y"]
    tol = TOL[torch.float16] if precision else TOL[torch.float32]
    torch.testing.assert_close(got, want, **tol)
    net = qkv_network()
    profile = {"x": ([1, 7, 16], [2, 7, 16], [4, 7, 16])}
    assert_same_results(net, {"x": torch.randn(3, 7, 16)}, "cuda", profile, **TOL[torch.float32])


@pytest.mark.gpu
def test_fully_connected_tactics_cuda():
    # Every tactic either runs and gives the heuristic's result or is refused with a clear error.
    x, w, b = torch.randn(64, 96), torch.randn(48, 96), torch.randn(48)
    want = eager_fc(x, w, b, "relu", None).float()
    ran = 0
    for tactic in range(8):
        net = kiln.Network()
        t = net.add_input("x", "float32", [64, 96])
        fc = net.add_layer("fully_connected", [t, w, b], {"activation": "relu", "tactic": tactic})
        net.mark_output(fc, "y")
        try:
            got = run_plan(build_plan(net, "cuda", level=1), {"x": x}, "cuda")["y"]
        except kiln.KilnError as e:
            assert "tactic" in str(e)
            continue
        torch.testing.assert_close(got, want, **TOL[torch.float32])
        ran += 1
    assert ran >= 1
