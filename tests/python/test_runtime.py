"""libkiln_runtime: torch.classes.kiln.Engine and torch.ops.kiln.execute_engine.

The reference backend runs everything on the CPU (CI); the CUDA versions are marked gpu. Networks:
`single` is fully_connected(16 -> 8) + relu with a dynamic batch (profile 1..32); `pair` has two
inputs and two outputs, to check input order and tuple results.
"""

import base64
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from layer_util import DEVICES, build_plan, device_of

import kiln
import kiln.runtime as rt

pytestmark = [
    pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built"),
    # TorchScript is deprecated in torch 2.x but still what LibTorch apps load; keep testing it.
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]

# Float32 results of a 16-term dot product: the engine and torch may sum in another order or
# with FMA, a few float32 ulp apart on values of magnitude ~10.
TOL = {"rtol": 1e-5, "atol": 1e-5}
PY_DIR = Path(kiln.__file__).resolve().parent.parent


def build_single(target, seed=0):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 16))
    net.mark_output(
        net.add_activation(net.add_fully_connected(x, w.numpy(), b.numpy()), "relu"), "y"
    )
    plan = build_plan(net, target, profile={"x": ((1, 16), (4, 16), (32, 16))})
    return plan, lambda t: torch.relu(t.cpu() @ w.T + b)


def build_pair(target):
    w = torch.randn(8, 16)
    net = kiln.Network()
    a = net.add_input("a", "float32", (-1, 16))
    c = net.add_input("c", "float32", (-1, 8))
    fc = net.add_fully_connected(a, w.numpy())
    net.mark_output(net.add_elementwise(fc, c, "add"), "sum")
    net.mark_output(net.add_activation(c, "sigmoid"), "gate")
    profile = {"a": ((1, 16), (4, 16), (16, 16)), "c": ((1, 8), (4, 8), (16, 8))}
    return build_plan(net, target, profile=profile), lambda a, c: (
        a.cpu() @ w.T + c.cpu(),
        torch.sigmoid(c.cpu()),
    )


def sync(target):
    if target == "cuda":
        torch.cuda.synchronize()


class Wrapper(torch.nn.Module):
    """A module that calls the op next to other torch ops, as compiled models do."""

    def __init__(self, engine):
        super().__init__()
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.kiln.execute_engine([x * 2.0], self.engine)[0]
        return y + x[:, :8]


# ---- the custom class ----------------------------------------------------------------------


def test_engine_metadata():
    plan, _ = build_single("cpu")
    engine = rt.TorchEngine(plan)  # a reference plan picks the reference backend
    assert isinstance(engine, torch.ScriptObject)
    assert engine.input_names() == ["x"] and engine.output_names() == ["y"]
    assert engine.backend() == "reference" and engine.device() == -1
    assert engine.input_dtypes() == ["float32"] and engine.output_dtypes() == ["float32"]
    assert engine.input_dims() == [[-1, 16]] and engine.output_dims() == [[-1, 8]]
    assert engine.output_shapes([[5, 16]]) == [[5, 8]]
    layers = engine.describe()
    assert any("fully_connected" in line for line in layers), layers
    # Bytes in and kiln.Plan in build the same engine.
    assert rt.TorchEngine(bytes(plan.serialize()), "cpu").describe() == layers


def test_unknown_backend_and_bad_plan():
    plan, _ = build_single("cpu")
    with pytest.raises(RuntimeError, match="unknown Kiln backend 'tpu'"):
        torch.classes.kiln.Engine(plan.serialize(), "tpu")
    with pytest.raises(RuntimeError, match="(?i)plan"):
        torch.classes.kiln.Engine(b"KILNPLAN but not really", "reference")


def test_pickle_round_trip():
    plan, ref = build_single("cpu")
    module = rt.EngineModule(plan)
    clone = pickle.loads(pickle.dumps(module))
    x = torch.randn(3, 16)
    assert torch.equal(clone(x), module(x))
    assert clone.engine.describe() == module.engine.describe()


