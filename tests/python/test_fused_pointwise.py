"""fused_pointwise and the fusion passes (fuse_pointwise, fuse_gelu, fuse_rms_norm).

Reference backend: a plan built with optimization_level=0 (no fusion) and one built with the
default level must give bit-identical results, since every fused instruction keeps the semantics
(and the per-step rounding) of the layer it came from. Structure: Plan.layers() shows what fused.
GPU: the NVRTC-generated kernel against eager torch, and a reloaded plan that does not recompile.
"""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from layer_util import TOLERANCE, build_plan, run_plan

import kiln

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def ops(plan):
    return [layer["op"] for layer in plan.layers()]


def fused(plan):
    return [layer for layer in plan.layers() if layer["op"] == "fused_pointwise"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert (
            torch.equal(a[k], b[k])
            or torch.equal(a[k].isnan(), b[k].isnan())
            and torch.equal(a[k].nan_to_num(), b[k].nan_to_num())
        ), k


def assert_fusion_is_exact(net, feed, **kwargs):
    """Unfused (level 0) and fused plans agree bit for bit; returns the fused plan."""
    plain = build_plan(net, level=0, **kwargs)
    fast = build_plan(net, **kwargs)
    assert "fused_pointwise" not in ops(plain)
    assert_same(run_plan(plain, feed), run_plan(fast, feed))
    return fast


def const(value, dtype=torch.float32):
    return torch.tensor(value, dtype=dtype)


# ---- networks -----------------------------------------------------------------------------------


def chain_net(dtype, shape=(3, 7, 13), bias_shape=(13,), dynamic=False):
    """y = sigmoid(gelu(x * b + 0.5) - x) with a broadcast bias and a scalar constant."""
    net = kiln.Network()
    in_shape = [-1, *shape[1:]] if dynamic else list(shape)
    # bfloat16 bindings have no numpy dtype for the host path: float32 bindings, cast inside
    bf16 = dtype == torch.bfloat16
    x = net.add_input("x", torch.float32 if bf16 else dtype, in_shape)
    if bf16:
        x = net.add_cast(x, dtype, name="to_bf16")
    b = net.add_constant((torch.randn(bias_shape)).to(dtype))
    h = net.add_elementwise(x, b, "mul", name="scale")
    h = net.add_elementwise(h, const(0.5, dtype), "add", name="shift")
    h = net.add_activation(h, "gelu", name="act")
    h = net.add_elementwise(h, x, "sub", name="residual")
    h = net.add_activation(h, "sigmoid", name="squash")
    net.mark_output(net.add_cast(h, torch.float32, name="from_bf16") if bf16 else h, "y")
    return net


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_shape", [(13,), (7, 1), (1, 1, 1)])
def test_chain_fused_equals_unfused(dtype, bias_shape):
    torch.manual_seed(0)
    net = chain_net(dtype, bias_shape=bias_shape)
    x = torch.randn(3, 7, 13).to(dtype)
    plan = assert_fusion_is_exact(net, {"x": x.float() if dtype == torch.bfloat16 else x})
    groups = fused(plan)
    assert len(groups) == 1
    names = "scale,shift,act,residual,squash"
    if dtype == torch.bfloat16:
        names = f"to_bf16,{names},from_bf16"
    assert groups[0]["attrs"]["fused"] == names
    assert ops(plan) == ["fused_pointwise"]


def test_fused_matches_torch():
    torch.manual_seed(0)
    net = kiln.Network()
    x = net.add_input("x", "float32", (4, 9))
    b = torch.randn(9)
    h = net.add_elementwise(x, b, "add")
    net.mark_output(net.add_activation(net.add_layer("unary", [h], {"op": "exp"}), "tanh"), "y")
    xv = torch.randn(4, 9)
    got = run_plan(build_plan(net), {"x": xv})["y"]
    torch.testing.assert_close(got, torch.tanh(torch.exp(xv + b)), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dynamic_dims(dtype):
    torch.manual_seed(0)
    net = chain_net(dtype, dynamic=True)
    profile = {"x": ([1, 7, 13], [3, 7, 13], [6, 7, 13])}
    plain, fast = build_plan(net, level=0, profile=profile), build_plan(net, profile=profile)
    assert len(fused(fast)) == 1
    for batch in (1, 5, 6):
        feed = {"x": torch.randn(batch, 7, 13).to(dtype)}
        assert_same(run_plan(plain, feed), run_plan(fast, feed))


def test_empty_tensor():
    net = chain_net(torch.float32, dynamic=True)
    profile = {"x": ([0, 7, 13], [3, 7, 13], [6, 7, 13])}
    fast = build_plan(net, profile=profile)
    assert len(fused(fast)) == 1
    assert run_plan(fast, {"x": torch.randn(0, 7, 13)})["y"].shape == (0, 7, 13)


def test_intermediate_with_outside_consumers_stays_an_output():
    torch.manual_seed(0)
    net = kiln.Network()
    x = net.add_input("x", "float32", (5, 11))
    t = net.add_elementwise(x, const(2.0), "mul", name="t")
    r = net.add_activation(t, "relu", name="r")
    u = net.add_elementwise(r, const(1.0), "add", name="u")
    s = net.add_reduce(t, "sum", axes=[1], keepdim=True, name="s")  # an outside consumer of t
    net.mark_output(u, "u")
    net.mark_output(s, "s")
    net.mark_output(r, "r")  # an intermediate that is also a network output
    plan = assert_fusion_is_exact(net, {"x": torch.randn(5, 11)})
    (group,) = fused(plan)
    assert group["attrs"]["fused"] == "t,r,u"
    assert len(group["outputs"]) == 3  # t (for the reduce), r and u


def test_no_fusion_through_an_outside_path():
    # softmax written out: t = x*2; m = max(t); e = exp(t - m); e / sum(e). Fusing t with t - m
    # would need m (computed from t) inside the group: a cycle. The result must stay exact.
    torch.manual_seed(0)
    net = kiln.Network()
    x = net.add_input("x", "float32", (4, 10))
    t = net.add_elementwise(x, const(2.0), "mul", name="t")
    m = net.add_reduce(t, "max", axes=[1], keepdim=True, name="m")
    e = net.add_layer(
        "unary", [net.add_elementwise(t, m, "sub", name="d")], {"op": "exp"}, name="e"
    )
    s = net.add_reduce(e, "sum", axes=[1], keepdim=True, name="s")
    net.mark_output(net.add_elementwise(e, s, "div", name="p"), "p")
    plan = assert_fusion_is_exact(net, {"x": torch.randn(4, 10)})
    groups = [g["attrs"]["fused"] for g in fused(plan)]
    assert groups == ["d,e"]


def test_bool_int_where_and_casts():
    torch.manual_seed(0)
    net = kiln.Network()
    x = net.add_input("x", "float16", (6, 7))
    k = net.add_input("k", "int32", (7,))
    pos = net.add_elementwise(x, const(0.0, torch.float16), "gt", name="pos")
    small = net.add_elementwise(x, const(0.1, torch.float16), "mul", name="small")
    y = net.add_where(pos, x, small, name="leaky")
    ki = net.add_elementwise(
        net.add_elementwise(k, const(3, torch.int32), "mul", name="k3"),
        const(-7, torch.int32),
        "floor_div",
        name="kdiv",
    )
    kf = net.add_cast(ki, "float16", name="kf")
    z = net.add_elementwise(y, kf, "add", name="sum")
    flag = net.add_layer("unary", [pos], {"op": "not"}, name="neg")
    net.mark_output(net.add_cast(z, "float32", name="out"), "z")
    net.mark_output(net.add_cast(flag, "int32", name="flag"), "flag")
    feed = {"x": torch.randn(6, 7).half(), "k": torch.randint(-50, 50, (7,), dtype=torch.int32)}
    plan = assert_fusion_is_exact(net, feed)
    # the [7] int32 chain and the [6, 7] float16 chain have different shapes: two groups
    assert sorted(g["attrs"]["fused"] for g in fused(plan)) == [
        "k3,kdiv,kf",
        "pos,small,leaky,sum,neg,out,flag",
    ]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_and_pinned_layer(precision):
    torch.manual_seed(0)
    net = chain_net(torch.float32)
    feed = {"x": torch.randn(3, 7, 13) * 3}
    plan = assert_fusion_is_exact(net, feed, precisions=[precision], pin={"act": "float32"})
    program = fused(plan)[0]["attrs"]["program"]
    # the pinned GELU runs in float32 between casts of the reduced chain
    assert "cast float32" in program and "activation gelu" in program


def test_program_op_directly_and_its_errors():
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3))
    b = net.add_input("b", "float32", (3,))
    attrs = {
        "program": "input 0 float32; input 1 float32; elementwise mul %0 %1; "
        "activation clip -0.5 0.5 20 %2; const float32 2; elementwise add %3 %4",
        "outputs": [5, 2],
    }
    layer = net.add_layer("fused_pointwise", [x, b], attrs, name="fp")
    net.mark_output(layer.outputs[0], "y")
    net.mark_output(layer.outputs[1], "p")
    xv, bv = torch.randn(2, 3), torch.randn(3)
    out = run_plan(build_plan(net), {"x": xv, "b": bv})
    torch.testing.assert_close(out["y"], (xv * bv).clamp(-0.5, 0.5) + 2)
    torch.testing.assert_close(out["p"], xv * bv)

    bad = {
        "input 0 float32; unary exp %1": "not defined",
        "input 0 float32; frobnicate %0": "unknown instruction",
        "input 0 float16": "loads it as float16",
        "input 0 float32; elementwise mull %0 %0": "unknown elementwise op",
        "input 0 float32; cast int64 %0": "int32 and bool values only",
    }
    for program, message in bad.items():
        last = program.count(";")
        with pytest.raises(kiln.KilnError, match=f"layer 'bad.*{message}"):
            net.add_layer(
                "fused_pointwise", [x], {"program": program, "outputs": [last]}, name="bad"
            )
    with pytest.raises(kiln.KilnError, match="layer 'bad'.*never loaded"):
        net.add_layer(
            "fused_pointwise", [x, b], {"program": "input 0 float32", "outputs": [0]}, name="bad"
        )


