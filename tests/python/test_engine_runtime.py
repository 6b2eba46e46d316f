"""Engine runtime performance features: CUDA graphs in execution contexts (replays bit-identical
to plain launches across shape and address changes; torch.cuda.graph capturing a compiled
module), Kiln memory through torch's caching allocator, the per-call path with several
profiles, and the tactic-timing / timing-cache options. CPU parts run in CI; GPU parts are
marked gpu.
"""

import os

import pytest
import torch
from layer_util import build_plan

import kiln
import kiln.runtime as rt
from kiln.compiler import default_timing_cache_path

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")


class SmallCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.relu(self.conv2(y)) + 0.5
        return self.fc(y.mean(dim=(2, 3)))


def small_cnn():
    torch.manual_seed(0)
    model = SmallCnn().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def eager(model, x):
    """Eager PyTorch in strict FP32 (torch lets cuDNN use TF32 by default; Kiln does not)."""
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        return model(x)


def engines_of(module):
    return [m.engine for m in module.modules() if isinstance(m, rt.EngineModule)]


def two_profile_plan(target):
    """y = relu(x @ w.T) with profile 0: batch 1..4 and profile 1: batch 5..64."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 16, generator=g)
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 16))
    net.mark_output(net.add_activation(net.add_fully_connected(x, w.numpy()), "relu"), "y")
    profiles = [{"x": ((1, 16), (2, 16), (4, 16))}, {"x": ((5, 16), (16, 16), (64, 16))}]
    return build_plan(net, target, profile=profiles), lambda t: torch.relu(t.cpu() @ w.T)


# ---- options (CPU) -------------------------------------------------------------------------


def test_builder_config_tactic_options(tmp_path):
    config = kiln.BuilderConfig()
    # On by default; conftest sets KILN_TACTIC_TIMING=0, which turns the default off.
    assert config.tactic_timing is (os.environ.get("KILN_TACTIC_TIMING") != "0")
    assert kiln.BuilderConfig(tactic_timing=True).tactic_timing is True
    assert config.timing_cache_path == ""  # the C++/BuilderConfig default: no file
    config = kiln.BuilderConfig(tactic_timing=False, timing_cache=tmp_path / "t.cache")
    assert config.tactic_timing is False
    assert config.timing_cache_path == str(tmp_path / "t.cache")


def test_builder_config_limits_constant_folding():
    assert kiln.BuilderConfig().max_folded_constant_bytes == 64 << 20
    with pytest.raises(kiln.KilnError, match="max_folded_constant_bytes must be >= 0"):
        kiln.BuilderConfig().max_folded_constant_bytes = -1
    a, b = torch.randn(64), torch.randn(64)

    def built(limit):
        net = kiln.Network()
        x = net.add_input("x", "float32", (64,))
        s = net.add_elementwise(net.add_constant(a.numpy()), net.add_constant(b.numpy()), "add")
        net.mark_output(net.add_elementwise(x, s, "mul"), "y")
        config = kiln.BuilderConfig(device="cpu")
        config.max_folded_constant_bytes = limit
        return kiln.Builder().build(net, config)

    x = torch.randn(64)
    for limit, folded in [(256, True), (255, False)]:  # a + b: 256 bytes, folded or run time
        plan = built(limit)
        # What the engine computes (the add, alone or in a fused program), per layer.
        code = " ".join(str(x["attrs"].get("program", x["attrs"].get("op"))) for x in plan.layers())
        assert ("add" not in code) is folded, (limit, code)
        ctx = kiln.Engine(plan, device="cpu").create_execution_context()
        torch.testing.assert_close(torch.as_tensor(ctx.execute({"x": x})["y"]), x * (a + b))


def test_default_timing_cache_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_timing_cache_path() == os.path.join(str(tmp_path), "kiln", "timing.cache")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_timing_cache_path() == os.path.join(
        os.path.expanduser("~"), ".cache", "kiln", "timing.cache"
    )


def test_compile_options_on_the_reference_backend(tmp_path):
    model = small_cnn()
    x = torch.randn(2, 3, 12, 12)
    cache = tmp_path / "timing.cache"
    m = kiln.compile(model, [x], device="cpu", timing_cache=cache, cuda_graphs=False)
    torch.testing.assert_close(m(x), model(x), rtol=1e-4, atol=1e-4)
    assert not cache.exists(), "reference builds time nothing and write no cache"
    assert all(e.cuda_graphs() is False for e in engines_of(m))
    assert all(e.graph_stats()["replays"] == 0 for e in engines_of(m))
    m = kiln.compile(model, [x], device="cpu", timing_cache=False, tactic_timing=False)
    assert all(e.cuda_graphs() is True for e in engines_of(m))


def test_runtime_switches_profiles_per_call():
    plan, ref = two_profile_plan("cpu")
    module = rt.EngineModule(plan, "cpu")
    # Alternating profiles: each call keeps the current profile when it fits, else finds one.
    for batch in (3, 3, 40, 40, 1, 64, 4, 5):
        x = torch.randn(batch, 16)
        torch.testing.assert_close(module(x), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="outside optimization profile 0"):
        module(torch.randn(65, 16))
    # A failed call leaves the pooled context usable.
    x = torch.randn(2, 16)
    torch.testing.assert_close(module(x), ref(x), rtol=1e-5, atol=1e-5)


def test_execution_context_graph_api_on_reference():
    plan, _ = two_profile_plan("cpu")
    ctx = kiln.Engine(plan, "cpu").create_execution_context()
    assert ctx.cuda_graphs is False
    ctx.cuda_graphs = True  # no effect off CUDA
    assert ctx.cuda_graphs is False
    assert ctx.graph_stats == {
        "captures": 0,
        "instantiations": 0,
        "updates": 0,
        "replays": 0,
        "plain": 0,
    }


# ---- CUDA ----------------------------------------------------------------------------------


def set_graphs(module, enabled):
    for e in engines_of(module):
        e.set_cuda_graphs(enabled)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_graph_replays_match_plain_launches(tmp_path, dtype):
    model = small_cnn().cuda().to(dtype)
    spec = kiln.Input(
        min_shape=(1, 3, 16, 16), opt_shape=(4, 3, 16, 16), max_shape=(8, 3, 16, 16), dtype=dtype
    )
    m = kiln.compile(model, [spec], enabled_precisions={dtype}, timing_cache=tmp_path / "t.cache")
    assert engines_of(m)
    # Shape changes (8, 4, 1, back to 8 and 4) and fresh input/output buffers on every call. The
    # largest batch comes first: the arena is laid out for the shapes in use and grows for larger
    # ones, which releases the graphs captured against the old arena (a re-capture, covered by
    # CudaGraphs.* in tests/cpp/test_cuda_graphs.cpp); here it never grows.
    batches = [8, 8, 4, 4, 4, 1, 1, 8, 4, 1]
    for i, batch in enumerate(batches):
        x = torch.randn(batch, 3, 16, 16, device="cuda", dtype=dtype)
        set_graphs(m, True)
        got = m(x)
        set_graphs(m, False)  # the graphs stay captured; this call launches layer by layer
        want = m(x)
        assert torch.equal(got, want), f"call {i} batch {batch}"
        # FP16: the convolutions accumulate in float but round activations to half.
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, eager(model, x), rtol=tol, atol=tol)
    for engine in engines_of(m):
        stats = engine.graph_stats()
        # Per engine: 3 shape sets, each warmed up and captured once (staged bindings: fresh
        # tensors never force a re-capture); the other graph-on calls replay.
        assert stats["captures"] == 3, stats
        assert stats["updates"] == 0, stats
        assert stats["replays"] == len(batches) - 3, stats
        assert stats["plain"] == 3 + len(batches), stats


@pytest.mark.gpu
def test_arena_growth_releases_the_graphs_captured_against_the_old_arena():
    model = small_cnn().cuda()
    spec = kiln.Input(min_shape=(1, 3, 16, 16), opt_shape=(1, 3, 16, 16), max_shape=(8, 3, 16, 16))
    m = kiln.compile(model, [spec])
    assert engines_of(m)
    set_graphs(m, True)
    # batch 1: warm-up, capture; batch 8 grows the arena (the batch-1 graph is released): warm-up,
    # capture; batch 1 again: warm-up, capture against the new arena.
    for batch in [1, 1, 8, 8, 1, 1]:
        x = torch.randn(batch, 3, 16, 16, device="cuda")
        torch.testing.assert_close(m(x), eager(model, x), rtol=1e-4, atol=1e-4)
    for engine in engines_of(m):
        stats = engine.graph_stats()
        assert stats["captures"] == 3, stats
        assert stats["replays"] == 3, stats
        assert stats["plain"] == 3, stats


@pytest.mark.gpu
def test_graphs_on_a_side_stream_and_inside_torch_cuda_graph():
    model = small_cnn().cuda()
    x = torch.randn(2, 3, 16, 16, device="cuda")
    m = kiln.compile(model, [x])
    want = eager(model, x)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            y = m(x)
    s.synchronize()
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    # The engine's plain launches become part of the caller's graph.
    static_x = x.clone()
    with torch.cuda.stream(s):
        m(static_x)  # warm-up on the capture stream
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = m(static_x)
    x2 = torch.randn_like(x)
    static_x.copy_(x2)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_y, eager(model, x2), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_engine_memory_comes_from_torchs_caching_allocator():
    n = 2048
    w = torch.randn(n, n)
    net = kiln.Network()
    x = net.add_input("x", "float32", (4, n))
    net.mark_output(net.add_fully_connected(x, w.numpy()), "y")
    plan = kiln.Builder().build(net, kiln.BuilderConfig(device="cuda"))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    module = rt.EngineModule(plan, "cuda")
    weights = n * n * 4
    assert torch.cuda.memory_allocated() - before >= weights, "weights are in torch's pool"
    xs = torch.randn(4, n, device="cuda")
    y = module(xs)
    torch.testing.assert_close(y.cpu(), xs.cpu() @ w.T, rtol=1e-3, atol=1e-3)
    # A context's arena and workspace too (32 MiB default workspace).
    assert torch.cuda.memory_allocated() - before >= weights + (32 << 20)
    del module, y
    import gc

    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < weights, "freed back into torch's pool"
