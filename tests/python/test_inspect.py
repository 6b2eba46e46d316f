"""kiln.inspect and `kiln inspect`: the optimized layer list, the memory plan and the per-layer
profile (ExecutionContext profiling mode) of a plan, on the reference backend (CPU) and on CUDA."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from layer_util import build_plan, run_plan

import kiln


def _network(fused: bool = True) -> kiln.Network:
    """x[-1, 16] -> matmul -> +bias -> relu -> matmul -> y, with a "fused" attribute on relu as
    the fusion passes set it (the original layer names, comma-separated)."""
    rng = np.random.default_rng(0)
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 16))
    h = net.add_matmul(
        x, net.add_constant(rng.standard_normal((16, 32)).astype(np.float32)), name="mm1"
    )
    h = net.add_elementwise(
        h, net.add_constant(rng.standard_normal(32).astype(np.float32)), "add", name="bias1"
    )
    attrs = {"type": "relu", "alpha": 0.0}
    if fused:
        attrs["fused"] = "orig_relu, orig_clamp"
    h = net.add_layer("activation", [h], attrs, name="relu1")
    y = net.add_matmul(
        h, net.add_constant(rng.standard_normal((32, 8)).astype(np.float32)), name="mm2"
    )
    net.mark_output(y, "y")
    return net


def _plan(target: str = "cpu", optimization_level: int = 0):
    # Level 0 keeps the layers as written (no fusion), so the test can name them.
    profile = {"x": ((1, 16), (4, 16), (8, 16))}
    return build_plan(_network(), target, level=optimization_level, profile=profile)


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "net.plan"
    _plan().save(str(path))
    return path


def test_inspect_layers_and_memory(plan_file):
    info = kiln.inspect(plan_file)
    names = [la.name for la in info.layers]
    assert "mm1" in names and "mm2" in names and "relu1" in names
    plan = kiln.Plan.load(str(plan_file))
    assert [la.kernel for la in info.layers] == list(plan.kernels)
    relu = next(la for la in info.layers if la.name == "relu1")
    assert relu.op == "activation"
    assert relu.fused == ["orig_relu", "orig_clamp"]
    assert relu.dtypes == "float32->float32"
    assert relu.outputs[0][2] == [-1, 32]  # dynamic batch
    assert info.inputs == [("x", "float32", [-1, 16])]
    assert info.outputs == [("y", "float32", [-1, 8])]
    assert info.profiles == [{"x": ([1, 16], [4, 16], [8, 16])}]
    # The memory plan: intermediate activations live in the arena, sized for the max profile
    # (8 rows x 32 float32 = 1024 bytes), without overlapping while both are live.
    mem = info.memory
    assert mem.arena_bytes == plan.arena_bytes > 0
    assert mem.constant_bytes == (16 * 32 + 32 + 32 * 8) * 4
    assert mem.tensors, "no arena tensors"
    for _, offset, size in mem.tensors:
        assert 0 <= offset and offset + size <= mem.arena_bytes
    assert max(size for _, _, size in mem.tensors) == 8 * 32 * 4
    text = info.text()
    for word in (
        "relu1",
        "orig_relu,orig_clamp",
        "activation arena",
        "profile 0",
        "x float32[-1,16]",
    ):
        assert word in text, word
    assert "time ms" not in text  # no profile yet


def test_inspect_accepts_plan_bytes_and_engine(plan_file):
    plan = kiln.Plan.load(str(plan_file))
    a = kiln.inspect(plan).to_dict()
    b = kiln.inspect(plan.serialize()).to_dict()
    c = kiln.inspect(kiln.Engine(plan, "cpu")).to_dict()
    assert a == b == c
    json.dumps(a)  # plain data
    with pytest.raises(TypeError, match="kiln.inspect takes"):
        kiln.inspect(42)


def test_profile_reference(plan_file):
    info = kiln.inspect(plan_file).profile({"x": (3, 16)}, runs=3, device="cpu")
    assert info.profile_device == "cpu"
    assert info.profile_shapes == {"x": [3, 16]}
    assert all(la.time_ms is not None and la.time_ms >= 0 for la in info.layers)
    assert info.total_ms == pytest.approx(sum(la.time_ms for la in info.layers))
    text = info.text()
    assert "time ms" in text and "host clock" in text and "slowest:" in text
    # Default shapes: profile 0's opt shape.
    assert kiln.inspect(plan_file).profile(runs=1).profile_shapes == {"x": [4, 16]}
    with pytest.raises(kiln.KilnError, match="outside optimization profile"):
        kiln.inspect(plan_file).profile({"x": (9, 16)}, runs=1, device="cpu")


def test_profiling_mode_of_the_context():
    """set_profiling/layer_times on the engine itself; results unchanged by profiling."""
    engine = kiln.Engine(_plan(), "cpu")
    ctx = engine.create_execution_context()
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    with pytest.raises(kiln.KilnError, match="set_profiling"):
        ctx.layer_times()
    plain = ctx.execute({"x": x})["y"]
    ctx.set_profiling(True)
    assert ctx._ctx.profiling
    with pytest.raises(kiln.KilnError, match="no profiled enqueue"):
        ctx.layer_times()
    profiled = ctx.execute({"x": x})["y"]
    times = ctx.layer_times()
    assert len(times) == len(engine.plan.layers())
    assert all(t >= 0 for t in times) and sum(times) > 0
    np.testing.assert_array_equal(plain, profiled)
    ctx.set_profiling(False)
    ctx.execute({"x": x})
    with pytest.raises(kiln.KilnError, match="no profiled enqueue"):
        ctx.layer_times()
    assert engine.device_bytes == 0 and ctx.device_bytes == 0  # reference: nothing on a GPU


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "kiln", "inspect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_inspect(plan_file):
    out = _cli(plan_file)
    assert out.returncode == 0, out.stderr
    assert "relu1" in out.stdout and "activation arena" in out.stdout
    out = _cli(plan_file, "--profile", "--shapes", "x=2x16", "--runs", "2", "--no-arena")
    assert out.returncode == 0, out.stderr
    assert "time ms" in out.stdout and "x [2,16]" in out.stdout
    assert "activation arena (offset" not in out.stdout
    out = _cli(plan_file, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {la["name"] for la in data["layers"]} >= {"mm1", "relu1", "mm2"}


def test_cli_inspect_errors(plan_file, tmp_path):
    out = _cli(plan_file, "--profile", "--shapes", "x=2by16")
    assert out.returncode == 2 and "NAME=DxDxD" in out.stderr
    out = _cli(plan_file, "--shapes", "x=2x16")
    assert out.returncode == 2 and "--profile" in out.stderr
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"not a plan")
    out = _cli(bad)
    assert out.returncode == 2 and "kiln: error:" in out.stderr


@pytest.mark.gpu
def test_profile_cuda(tmp_path):
    """CUDA events around each layer: every layer takes GPU time; results match a plain run."""
    plan = _plan("cuda")
    info = kiln.inspect(plan).profile({"x": (8, 16)}, runs=5, device="cuda")
    assert info.profile_device == "cuda"
    assert all(la.time_ms is not None and la.time_ms > 0 for la in info.layers)
    assert "CUDA events" in info.text()
    engine = kiln.Engine(plan, "cuda")
    ctx = engine.create_execution_context()
    x = np.random.default_rng(2).standard_normal((8, 16)).astype(np.float32)
    plain = ctx.execute({"x": x})["y"]
    ctx.set_profiling(True)
    np.testing.assert_array_equal(ctx.execute({"x": x})["y"], plain)
    assert len(ctx.layer_times()) == len(info.layers)
    assert engine.device_bytes == info.memory.constant_bytes
    # The arena fits the shapes in use (at most the plan's); "profile_max" holds the plan's.
    assert 0 < ctx.arena_bytes <= info.memory.arena_bytes
    assert ctx.device_bytes == ctx.arena_bytes + info.memory.workspace_bytes
    full = engine.create_execution_context(memory="profile_max")
    assert full.device_bytes == info.memory.arena_bytes + info.memory.workspace_bytes
    path = tmp_path / "net.plan"
    plan.save(str(path))
    out = _cli(path, "--profile", "--runs", "3")
    assert out.returncode == 0, out.stderr
    assert "device cuda" in out.stdout


def test_inspect_shows_what_the_builder_fused():
    """At the default optimization level the GEMM epilogue pass folds bias1 and relu1 into mm1;
    inspection names the layers it absorbed."""
    layers = {la.name: la for la in kiln.inspect(_plan(optimization_level=2)).layers}
    assert set(layers) == {"mm1", "mm2"}
    assert layers["mm1"].op == "fully_connected"
    assert layers["mm1"].fused == ["mm1", "bias1", "relu1"]
    assert layers["mm2"].fused == []


def test_int8_convolution_section_and_its_reference_values():
    # A quantized convolution written with the network API (the builder makes them on CUDA from
    # calibrated models): inspect lists it with its scales, and the reference backend computes
    # quantize -> int32 sums scaled per channel -> requantize.
    rng = np.random.default_rng(1)
    net = kiln.Network()
    x = net.add_input("x", "float32", (1, 16, 4, 4))
    s = net.add_constant(np.array([0.1], np.float32))
    xq = net.add_layer("quantize", [x, s], {"quant_min": -127, "quant_max": 127}, name="q")
    w = rng.integers(-127, 128, (8, 16, 1, 1)).astype(np.int8)
    scale_bias = np.stack([rng.uniform(1e-3, 2e-3, 8), rng.uniform(-1, 1, 8)]).astype(np.float32)
    attrs = {"quantized": 1, "out_dtype": "float32", "input_scale": 0.1, "activation": "relu"}
    attrs.update(output_inv_scale=10.0, output_quant_min=-127, output_quant_max=127)
    yq = net.add_layer(
        "convolution", [xq, net.add_constant(w), net.add_constant(scale_bias)], attrs, name="qconv"
    )
    net.mark_output(net.add_layer("dequantize", [yq, s], {}, name="dq"), "y")
    plan = build_plan(net, "cpu", level=0)
    text = kiln.inspect(plan).text()
    assert "INT8 convolutions" in text, text
    assert "qconv: input scale 0.1 -> int8 (scale 0.1, range -127..127)" in text, text
    xv = rng.uniform(-5, 5, (1, 16, 4, 4)).astype(np.float32)
    got = run_plan(plan, {"x": torch.from_numpy(xv)})["y"].numpy()
    q = np.clip(np.rint(xv * np.float32(10.0)), -127, 127)  # 1 / 0.1 in float32 is 10
    acc = np.einsum("kc,nchw->nkhw", w[:, :, 0, 0].astype(np.float64), q)
    v = np.maximum(acc * scale_bias[0][None, :, None, None] + scale_bias[1][None, :, None, None], 0)
    want = np.clip(np.rint(v.astype(np.float32) * np.float32(10.0)), -127, 127) * np.float32(0.1)
    np.testing.assert_array_equal(got, want.astype(np.float32))