def test_shape_arithmetic_is_not_fused():
    # int32 shape values (tracked on the host) stay in their own layers so reshapes keep them.
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 6))
    shape = net.add_cast(net.add_shape(x), "int32")
    half = net.add_elementwise(shape, np.array([1, 2], dtype=np.int32), "floor_div")
    doubled = net.add_elementwise(half, np.array([2, 1], dtype=np.int32), "mul")
    y = net.add_reshape(x, net.add_cast(doubled, "int64"))
    net.mark_output(net.add_activation(y, "relu"), "y")
    plan = build_plan(net, profile={"x": ([1, 6], [2, 6], [4, 6])})
    assert not fused(plan)
    xv = torch.randn(2, 6)
    torch.testing.assert_close(run_plan(plan, {"x": xv})["y"], xv.reshape(4, 3).relu())


# ---- patterns -----------------------------------------------------------------------------------


SQRT_HALF = math.sqrt(0.5)


def gelu_erf_net(sqrt_half=SQRT_HALF, use_div=False, extra_output=False):
    net = kiln.Network()
    x = net.add_input("x", "float32", (4, 33))
    if use_div:
        d = net.add_elementwise(x, const(math.sqrt(2.0)), "div")
    else:
        d = net.add_elementwise(x, const(sqrt_half), "mul")
    e = net.add_layer("unary", [d], {"op": "erf"})
    a = net.add_elementwise(e, const(1.0), "add")
    h = net.add_elementwise(x, const(0.5), "mul")
    net.mark_output(net.add_elementwise(h, a, "mul"), "y")
    if extra_output:
        net.mark_output(e, "e")
    return net


