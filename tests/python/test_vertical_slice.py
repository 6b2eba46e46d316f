"""The vertical slice through every engine layer, compared with PyTorch on fresh random inputs:
Network (inputs, weights, matmul, bias add, relu) -> Builder -> Plan bytes -> Engine ->
ExecutionContext, on the CPU reference backend and on the GPU."""

import numpy as np
import pytest
import torch
from layer_util import build_plan

import kiln


def make_mlp(d_in=48, d_hidden=33, d_out=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(d_in, d_hidden), torch.nn.ReLU(), torch.nn.Linear(d_hidden, d_out)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    net = kiln.Network()
    x = net.add_input("x", torch.float32, (-1, d_in))
    h = net.add_matmul(
        x, model[0].weight, transpose_b=True, name="fc1"
    )  # torch weights are [out, in]
    h = net.add_elementwise(h, model[0].bias, "add", name="fc1_bias")
    h = net.add_activation(h, "relu", name="relu")
    y = net.add_matmul(h, model[2].weight, transpose_b=True, name="fc2")
    y = net.add_elementwise(y, model[2].bias, "add", name="fc2_bias")
    net.mark_output(y, "y")
    return model.eval(), net, d_in


def build(net, d_in, target):
    plan = build_plan(net, target, profile={"x": ((1, d_in), (8, d_in), (64, d_in))})
    return kiln.Engine(kiln.Plan.deserialize(plan.serialize()), device=target)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_reference_backend_matches_torch(batch):
    model, net, d_in = make_mlp()
    engine = build(net, d_in, "cpu")
    x = torch.randn(batch, d_in)
    y = engine.create_execution_context().execute({"x": x})["y"]
    # float32 end to end; the reference accumulates in double, torch in float32: ~1e-6 apart.
    torch.testing.assert_close(y, model(x).detach(), rtol=1e-5, atol=1e-5)


def test_reference_accepts_numpy_and_returns_numpy():
    model, net, d_in = make_mlp()
    engine = build(net, d_in, "cpu")
    x = np.random.default_rng(1).standard_normal((5, d_in)).astype(np.float32)
    y = engine.create_execution_context().execute({"x": x})["y"]
    assert isinstance(y, np.ndarray) and y.shape == (5, 17)
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_wrong_dtype_and_out_of_profile_shapes_are_refused():
    _, net, d_in = make_mlp()
    ctx = build(net, d_in, "cpu").create_execution_context()
    with pytest.raises(TypeError, match="expects float32"):
        ctx.execute({"x": np.zeros((2, d_in), dtype=np.float64)})
    with pytest.raises(kiln.KilnError, match="outside optimization profile"):
        ctx.execute({"x": np.ones((65, d_in), dtype=np.float32)})
    with pytest.raises(kiln.KilnError, match="missing input 'x'"):
        ctx.execute({})


def test_bad_layer_is_refused_with_its_name():
    net = kiln.Network()
    a = net.add_input("a", "float32", (4, 5))
    b = net.add_input("b", "float32", (6, 7))
    with pytest.raises(kiln.KilnError, match=r"layer 'mm' \(matmul\): inner dims differ"):
        net.add_matmul(a, b, name="mm")


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_cuda_matches_torch(batch):
    model, net, d_in = make_mlp()
    engine = build(net, d_in, "cuda")
    assert engine.device_type() == "cuda"
    x = torch.randn(batch, d_in, device="cuda")
    y = engine.create_execution_context().execute({"x": x})["y"]
    assert y.is_cuda
    torch.cuda.synchronize()
    # Pure FP32 GEMMs (no TF32) on both sides; different summation orders: ~1e-6 apart.
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            want = model.cuda()(x)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_numpy_path_and_reference_agree():
    _, net, d_in = make_mlp()
    x = np.random.default_rng(2).standard_normal((9, d_in)).astype(np.float32)
    y_gpu = build(net, d_in, "cuda").create_execution_context().execute({"x": x})["y"]
    y_ref = build(net, d_in, "cpu").create_execution_context().execute({"x": x})["y"]
    np.testing.assert_allclose(y_gpu, y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_slice(dtype):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(40, 24, generator=g) * 0.2).to(dtype)
    b = torch.randn(1, 24, generator=g).to(dtype)
    net = kiln.Network()
    x = net.add_input("x", dtype, (-1, 40))
    y = net.add_activation(net.add_elementwise(net.add_matmul(x, w), b, "add"), "relu")
    net.mark_output(y, "y")
    config = kiln.BuilderConfig(device="cuda")
    config.add_optimization_profile({"x": ((1, 40), (16, 40), (32, 40))})
    engine = kiln.Engine(kiln.Builder().build(net, config), device="cuda")
    xv = torch.randn(31, 40, device="cuda").to(dtype)
    out = engine.create_execution_context().execute({"x": xv})["y"]
    want = torch.relu(xv.float() @ w.cuda().float() + b.cuda().float())
    # FP32 accumulation, one rounding of the GEMM result and one of the bias add to 16 bits:
    # relative error ~2 ulp of float16 (2^-10) / bfloat16 (2^-7).
    tol = 4e-3 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
