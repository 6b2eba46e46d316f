"""Plugins (core/plugin.h, kiln/plugins.py, docs/plugins.md): the example plugin library
(examples/plugins/erfinv) loads, its layer runs in networks and compiled models on the reference
backend against torch.erfinv, plans and saved modules carry it, and loading one without the
library fails naming the plugin. Python converters (kiln.converter) convert custom torch ops and
take precedence over built-in converters."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import kiln
from kiln import plugins
from kiln import runtime as rt

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("KILN_BUILD_DIR", ROOT / "build"))
LIBRARY = BUILD / "examples" / "plugins" / "erfinv" / "libkiln_erfinv.so"
sys.path.insert(0, str(ROOT / "examples" / "plugins" / "erfinv"))
import erfinv_torch  # noqa: E402 (the example's torch custom op kiln_example::erfinv and converter)


@pytest.fixture(scope="module", autouse=True)
def erfinv_plugin():
    assert LIBRARY.exists(), f"{LIBRARY} is missing: build Kiln first (tools/build.sh)"
    kiln.load_plugin_library(LIBRARY)
    kiln.load_plugin_library(LIBRARY)  # a second load of the same file does nothing more


def _erfinv_network(dtype="float32"):
    net = kiln.Network()
    x = net.add_input("x", dtype, [-1, 6])
    layer = net.add_plugin("kiln_example::erfinv", [x], {"scale": 2.0})
    net.mark_output(layer.output, "y")
    return net, layer


def _build(net, precisions=(), batch=(1, 4, 8)):
    config = kiln.BuilderConfig(device="cpu", precisions=list(precisions))
    config.add_optimization_profile({"x": tuple([b, 6] for b in batch)})
    return kiln.Builder().build(net, config)


def _inputs(n, dtype=torch.float32):
    return (torch.rand(n, 6) * 1.98 - 0.99).to(dtype)


def test_registered_and_added_to_a_network():
    assert "kiln_example::erfinv 1" in kiln.registered_plugins()
    _, layer = _erfinv_network()
    assert layer.op == "plugin:kiln_example::erfinv"
    assert layer.name.startswith("erfinv")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_runs_on_the_reference_backend_with_dynamic_batch(dtype):
    name = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    net, _ = _erfinv_network(name)
    engine = kiln.Engine(_build(net), device="cpu")
    ctx = engine.create_execution_context()
    for n in (1, 5, 8):
        x = _inputs(n, dtype)
        want = (2 * torch.erfinv(x.float())).to(dtype)
        # torch's float32 erfinv is within an ulp; the plugin rounds the exact value
        ulp = {torch.float32: 2e-7, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(ctx.execute({"x": x})["y"], want, rtol=ulp, atol=ulp)


def test_refused_dtype_keeps_the_layer_out_of_it():
    net = kiln.Network()
    x = net.add_input("x", "int32", [2, 6])
    with pytest.raises(kiln.KilnError, match="erfinv takes float32, float16 or bfloat16"):
        net.add_plugin("kiln_example::erfinv", [x])


def test_fp16_build_runs_it_in_fp16_between_layers():
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 6])
    t = net.add_layer("activation", [x], {"type": "tanh"})
    e = net.add_plugin("kiln_example::erfinv", [t], {"scale": 0.5})
    net.mark_output(net.add_layer("unary", [e], {"op": "exp"}).output, "y")
    plan = _build(net, precisions=["fp16"])
    (line,) = [x for x in kiln.inspect(plan).text().splitlines() if "plugin:kiln_example" in x]
    assert "float16->float16" in line and "plugin kiln_example::erfinv 1" in line, line
    x = torch.randn(4, 6)
    got = kiln.Engine(plan, device="cpu").create_execution_context().execute({"x": x})["y"]
    torch.testing.assert_close(
        got, torch.exp(0.5 * torch.erfinv(torch.tanh(x))), rtol=2e-2, atol=2e-2
    )


def test_unknown_plugin_and_fields_are_refused_by_name():
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 6])
    with pytest.raises(kiln.KilnError, match="plugin 'nope::erfinv' is not registered"):
        net.add_plugin("nope::erfinv", [x])
    with pytest.raises(kiln.KilnError, match="unknown attribute 'scael'.*scale"):
        net.add_plugin("kiln_example::erfinv", [x], {"scael": 1.0})
    with pytest.raises(kiln.KilnError, match="set by Kiln"):
        net.add_plugin("kiln_example::erfinv", [x], {"plugin_version": "1"})


def test_a_layer_of_another_plugin_version_is_refused_by_name():
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 6])
    with pytest.raises(kiln.KilnError, match="version '0'.*this process has version '1'"):
        net.add_layer("plugin:kiln_example::erfinv", [x], {"plugin_version": "0"})


LOAD_PLAN = textwrap.dedent(
    """
    import sys, torch, kiln
    plan = kiln.Plan.deserialize(open(sys.argv[1], "rb").read())
    x = torch.full((2, 6), 0.5)
    y = kiln.Engine(plan, device="cpu").create_execution_context().execute({"x": x})["y"]
    print("ok", float(y[0, 0]))
    """
)


def test_a_plan_needs_its_plugin_library(tmp_path):
    net, _ = _erfinv_network()
    path = tmp_path / "erfinv.plan"
    path.write_bytes(_build(net).serialize())
    env = {k: v for k, v in os.environ.items() if k != "KILN_PLUGIN_LIBRARIES"}
    run = subprocess.run(
        [sys.executable, "-c", LOAD_PLAN, str(path)], capture_output=True, text=True, env=env
    )
    assert run.returncode != 0
    assert "plugin 'kiln_example::erfinv' version '1' is not loaded" in run.stderr, run.stderr[
        -2000:
    ]
    env["KILN_PLUGIN_LIBRARIES"] = str(LIBRARY)  # loaded by the engine itself, no code
    run = subprocess.run(
        [sys.executable, "-c", LOAD_PLAN, str(path)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) == pytest.approx(
        2 * float(torch.erfinv(torch.tensor(0.5)))
    )


# ---- Python converters ---------------------------------------------------------------------


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x)) * 0.9
        return self.b(torch.ops.kiln_example.erfinv(h, 2.0))


@pytest.fixture
def converted():
    kiln.converter("kiln_example::erfinv.default")(erfinv_torch.convert)
    yield
    plugins.remove_converter("kiln_example::erfinv")


def _compile(model, x, **kwargs):
    return kiln.compile(model, [x], device="cpu", min_block_size=1, cache_dir=False, **kwargs)


def test_a_custom_op_falls_back_without_a_converter():
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(4, 6)
    compiled = _compile(model, x, torch_ops_in_engine=())  # no automatic torch ops either
    assert len(compiled.report.fallbacks) == 1 and compiled.report.num_engines == 2
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
def test_a_custom_op_converts_to_the_plugin_in_one_engine(converted, tmp_path):
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(4, 6)
    compiled = _compile(model, x)
    assert compiled.report.num_engines == 1 and not compiled.report.fallbacks, compiled.report.text
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
        path = tmp_path / "m.pt2"
        kiln.save(compiled, path)
        torch.testing.assert_close(kiln.load(path)(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_python_converter_takes_precedence_and_is_removable():
    calls = []

    @kiln.converter(torch.ops.aten.relu.default)
    def relu_as_max(net, node):
        calls.append(node.name)
        zero = net.add_constant(np.zeros((), np.float32))
        return net.add_layer(
            "elementwise", [node.args["self"], zero], {"op": "max"}, name=node.name
        )

    try:
        model = nn.Sequential(nn.Linear(6, 4), nn.ReLU()).eval()
        x = torch.randn(3, 6)
        compiled = _compile(model, x)
        assert calls, "the Python converter ran"
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))
    finally:
        plugins.remove_converter("aten.relu.default")
    calls.clear()
    _compile(model, x)
    assert not calls  # the built-in converter is back


def test_capability_and_errors_of_python_converters_send_the_node_to_pytorch():
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(4, 6)

    @kiln.converter(
        "kiln_example::erfinv", capability=lambda node: node.args["scale"] > 10 or "scale <= 10"
    )
    def refused(net, node):
        raise AssertionError("not called: the capability refused the node")

    try:
        compiled = _compile(model, x)
        assert "scale <= 10" in compiled.report.text
    finally:
        plugins.remove_converter("kiln_example::erfinv")

    @kiln.converter("kiln_example::erfinv")
    def broken(net, node):
        raise ValueError("this converter is broken")

    try:
        with torch.no_grad():
            compiled = _compile(model, x)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
        assert "this converter is broken" in compiled.report.text
        with pytest.raises(kiln.KilnError, match="this converter is broken"):
            _compile(model, x, require_full_compilation=True)
    finally:
        plugins.remove_converter("kiln_example::erfinv")


@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
def test_the_torchscript_frontend_uses_python_converters_too(converted):
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(4, 6)
    compiled = kiln.compile(
        torch.jit.script(model), [x], device="cpu", min_block_size=1, cache_dir=False
    )
    assert compiled.report.num_engines == 1 and not compiled.report.fallbacks, compiled.report.text
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_the_cpp_app_runs_a_saved_module_with_the_plugin(converted, tmp_path):
    """examples/cpp (kiln_infer, no Kiln code of its own) runs a saved module whose engine has
    the plugin layer, given KILN_PLUGIN_LIBRARIES; without it, it fails naming the plugin."""
    sys.path.insert(0, str(ROOT / "tools"))
    from cpp_example import build_example

    exe = build_example("cpp") / "kiln_infer"
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(4, 6)
    compiled = _compile(model, x)
    kiln.save(compiled, tmp_path / "m.ts", output_format="torchscript")
    torch.save(x, tmp_path / "x.pt")
    cmd = [str(exe), str(tmp_path / "m.ts"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt"), "cpu"]
    env = {k: v for k, v in os.environ.items() if k != "KILN_PLUGIN_LIBRARIES"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode != 0
    assert "plugin 'kiln_example::erfinv' version '1' is not loaded" in run.stderr, run.stderr[
        -2000:
    ]
    env["KILN_PLUGIN_LIBRARIES"] = str(LIBRARY)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), compiled(x))


# ---- torch ops inside engines ------------------------------------------------------------------


@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
def test_torch_ops_in_engine_keep_the_model_in_one_engine(tmp_path):
    """A custom op with no converter runs through PyTorch as a layer of the engine: no graph
    break, and the report says which ops run so."""
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(4, 6)
    compiled = _compile(model, x, torch_ops_in_engine=[torch.ops.kiln_example.erfinv.default])
    report = compiled.report
    assert report.num_engines == 1 and not report.fallbacks, report.text
    assert (
        "torch ops inside engines" in report.text
        and "kiln_example.erfinv.default x1" in report.text
    )
    (plan,) = compiled.plans()
    assert any(line.split()[2:3] == ["torch_op"] for line in kiln.inspect(plan).text().splitlines())
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
        kiln.save(compiled, tmp_path / "m.pt2")
        torch.testing.assert_close(kiln.load(tmp_path / "m.pt2")(x), model(x), rtol=1e-5, atol=1e-5)


class Sandwich(nn.Module):
    """erfinv between linear layers (joining them), then at the end (joining nothing)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        h = self.b(torch.ops.kiln_example.erfinv(torch.tanh(self.a(x)) * 0.9, 2.0))
        return torch.ops.kiln_example.erfinv(torch.tanh(h) * 0.5, 1.0)


