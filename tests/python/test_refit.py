"""kiln.refit: new weights without a rebuild, against a fresh kiln.compile with those weights
(bit-identical: the same engines) and eager PyTorch; errors name the parameters; the dynamo
backend and a training loop refit instead of rebuilding (one build, counted refits)."""

import copy
import os

import pytest
import torch
import torch._dynamo
import torch.nn as nn
from layer_util import DEVICES

import kiln
from kiln import dynamo
from kiln import runtime as rt

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")

TOL = dict(rtol=1e-4, atol=1e-4)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(y.mean((2, 3)))


class Transformer(nn.Module):
    """One pre-norm encoder block (attention with separate Q/K/V projections, GELU MLP)."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(12, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.embed(x)
        b, s, d = h.shape
        n = self.norm1(h)
        q, k, v = (
            p(n).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        h = h + self.out(a.transpose(1, 2).reshape(b, s, d))
        h = h + self.mlp(self.norm2(h))
        return self.head(h)


MODELS = {"cnn": (Cnn, (2, 3, 10, 10)), "transformer": (Transformer, (2, 7, 12))}


def _model(name, seed, device="cpu"):
    torch.manual_seed(seed)
    cls, _ = MODELS[name]
    model = cls().to(device).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _compile(model, x, device, **kwargs):
    return kiln.compile(model, [x], device=device, min_block_size=1, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_refit_equals_a_fresh_compile(name, device):
    x = torch.randn(MODELS[name][1], device=device)
    old, new = _model(name, 0, device), _model(name, 1, device)
    compiled = _compile(old, x, device)
    with torch.no_grad():
        before = compiled(x)
        result = kiln.refit(compiled, new)
        assert result.engines >= 1 and result.weights > 0
        after = compiled(x)
        fresh = _compile(new, x, device)(x)
        torch.testing.assert_close(after, new(x), **TOL)
        assert not torch.allclose(after, before)
    if device == "cpu":  # the reference backend: the same arithmetic, bit for bit
        assert torch.equal(after, fresh)
    else:  # the same kernels, unless tactic timing chose others for the fresh build
        torch.testing.assert_close(after, fresh, **TOL)


@pytest.mark.parametrize("precision", [torch.float16, torch.bfloat16])
def test_refit_in_reduced_precision_on_the_reference_backend(precision):
    x = torch.randn(2, 3, 10, 10)
    old, new = _model("cnn", 0), _model("cnn", 2)
    compiled = _compile(old, x, "cpu", enabled_precisions={precision})
    kiln.refit(compiled, new.state_dict())
    with torch.no_grad():
        fresh = _compile(new, x, "cpu", enabled_precisions={precision})
        assert torch.equal(compiled(x), fresh(x))
        torch.testing.assert_close(compiled(x), new(x), rtol=5e-2, atol=5e-2)


def test_refitted_module_saves_the_new_weights(tmp_path):
    x = torch.randn(2, 3, 10, 10)
    compiled = _compile(_model("cnn", 0), x, "cpu")
    new = _model("cnn", 3)
    kiln.refit(compiled, new)
    kiln.save(compiled, tmp_path / "m.ts", output_format="torchscript", inputs=[x])
    loaded = kiln.load(tmp_path / "m.ts")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), new(x), **TOL)


def test_errors_name_the_parameters():
    x = torch.randn(2, 7, 12)
    compiled = _compile(_model("transformer", 0), x, "cpu")
    state = _model("transformer", 1).state_dict()
    with pytest.raises(kiln.KilnError, match=r"not given: 'head.bias'"):
        kiln.refit(compiled, {k: v for k, v in state.items() if k != "head.bias"})
    with pytest.raises(kiln.KilnError, match=r"does not have: 'extra.weight'"):
        kiln.refit(compiled, {**state, "extra.weight": torch.zeros(3)})
    bad = dict(state)
    bad["head.weight"] = torch.zeros(4, 32)
    with pytest.raises(kiln.KilnError, match=r"head.weight \(float32 \[4, 32\] given"):
        kiln.refit(compiled, bad)
    bad["head.weight"] = state["head.weight"].half()
    with pytest.raises(kiln.KilnError, match=r"'head.weight' is torch.float16"):
        kiln.refit(compiled, bad)
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        kiln.refit(compiled, [1, 2])


def test_changed_integer_buffer_is_refused():
    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("index", torch.tensor([3, 0, 2, 1]))

        def forward(self, x):
            return self.fc(x)[:, self.index]

    model = Lookup().eval()
    x = torch.randn(2, 4)
    compiled = _compile(model, x, "cpu")
    state = copy.deepcopy(model.state_dict())
    state["fc.weight"] = torch.randn(4, 4)
    kiln.refit(compiled, state)  # the integer buffer unchanged: fine
    model.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), **TOL)
    state["index"] = torch.tensor([0, 1, 2, 3])
    with pytest.raises(kiln.KilnError, match="buffer 'index' changed"):
        kiln.refit(compiled, state)


def test_torchscript_frontend_module_is_refused_with_a_way_out():
    model = _model("cnn", 0)
    x = torch.randn(2, 3, 10, 10)
    compiled = kiln.compile(torch.jit.script(model), [x], device="cpu", min_block_size=1)
    with pytest.raises(kiln.KilnError, match="no refit information"):
        kiln.refit(compiled, model)


def test_native_engine_refit_by_name():
    import numpy as np

    rng = np.random.default_rng(0)
    w0, w1 = (rng.standard_normal((6, 4)).astype(np.float32) for _ in range(2))
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 6])
    w = net.add_constant(w0, name="w", refittable=True)
    net.mark_output(net.add_matmul(x, w).output, "y")
    engine = kiln.Engine(kiln.Builder().build(net, kiln.BuilderConfig(device="cpu")), device="cpu")
    assert engine.refittable_weights() == {"w": ("float32", [6, 4])}
    a = rng.standard_normal((2, 6)).astype(np.float32)
    ctx = engine.create_execution_context()
    np.testing.assert_allclose(ctx.execute({"x": a})["y"], a @ w0, rtol=1e-5)
    engine.refit({"w": w1})
    np.testing.assert_allclose(ctx.execute({"x": a})["y"], a @ w1, rtol=1e-5)
    with pytest.raises(kiln.KilnError, match="not given: 'w'"):
        engine.refit({})
    with pytest.raises(ValueError, match="needs a name"):
        net.add_constant(w0, refittable=True)

    # A plan saved without its weights: refused until refitted, then as the full plan.
    plan = engine.plan
    stripped = kiln.Plan.deserialize(plan.serialize(strip_weights=True))
    assert stripped.weights_stripped and not plan.weights_stripped
    assert stripped.refittable_weights() == {"w": ("float32", [6, 4])}
    with pytest.raises(kiln.KilnError, match="saved without its weights"):
        kiln.Engine(stripped, device="cpu")
    stripped.refit({"w": w1})
    out = kiln.Engine(stripped, device="cpu").create_execution_context().execute({"x": a})["y"]
    np.testing.assert_allclose(out, a @ w1, rtol=1e-5)


# ---- training loops ---------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    dynamo.reset_stats()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_loop_builds_once_and_refits(name, autocast, fresh_dynamo):
    """Train a few steps eagerly, evaluate every second step through torch.compile(backend=
    "kiln"): each evaluation matches eager on the current weights; one build, counted refits."""
    model = _model(name, 0)
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tol = dict(rtol=3e-2, atol=3e-2) if autocast else TOL
    evaluations = 0
    for step in range(6):
        model.train()
        x = torch.randn(MODELS[name][1])
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()
        if step % 2 == 1:
            model.eval()
            xe = torch.randn(MODELS[name][1])
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y, expected = compiled(xe), model(xe)
            torch.testing.assert_close(y.float(), expected.float(), **tol)
            evaluations += 1
    assert dynamo.stats() == {"builds": 1, "refits": evaluations - 1}


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_mutable_module_in_a_training_loop(name, autocast):
    """kiln.MutableModule: trains as the model (training mode runs it eagerly), evaluates through
    engines compiled once and refitted after every training phase; a new batch size within the
    given range reuses them, one past it compiles again."""
    model = _model(name, 0)
    shape = MODELS[name][1]
    spec = kiln.Input(
        min_shape=(1, *shape[1:]), opt_shape=shape, max_shape=(4, *shape[1:]), dtype=torch.float32
    )
    fast = kiln.MutableModule(model, [spec], device="cpu", min_block_size=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tol = dict(rtol=3e-2, atol=3e-2) if autocast else TOL
    phases = 3
    for _ in range(phases):
        fast.train()
        for _ in range(2):
            opt.zero_grad()
            fast(torch.randn(shape)).pow(2).mean().backward()  # eager: autograd works
            opt.step()
        fast.eval()
        for batch in (shape[0], 3):
            xe = torch.randn(batch, *shape[1:])
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y, expected = fast(xe), model(xe)
            torch.testing.assert_close(y.float(), expected.float(), **tol)
    assert fast.stats == {"builds": 1, "refits": phases - 1}
    with torch.no_grad():
        fast(torch.randn(6, *shape[1:]))  # past the range: a second build
    assert fast.stats["builds"] == 2


def test_mutable_module_compiles_again_when_a_weight_changes_shape():
    model = _model("cnn", 0)
    x = torch.randn(2, 3, 10, 10)
    fast = kiln.MutableModule(model, device="cpu", min_block_size=1)
    with torch.no_grad():
        fast(x)
        model.fc = nn.Linear(8, 7)  # another head: the engines cannot be refitted
        torch.testing.assert_close(fast(x), model(x), **TOL)
    assert fast.stats == {"builds": 2, "refits": 0}


@pytest.mark.parametrize("output_format", ["exported_program", "torchscript"])
def test_module_saved_without_weights_loads_with_them(tmp_path, output_format):
    from safetensors.torch import save_file

    x = torch.randn(2, 3, 10, 10)
    model = _model("cnn", 0)
    compiled = _compile(model, x, "cpu")
    full, stripped = tmp_path / "full.bin", tmp_path / "stripped.bin"
    kiln.save(compiled, full, output_format=output_format, inputs=[x])
    kiln.save(compiled, stripped, output_format=output_format, inputs=[x], strip_weights=True)
    assert os.path.getsize(stripped) < os.path.getsize(full)
    with torch.no_grad():
        expected = compiled(x)  # saving stripped left the compiled module whole
        with pytest.raises((kiln.KilnError, RuntimeError), match="saved without its weights"):
            kiln.load(stripped)(x)
        assert torch.equal(kiln.load(stripped, weights=model.state_dict())(x), expected)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors"
        )
        assert torch.equal(
            kiln.load(stripped, weights=str(tmp_path / "w.safetensors"))(x), expected
        )
        other = _model("cnn", 4)
        torch.testing.assert_close(kiln.load(full, weights=other)(x), other(x), **TOL)


@pytest.mark.gpu
def test_host_tensors_bring_gpu_weights_over_in_one_copy():
    """kiln.refitting.host_tensors: GPU tensors of mixed dtypes (wider first keeps every slice
    aligned), float64 narrowed, CPU tensors as they are; values and shapes kept."""
    from kiln.refitting import host_tensors

    tensors = [
        torch.randn(3, device="cuda", dtype=torch.float16),
        torch.arange(5, device="cuda"),
        torch.randn(2, 2, device="cuda", dtype=torch.float64),
        torch.tensor([True, False, True], device="cuda"),
        torch.randn(4, 3).t(),  # CPU, not contiguous
    ]
    out = host_tensors(tensors)
    assert [o.device.type for o in out] == ["cpu"] * 5
    assert [o.dtype for o in out] == [
        torch.float16,
        torch.int64,
        torch.float32,
        torch.bool,
        torch.float32,
    ]
    for a, b in zip(tensors, out, strict=True):
        assert b.shape == a.shape and b.is_contiguous()
        assert torch.equal(a.cpu().to(b.dtype), b)