def test_pickle_version_mismatch():
    plan, _ = build_single("cpu")
    engine = rt.TorchEngine(plan, "cpu")
    (state, qualified_name) = engine.__getstate__()
    # Format 2: the plan as raw bytes (a uint8 tensor), not text.
    assert state[0] == str(torch.ops.kiln.runtime_format_version()) == "2"
    assert state[1].dtype == torch.uint8 and bytes(state[1].numpy()) == plan.serialize()
    assert tuple(state[2:]) == ("reference", -1)
    # What pickle.loads does with the reduced object, with the version field changed.
    rebuild, args = engine.__reduce_ex__(2)[:2]
    fresh = rebuild(*args)
    with pytest.raises(
        RuntimeError,
        match=r"reads engine format 2 \(and 1\); the saved module has format 7",
    ):
        fresh.__setstate__((("7", *state[1:]), qualified_name))
    with pytest.raises(RuntimeError, match="is not a device index"):
        rebuild(*args).__setstate__(((state[0], state[1], "reference", -5), qualified_name))
    with pytest.raises(RuntimeError, match="not a 1-D uint8 tensor"):
        bad = torch.zeros(4, dtype=torch.float32)
        rebuild(*args).__setstate__(((state[0], bad, "reference", -1), qualified_name))
    # Format 1 (the plan as base64 text), as earlier Kiln versions saved it, still loads.
    text = base64.b64encode(plan.serialize()).decode()
    old = rebuild(*args)
    old.__setstate__((["1", text, "reference", "-1"], qualified_name))
    x = torch.randn(3, 16)
    assert torch.equal(
        torch.ops.kiln.execute_engine([x], old)[0], torch.ops.kiln.execute_engine([x], engine)[0]
    )
    with pytest.raises(RuntimeError, match="not valid base64"):
        rebuild(*args).__setstate__((["1", "not*base64", "reference", "-1"], qualified_name))
    # A device field that is no integer: it raised ValueError("stoll") (issue 14).
    for device in ("x", "1x", "99999999999999999999999", "-5"):
        with pytest.raises(
            RuntimeError, match=f"the device field '{device}' is not a device index"
        ):
            rebuild(*args).__setstate__((["1", text, "reference", device], qualified_name))


# ---- execute_engine ------------------------------------------------------------------------


@pytest.mark.parametrize("target", DEVICES)
def test_module_matches_torch(target):
    plan, ref = build_single(target)
    module = rt.EngineModule(plan, target)
    for batch in (1, 5, 32):  # profile min, inside, max
        x = torch.randn(batch, 16, device=device_of(target))
        y = module(x)
        sync(target)
        assert y.shape == (batch, 8) and y.dtype == torch.float32 and y.device == x.device
        torch.testing.assert_close(y.cpu(), ref(x), **TOL)


@pytest.mark.parametrize("target", DEVICES)
def test_two_inputs_two_outputs(target):
    plan, ref = build_pair(target)
    module = rt.EngineModule(plan, target)
    a = torch.randn(3, 16, device=device_of(target))
    c = torch.randn(3, 8, device=device_of(target))
    total, gate = module(a, c)
    sync(target)
    want_total, want_gate = ref(a, c)
    torch.testing.assert_close(total.cpu(), want_total, **TOL)
    torch.testing.assert_close(gate.cpu(), want_gate, **TOL)


@pytest.mark.parametrize("target", DEVICES)
def test_non_contiguous_input(target):
    plan, ref = build_single(target)
    module = rt.EngineModule(plan, target)
    x = torch.randn(16, 6, device=device_of(target)).t()  # [6, 16], strides (1, 6)
    assert not x.is_contiguous()
    y = module(x)
    sync(target)
    torch.testing.assert_close(y.cpu(), ref(x), **TOL)