def gelu_tanh_net(coeff=0.044715, exponent=3.0):
    # GPT-2's NewGELUActivation as torch.export writes it
    net = kiln.Network()
    x = net.add_input("x", "float32", (4, 33))
    p = net.add_elementwise(x, const(exponent), "pow")
    c = net.add_elementwise(p, const(coeff), "mul")
    s = net.add_elementwise(x, c, "add")
    u = net.add_elementwise(s, const(math.sqrt(2.0 / math.pi)), "mul")
    t = net.add_activation(u, "tanh")
    a = net.add_elementwise(t, const(1.0), "add")
    h = net.add_elementwise(x, const(0.5), "mul")
    net.mark_output(net.add_elementwise(h, a, "mul"), "y")
    return net


def activation_types(plan):
    return [layer["attrs"]["type"] for layer in plan.layers() if layer["op"] == "activation"]


@pytest.mark.parametrize("use_div", [False, True])
def test_gelu_erf_pattern(use_div):
    plan = build_plan(gelu_erf_net(use_div=use_div))
    assert ops(plan) == ["activation"] and activation_types(plan) == ["gelu"]
    xv = torch.randn(4, 33) * 3
    torch.testing.assert_close(
        run_plan(plan, {"x": xv})["y"], torch.nn.functional.gelu(xv), **TOLERANCE[torch.float32]
    )