@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
def test_automatic_torch_ops_join_engines_only_where_a_break_would_split_one():
    """By default an op without a converter that may run inside an engine does so where it joins
    engine nodes; at the graph's end it would join nothing, so it stays in PyTorch."""
    torch.manual_seed(0)
    model = Sandwich().eval()
    spec = kiln.Input(min_shape=(1, 6), opt_shape=(4, 6), max_shape=(8, 6))
    compiled = kiln.compile(model, [spec], device="cpu", min_block_size=1, cache_dir=False)
    report = compiled.report
    assert report.num_engines == 1, report.text
    assert "kiln_example.erfinv.default x1 (automatic)" in report.text, report.text
    (fallback,) = report.fallbacks
    assert "would join no engine nodes here" in fallback.reason, report.text
    with torch.no_grad():
        for n in (1, 5, 8):
            x = torch.randn(n, 6)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    off = kiln.compile(
        model, [spec], device="cpu", min_block_size=1, cache_dir=False, torch_ops_in_engine=()
    )
    assert off.report.num_engines == 2 and len(off.report.fallbacks) == 2, off.report.text


def test_which_ops_may_run_inside_engines_automatically():
    from kiln import torch_ops

    cpu = torch.device("cpu")
    aten = torch.ops.aten
    assert torch_ops.why_not(torch.ops.kiln_example.erfinv.default, cpu) is None
    assert torch_ops.why_not(aten.erfinv.default, cpu) is None
    assert "mutates" in torch_ops.why_not(aten.add_.Tensor, cpu)
    assert "aliases" in torch_ops.why_not(aten.as_strided.default, cpu)
    assert "nondeterministic_seeded" in torch_ops.why_not(aten.bernoulli.default, cpu)
    assert "dynamic_output_shape" in torch_ops.why_not(aten.nonzero.default, cpu)
    assert "other than tensors" in torch_ops.why_not(aten.sym_size.int, cpu)