@pytest.mark.parametrize("target", DEVICES)
def test_script_save_load(target, tmp_path):
    plan, ref = build_single(target)
    scripted = torch.jit.script(rt.EngineModule(plan, target))
    path = tmp_path / "engine.ts"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(7, 16, device=device_of(target))
    y0, y1 = scripted(x), loaded(x)
    sync(target)
    assert torch.equal(y0, y1)
    torch.testing.assert_close(y1.cpu(), ref(x), **TOL)
    # A module of one's own that calls the op scripts and round-trips as well.
    wrapper = torch.jit.script(Wrapper(rt.TorchEngine(plan, target)))
    torch.jit.save(wrapper, str(tmp_path / "wrapper.ts"))
    assert torch.equal(torch.jit.load(str(tmp_path / "wrapper.ts"))(x), wrapper(x))


def test_wrong_dtype():
    plan, _ = build_single("cpu")
    module = rt.EngineModule(plan, "cpu")
    with pytest.raises(
        RuntimeError, match=r"input 'x' has dtype torch.float16, the engine expects torch.float32"
    ):
        module(torch.randn(4, 16, dtype=torch.float16))


def test_wrong_input_count():
    plan, _ = build_single("cpu")
    engine = rt.TorchEngine(plan, "cpu")
    x = torch.randn(4, 16)
    with pytest.raises(RuntimeError, match=r"Kiln engine takes 1 inputs \(x\), got 2"):
        torch.ops.kiln.execute_engine([x, x], engine)
    with pytest.raises(TypeError):  # the module's forward names its arguments
        rt.EngineModule(engine)(x, x)


def test_shape_errors():
    plan, _ = build_single("cpu")
    module = rt.EngineModule(plan, "cpu")
    with pytest.raises(
        RuntimeError,
        match=r"shape \[33, 16\] is outside optimization profile 0 "
        r"\(min \[1, 16\], max \[32, 16\]\)",
    ):
        module(torch.randn(33, 16))
    with pytest.raises(RuntimeError, match=r"does not match the static shape \[-1, 16\]"):
        module(torch.randn(4, 15))
    with pytest.raises(RuntimeError, match="has rank 3"):
        module(torch.randn(4, 16, 1))
    # The context that saw the errors goes back to the pool and still works.
    x = torch.randn(2, 16)
    assert module(x).shape == (2, 8)