def test_gelu_tanh_pattern():
    plan = build_plan(gelu_tanh_net())
    assert ops(plan) == ["activation"] and activation_types(plan) == ["gelu_tanh"]
    xv = torch.randn(4, 33) * 3
    want = torch.nn.functional.gelu(xv, approximate="tanh")
    torch.testing.assert_close(run_plan(plan, {"x": xv})["y"], want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    "net",
    [
        gelu_erf_net(sqrt_half=0.7071),  # not 1/sqrt(2)
        gelu_erf_net(extra_output=True),  # erf(...) is used elsewhere
        gelu_tanh_net(coeff=0.0447),
        gelu_tanh_net(exponent=2.0),
    ],
)
def test_gelu_near_misses_do_not_fire(net):
    plan = build_plan(net)
    assert not {"gelu", "gelu_tanh"} & set(activation_types(plan))


def rms_net(axis=-1, exponent=2.0, reduce_op="mean", eps=1e-6, x_dtype="float32", weight_len=16):
    """T5LayerNorm: x * rsqrt(mean(x.float()^2, -1, keepdim) + eps), cast back, times weight."""
    net = kiln.Network()
    x = net.add_input("x", x_dtype, (3, 5, 16))
    xf = net.add_cast(x, "float32") if x_dtype != "float32" else x
    sq = net.add_elementwise(xf, const(exponent), "pow")
    var = net.add_reduce(sq, reduce_op, axes=[axis], keepdim=True)
    r = net.add_layer("unary", [net.add_elementwise(var, const(eps), "add")], {"op": "rsqrt"})
    h = net.add_elementwise(xf, r, "mul")
    if x_dtype != "float32":
        h = net.add_cast(h, x_dtype)
    w = net.add_constant((torch.rand(weight_len) + 0.5).to(getattr(torch, x_dtype)))
    net.mark_output(net.add_elementwise(w, h, "mul"), "y")
    return net, w


@pytest.mark.parametrize("x_dtype", ["float32", "float16"])
def test_rms_norm_pattern(x_dtype):
    net, _ = rms_net(x_dtype=x_dtype)
    plan = build_plan(net)
    assert ops(plan) == ["rms_norm"]
    (layer,) = plan.layers()
    assert layer["attrs"]["eps"] == pytest.approx(1e-6, rel=1e-6)
    dtype = getattr(torch, x_dtype)
    xv = torch.randn(3, 5, 16).to(dtype)
    unfused = run_plan(build_plan(net, level=0), {"x": xv})["y"]
    torch.testing.assert_close(run_plan(plan, {"x": xv})["y"], unfused, **TOLERANCE[dtype])


@pytest.mark.parametrize(
    "kwargs",
    [{"axis": 1}, {"exponent": 3.0}, {"reduce_op": "sum"}, {"weight_len": 1}],
)
def test_rms_norm_near_misses_do_not_fire(kwargs):
    net, _ = rms_net(**kwargs)
    assert "rms_norm" not in ops(build_plan(net))


# ---- GPU ----------------------------------------------------------------------------------------


