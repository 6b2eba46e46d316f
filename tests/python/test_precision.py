"""BuilderConfig precisions: reduced precision inside the engine, declared dtypes kept, per-layer
overrides, TF32 marks. The reference backend runs float16/bfloat16 layers by rounding each
layer's result to that dtype, so the numerics of a reduced-precision plan show on the CPU too."""

import pytest
import torch
from layer_util import build_plan, builder_config, run_plan

import kiln


def mlp_network():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 16))
    h = net.add_fully_connected(x, model[0].weight.detach(), model[0].bias.detach(), name="fc1")
    h = net.add_activation(h, "gelu", name="act")
    y = net.add_fully_connected(h, model[2].weight.detach(), model[2].bias.detach(), name="fc2")
    net.mark_output(y, "y")
    return net, model


PROFILE = {"x": ([1, 16], [4, 16], [8, 16])}


def layer_dtypes(plan):
    return {layer["name"]: layer["outputs"][0][1] for layer in plan.layers()}


@pytest.mark.parametrize("precision,dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_reduced_precision_keeps_bindings(precision, dtype):
    net, model = mlp_network()
    plan = build_plan(net, "cpu", precisions=[precision], profile=PROFILE)
    dtypes = layer_dtypes(plan)
    # The GELU is fused into fc1 (fuse_gemm_epilogue).
    assert dtypes["fc1"] == dtype and "act" not in dtypes and dtypes["fc2"] == dtype
    casts = [layer for layer in plan.layers() if layer["op"] == "cast"]
    assert {c["attrs"]["to"] for c in casts} == {dtype, "float32"}  # x in, y out
    x = torch.randn(5, 16)
    got = run_plan(plan, {"x": x})["y"]
    assert got.dtype == torch.float32
    with torch.no_grad():
        want = model(x)
    tol = 2e-2 if precision == "fp16" else 1e-1
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # It really ran reduced: the float32 plan is much closer to torch.
    plan32 = build_plan(net, "cpu", profile=PROFILE)
    err32 = (run_plan(plan32, {"x": x})["y"] - want).abs().max()
    assert err32 < 1e-5 < (got - want).abs().max()


def test_fp16_wins_over_bf16():
    net, _ = mlp_network()
    plan = build_plan(net, "cpu", precisions=["fp16", "bf16"], profile=PROFILE)
    assert layer_dtypes(plan)["fc1"] == "float16"


def test_layer_override_pins_float32():
    net, _ = mlp_network()
    config = builder_config("cpu", precisions=[torch.float16], profile=PROFILE)
    config.set_layer_precision("fc2", torch.float32)
    plan = kiln.Builder().build(net, config)
    dtypes = layer_dtypes(plan)
    assert dtypes["fc1"] == "float16" and dtypes["fc2"] == "float32"
    assert config.layer_precisions == {"fc2": "float32"}


def test_layer_override_alone_reduces_one_layer():
    net, _ = mlp_network()
    # optimization_level 0: fuse_pointwise would merge `act` with its casts (test_fused_pointwise
    # checks that pinned precisions survive fusion)
    plan = build_plan(net, "cpu", level=0, profile=PROFILE, pin={"act": "bfloat16"})
    dtypes = layer_dtypes(plan)
    assert dtypes == {**dtypes, "fc1": "float32", "act": "bfloat16", "fc2": "float32"}


def test_unknown_layer_and_precision_refused():
    net, _ = mlp_network()
    config = builder_config("cpu", profile=PROFILE)
    config.set_layer_precision("nope", "float16")
    with pytest.raises(kiln.KilnError, match="no such layer"):
        kiln.Builder().build(net, config)
    with pytest.raises(ValueError, match="unknown precision 'fp4'"):
        kiln.BuilderConfig(precisions=["fp4"])


def test_tf32_marks_float32_gemms_only():
    net, _ = mlp_network()
    plan = build_plan(net, "cpu", precisions=["tf32"], profile=PROFILE)
    marks = {layer["name"]: layer["attrs"].get("allow_tf32") for layer in plan.layers()}
    assert marks["fc1"] == 1 and marks["fc2"] == 1
    assert all(mark is None for name, mark in marks.items() if name not in ("fc1", "fc2"))
    plan = build_plan(net, "cpu", profile=PROFILE)
    assert all("allow_tf32" not in layer["attrs"] for layer in plan.layers())


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16", "tf32"])
def test_cuda_reduced_precision(precision):
    net, model = mlp_network()
    plan = build_plan(net, "cuda", precisions=[precision], profile=PROFILE)
    x = torch.randn(7, 16)
    got = run_plan(plan, {"x": x}, "cuda")["y"]
    with torch.no_grad():
        want = model(x)
    tol = {"fp16": 2e-2, "bf16": 1e-1, "tf32": 5e-3}[precision]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