@pytest.mark.parametrize("target", DEVICES)
def test_concurrent_threads(target):
    plan, ref = build_single(target)
    module = rt.EngineModule(plan, target)
    device = device_of(target)
    errors, results = [], {}

    def work(tid):
        try:
            stream = torch.cuda.Stream() if target == "cuda" else None
            for i in range(20):
                x = torch.randn(1 + (tid * 7 + i) % 32, 16)
                if stream is not None:
                    with torch.cuda.stream(stream):
                        y = module(x.to(device))
                    stream.synchronize()
                else:
                    y = module(x)
                results[(tid, i)] = (x, y.cpu())
        except Exception as e:  # reported below, with the thread
            errors.append((tid, e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 80
    for x, y in results.values():
        torch.testing.assert_close(y, ref(x), **TOL)


# ---- torch.export --------------------------------------------------------------------------


@pytest.mark.parametrize("target", DEVICES)
def test_export(target, tmp_path):
    plan, ref = build_single(target)
    device = device_of(target)
    wrapper = Wrapper(rt.TorchEngine(plan, target))
    x = torch.randn(6, 16, device=device)
    batch = torch.export.Dim("batch", min=1, max=32)
    ep = torch.export.export(wrapper, (x,), dynamic_shapes={"x": {0: batch}})
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.kiln.execute_engine.default in targets
    # The fake kernel tied the output's batch to the input's symbol (else `+ x[:, :8]` fails).
    (call,) = [n for n in ep.graph.nodes if n.target == torch.ops.kiln.execute_engine.default]
    out_meta = call.meta["val"][0]
    in_meta = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "x"][0].meta["val"]
    assert str(out_meta.shape[0]) == str(in_meta.shape[0]) and out_meta.shape[1] == 8

    for n in (6, 11):  # the traced size and another one
        x = torch.randn(n, 16, device=device)
        y = ep.module()(x)
        sync(target)
        torch.testing.assert_close(y.cpu(), ref(2 * x) + x.cpu()[:, :8], **TOL)

    # Save/load in a fresh process that only imports torch and kiln.
    path = tmp_path / "wrapper.pt2"
    torch.export.save(ep, str(path))
    torch.jit.save(torch.jit.script(wrapper), str(tmp_path / "wrapper.ts"))
    x = torch.randn(9, 16)
    torch.save({"x": x, "y": ref(2 * x) + x[:, :8]}, str(tmp_path / "io.pt"))
    script = f"""
import torch, kiln
io = torch.load({str(tmp_path / "io.pt")!r})
x = io["x"].to({device!r})
exported = torch.export.load({str(path)!r}).module()
scripted = torch.jit.load({str(tmp_path / "wrapper.ts")!r})
for y in (exported(x), scripted(x)):
    torch.testing.assert_close(y.cpu(), io["y"], rtol={TOL["rtol"]}, atol={TOL["atol"]})
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(PY_DIR), **_env()},
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_fake_output_shapes_with_static_input():
    """Under FakeTensorMode with concrete shapes the engine's own shape inference is used."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    plan, _ = build_single("cpu")
    engine = rt.TorchEngine(plan, "cpu")
    with FakeTensorMode():
        (y,) = torch.ops.kiln.execute_engine([torch.empty(5, 16)], engine)
    assert y.shape == (5, 8) and y.dtype == torch.float32


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# ---- without libkiln_runtime.so ------------------------------------------------------------


def test_missing_runtime_library(tmp_path):
    """`import kiln` works without libkiln_runtime.so; using the runtime says what is missing."""
    package = tmp_path / "kiln"
    package.mkdir()
    source = Path(kiln.__file__).resolve().parent
    for item in source.iterdir():
        if item.name not in ("libkiln_runtime.so", "__pycache__"):
            (package / item.name).symlink_to(item)
    script = """
import torch, kiln, numpy as np
import kiln.runtime as rt
assert not rt.is_available()
net = kiln.Network()
net.mark_output(net.add_activation(net.add_input("x", "float32", (2, 3)), "relu"), "y")
plan = kiln.Builder().build(net, kiln.BuilderConfig(device="cpu"))
ctx = kiln.Engine(plan, "cpu").create_execution_context()
out = ctx.execute({"x": np.ones((2, 3), np.float32)})
assert out["y"].shape == (2, 3)
try:
    rt.TorchEngine(plan, "cpu")
except RuntimeError as e:
    print(e)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), **_env()},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "Kiln's torch runtime is not installed" in done.stdout
        and "libkiln_runtime.so is missing" in done.stdout
    )


# ---- CUDA only -----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "target,other,match",
    [
        ("cuda", "cpu", r"input 'x' is on cpu, the cuda engine runs on cuda:0"),
        ("cpu", "cuda", r"input 'x' is on cuda:0, the reference engine runs on cpu"),
    ],
    ids=["cuda_engine", "reference_engine"],
)
def test_wrong_device(target, other, match):
    plan, _ = build_single(target)
    module = rt.EngineModule(plan, target)
    with pytest.raises(RuntimeError, match=match):
        module(torch.randn(4, 16, device=other))


@pytest.mark.gpu
def test_enqueues_on_current_stream():
    """Work goes to torch's current stream: after syncing only that stream the result is there."""
    plan, ref = build_single("cuda")
    module = rt.EngineModule(plan, "cuda")
    stream = torch.cuda.Stream()
    x = torch.randn(32, 16, device="cuda")
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(50):  # keep the stream busy so a wrong-stream launch would race
            y = module(x)
    stream.synchronize()
    torch.testing.assert_close(y.cpu(), ref(x), **TOL)