def torch_chain(x, b):
    xd, bd = x.double(), b.double()
    return torch.sigmoid(torch.nn.functional.gelu(xd * bd + 0.5) - xd)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,bias_shape",
    [((3, 7, 13), (13,)), ((2, 5, 1031), (5, 1)), ((4096,), (4096,)), ((1,), (1,))],
)
def test_cuda_matches_torch(dtype, shape, bias_shape):
    torch.manual_seed(0)
    net = kiln.Network()
    x = net.add_input("x", dtype, shape)
    b = torch.randn(bias_shape).to(dtype)
    h = net.add_elementwise(net.add_elementwise(x, b, "mul"), const(0.5, dtype), "add")
    h = net.add_elementwise(net.add_activation(h, "gelu"), x, "sub")
    net.mark_output(net.add_activation(h, "sigmoid"), "y")
    plan = build_plan(net, target="cuda")
    assert [layer["kernel"] for layer in fused(plan)] == ["cuda_fused_pointwise"]
    xv = torch.randn(shape).to(dtype)
    got = run_plan(plan, {"x": xv}, target="cuda")["y"]
    # one rounding per step (five steps) in float16/bfloat16: a few ulp, so twice the one-step
    # tolerance
    tol = {k: 2 * v for k, v in TOLERANCE[dtype].items()}
    torch.testing.assert_close(got.double(), torch_chain(xv, b).to(dtype).double(), **tol)
    # and the fused CUDA kernel against the unfused CUDA layers
    plain = run_plan(build_plan(net, target="cuda", level=0), {"x": xv}, target="cuda")["y"]
    torch.testing.assert_close(got.double(), plain.double(), **tol)


@pytest.mark.gpu
def test_cuda_bool_int_where_and_unaligned_views():
    torch.manual_seed(0)
    net = kiln.Network()
    x = net.add_input("x", "float16", (6, 7))
    k = net.add_input("k", "int32", (7,))
    pos = net.add_elementwise(x, const(0.0, torch.float16), "gt")
    y = net.add_where(pos, x, net.add_elementwise(x, const(0.1, torch.float16), "mul"))
    ki = net.add_elementwise(
        net.add_elementwise(k, const(3, torch.int32), "mul"), const(-7, torch.int32), "floor_div"
    )
    z = net.add_elementwise(y, net.add_cast(ki, "float16"), "add")
    net.mark_output(net.add_cast(z, "float32"), "z")
    feed = {"x": torch.randn(6, 7).half(), "k": torch.randint(-50, 50, (7,), dtype=torch.int32)}
    got = run_plan(build_plan(net, target="cuda"), feed, target="cuda")["z"]
    want = run_plan(build_plan(net, target="cuda", level=0), feed, target="cuda")["z"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_dynamic_and_vector_tails():
    torch.manual_seed(0)
    net = chain_net(torch.float32, shape=(3, 7, 13), dynamic=True)
    profile = {"x": ([1, 7, 13], [3, 7, 13], [9, 7, 13])}
    plan, plain = (
        build_plan(net, target="cuda", profile=profile),
        build_plan(net, target="cuda", level=0, profile=profile),
    )
    for batch in (1, 4, 9):  # 91, 364, 819 elements: vector path with and without a tail
        feed = {"x": torch.randn(batch, 7, 13)}
        torch.testing.assert_close(
            run_plan(plan, feed, target="cuda")["y"],
            run_plan(plain, feed, target="cuda")["y"],
            **TOLERANCE[torch.float32],
        )


@pytest.mark.gpu
def test_cuda_plan_reload_does_not_recompile(tmp_path):
    torch.manual_seed(0)
    plan = build_plan(chain_net(torch.float16), target="cuda")
    (layer,) = fused(plan)
    assert layer["attrs"]["cubin"] and layer["attrs"]["cubin_arch"] > 0
    path = tmp_path / "plan.kiln"
    plan.save(str(path))
    xv = torch.randn(3, 7, 13).half()
    want = run_plan(plan, {"x": xv}, target="cuda")["y"]
    torch.save(xv, tmp_path / "x.pt")
    # A fresh process has an empty module cache: only the stored cubin can spare it NVRTC.
    script = textwrap.dedent(
        f"""
        import torch, kiln
        from kiln import _C
        plan = _C.Plan.load({str(path)!r})
        ctx = kiln.Engine(plan, device="cuda").create_execution_context()
        y = ctx.execute({{"x": torch.load({str(tmp_path / "x.pt")!r}).cuda()}})["y"]
        torch.cuda.synchronize()
        torch.save(y.cpu(), {str(tmp_path / "y.pt")!r})
        print("compilations", _C.nvrtc_compile_count())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "compilations 0" in out.stdout, out.stdout + out.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), want)