@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
def test_torch_ops_in_engine_take_dynamic_shapes_from_the_ops_fake_kernel():
    torch.manual_seed(0)
    model = Model().eval()
    spec = kiln.Input(min_shape=(1, 6), opt_shape=(4, 6), max_shape=(8, 6))
    compiled = kiln.compile(
        model,
        [spec],
        device="cpu",
        min_block_size=1,
        cache_dir=False,
        torch_ops_in_engine=["kiln_example::erfinv"],
    )
    assert compiled.report.num_engines == 1 and not compiled.report.fallbacks
    with torch.no_grad():
        for n in (1, 3, 8):
            x = torch.randn(n, 6)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
def test_a_torch_free_process_says_such_plans_need_torch(tmp_path):
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(4, 6)
    compiled = _compile(model, x, torch_ops_in_engine=["kiln_example::erfinv"])
    (plan,) = compiled.plans()
    path = tmp_path / "torch_op.plan"
    path.write_bytes(plan.serialize())
    script = (
        "import sys, kiln\n"
        "assert 'torch' not in sys.modules\n"
        "kiln.Plan.deserialize(open(sys.argv[1], 'rb').read())\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True)
    assert run.returncode != 0
    assert "runs a torch op inside the engine (torch_ops_in_engine)" in run.stderr, run.stderr[
        -2000:
    ]


# ---- on the GPU ----------------------------------------------------------------------------------


def _cuda():
    return torch.cuda.is_available() and kiln.cuda_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU visible (GPU test)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_plugin_runs_on_cuda(dtype):
    name = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    net, _ = _erfinv_network(name)
    config = kiln.BuilderConfig(device="cuda")
    config.add_optimization_profile({"x": ([1, 6], [4, 6], [8, 6])})
    engine = kiln.Engine(kiln.Builder().build(net, config), device="cuda")
    ctx = engine.create_execution_context()
    for n in (1, 5, 8):
        x = _inputs(n, dtype).cuda()
        want = (2 * torch.erfinv(x.float())).to(dtype)
        ulp = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(ctx.execute({"x": x})["y"], want, rtol=ulp, atol=ulp)


def _timed(module, x, runs=200) -> float:
    """Median ms per call, each call waited for (as bench/run.py times)."""
    times = []
    with torch.no_grad():
        for _ in range(20):
            module(x)
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            module(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU visible (GPU test)")
def test_on_cuda_the_plugin_engine_replays_one_graph_and_beats_the_fallback(converted):
    torch.manual_seed(0)
    model, x = Model().cuda().eval(), torch.randn(4, 6, device="cuda")
    compiled = kiln.compile(model, [x], min_block_size=1, cache_dir=False)
    assert compiled.report.num_engines == 1 and not compiled.report.fallbacks
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    ms = _timed(compiled, x)
    (engine,) = rt.engines(compiled)
    stats = engine.graph_stats()
    assert stats["replays"] > 0 and stats["plain"] <= 1, stats  # one warm-up run, then replays
    plugins.remove_converter("kiln_example::erfinv")
    try:
        fallback = kiln.compile(
            model, [x], min_block_size=1, cache_dir=False, torch_ops_in_engine=()
        )
        assert len(fallback.report.fallbacks) == 1
        fallback_ms = _timed(fallback, x)
    finally:
        kiln.converter("kiln_example::erfinv.default")(erfinv_torch.convert)
    print(f"plugin engine {ms:.4f} ms, with the op falling back {fallback_ms:.4f} ms")


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU visible (GPU test)")
def test_torch_ops_in_engine_on_cuda():
    torch.manual_seed(0)
    model, x = Model().cuda().eval(), torch.randn(4, 6, device="cuda")
    compiled = kiln.compile(
        model, [x], min_block_size=1, cache_dir=False, torch_ops_in_engine=["kiln_example::erfinv"]
    )
    assert compiled.report.num_engines == 1 and not compiled.report.fallbacks
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    fallback = kiln.compile(model, [x], min_block_size=1, cache_dir=False, torch_ops_in_engine=())
    assert fallback.report.num_engines == 2
    inside, outside = _timed(compiled, x), _timed(fallback, x)
    # The op ran inside the engine's CUDA graph: every call after the warm-up replayed it (its
    # allocations in the graph's private pool), and the results still match eager on new data.
    (engine,) = rt.engines(compiled)
    stats = engine.graph_stats()
    assert stats["captures"] >= 1 and stats["replays"] > 200 and stats["plain"] <= 1, stats
    with torch.no_grad():
        for _ in range(3):
            x2 = torch.randn(4, 6, device="cuda")
            torch.testing.assert_close(compiled(x2), model(x2), rtol=1e-4, atol=1e-4)
    print(
        f"torch op in the engine {inside:.4f} ms (one CUDA graph), as a fallback {outside:.4f} ms"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU visible (GPU test)")
@pytest.mark.parametrize("precision", [torch.float32, torch.float16])
def test_automatic_torch_ops_on_cuda_replay_one_graph(precision):
    torch.manual_seed(0)
    model = Sandwich().cuda().eval()
    spec = kiln.Input(min_shape=(1, 6), opt_shape=(4, 6), max_shape=(16, 6))
    compiled = kiln.compile(
        model, [spec], min_block_size=1, cache_dir=False, enabled_precisions={precision}
    )
    assert compiled.report.num_engines == 1, compiled.report.text
    assert len(compiled.report.fallbacks) == 1, compiled.report.text  # the trailing one
    tol = 1e-4 if precision == torch.float32 else 2e-2
    with torch.no_grad():
        for n in (4, 4, 4, 9, 9, 9, 4):
            x = torch.randn(n, 6, device="cuda")
            torch.testing.assert_close(compiled(x), model(x), rtol=tol, atol=tol)
    (engine,) = rt.engines(compiled)
    stats = engine.graph_stats()
    assert stats["captures"] == 2 and stats["replays"] >= 3, stats


def test_the_command_line_loads_plugin_libraries(tmp_path):
    net, _ = _erfinv_network()
    path = tmp_path / "erfinv.plan"
    path.write_bytes(_build(net).serialize())
    env = {k: v for k, v in os.environ.items() if k != "KILN_PLUGIN_LIBRARIES"}
    cmd = [sys.executable, "-m", "kiln"]
    run = subprocess.run([*cmd, "inspect", str(path)], capture_output=True, text=True, env=env)
    assert run.returncode != 0 and "kiln_example::erfinv" in run.stderr, run.stderr[-2000:]
    run = subprocess.run(
        [*cmd, "--plugin", str(LIBRARY), "inspect", str(path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "plugin kiln_example::erfinv 1" in run.stdout


def test_a_network_kept_by_a_converter_fails_clearly_afterwards():
    kept = []

    @kiln.converter("kiln_example::erfinv")
    def keeping(net, node):
        kept.append((net, node.args["x"]))
        return erfinv_torch.convert(net, node)

    try:
        torch.manual_seed(0)
        _compile(Model().eval(), torch.randn(4, 6))
    finally:
        plugins.remove_converter("kiln_example::erfinv")
    net, x = kept[0]
    with pytest.raises(kiln.KilnError, match="lent to a converter call that has ended"):
        net.add_layer("activation", [x], {"type": "relu"})
    with pytest.raises(kiln.KilnError, match="lent to a converter call that has ended"):
        _ = x.shape
