"""Plan kernel trust (kernels/plan_kernel_trust.h, docs/security.md): whether the GPU code a plan
carries (the cubins of its fused pointwise kernels) may run as stored.

CPU: the switch (`kiln._C.trust_plan_kernels`, the `kiln._C.plan_kernel_trust` block), its
environment variable, and that kiln.load creates its engines inside an untrusted block unless
``trusted=True``. GPU: a crafted plan whose two fused layers carry each other's cubin under their
own, valid, keys: trusted, the swapped code runs; untrusted (kiln.Engine(trusted=False), a
kiln.load of a file holding it), Kiln compiles its own and the output is right.
"""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from layer_util import build_plan, run_plan, seal_plan

import kiln
from kiln import _C
from kiln import runtime as rt

ENV = "KILN_TRUST_PLAN_KERNELS"
# What this process trusts outside any block (True unless the suite runs with the variable at 0).
PROCESS_DEFAULT = os.environ.get(ENV) != "0"

# ---- the switch (CPU) ---------------------------------------------------------------------------


def test_blocks_nest_restore_and_stay_on_their_thread():
    assert _C.trust_plan_kernels() == PROCESS_DEFAULT
    seen = {}
    with _C.plan_kernel_trust(False):
        assert not _C.trust_plan_kernels()
        with _C.plan_kernel_trust(True):
            assert _C.trust_plan_kernels()
        assert not _C.trust_plan_kernels()
        thread = threading.Thread(target=lambda: seen.update(other=_C.trust_plan_kernels()))
        thread.start()
        thread.join()
    assert seen["other"] == PROCESS_DEFAULT  # another thread keeps the process default
    assert _C.trust_plan_kernels() == PROCESS_DEFAULT
    with pytest.raises(RuntimeError), _C.plan_kernel_trust(not PROCESS_DEFAULT):
        raise RuntimeError("a load that fails")
    assert _C.trust_plan_kernels() == PROCESS_DEFAULT


def test_a_block_cannot_be_entered_twice():
    block = _C.plan_kernel_trust(False)
    with block, pytest.raises(kiln.KilnError, match="entered already"), block:
        pass
    assert _C.trust_plan_kernels() == PROCESS_DEFAULT


@pytest.mark.parametrize(("value", "trusted"), [(None, True), ("1", True), ("0", False)])
def test_environment_sets_the_PROCESS_DEFAULT(value, trusted):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if value is not None:
        env[ENV] = value
    script = "from kiln import _C; print(_C.trust_plan_kernels())"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == str(trusted), out.stderr


def test_engine_trusted_leaves_the_thread_setting_alone():
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3))
    net.mark_output(net.add_activation(net.add_elementwise(x, x, "add"), "relu"), "y")
    plan = build_plan(net)
    for trusted in (None, False, True):
        kiln.Engine(plan, device="cpu", trusted=trusted)
        assert _C.trust_plan_kernels() == PROCESS_DEFAULT


class _Small(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x * 2.0 + 1.0).sum(dim=-1)


@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("fmt", "loader"), [("exported_program", "export"), ("torchscript", "jit")]
)
def test_load_creates_its_engines_untrusted(tmp_path, monkeypatch, fmt, loader):
    # The engines of a saved module are created inside torch's loader (the runtime deserializes
    # them there, on this thread): what the switch says while that loader runs is what they get.
    compiled = kiln.compile(_Small().eval(), [torch.randn(4, 8)], device="cpu", min_block_size=1)
    path = tmp_path / f"m.{'pt2' if fmt == 'exported_program' else 'ts'}"
    kiln.save(compiled, path, output_format=fmt)
    module = getattr(torch, loader)
    real_load, seen = module.load, []

    def spying_load(*args, **kwargs):
        seen.append(_C.trust_plan_kernels())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(module, "load", spying_load)
    x = torch.randn(4, 8)
    for trusted in (False, True):
        loaded = kiln.load(path) if not trusted else kiln.load(path, trusted=True)
        torch.testing.assert_close(loaded(x), compiled(x), rtol=0, atol=0)
    assert seen == [False, True]
    assert _C.trust_plan_kernels() == PROCESS_DEFAULT


# ---- a plan carrying swapped cubins (GPU) -------------------------------------------------------


def two_chains():
    """out = sigmoid((relu(x + y) @ w) * z), x, y, z [64, 32]: the matmul keeps the two pointwise
    chains in two fused layers of the same signature (two float32 inputs, one output, one shape),
    so either kernel runs on the other's operands without leaving its buffers."""
    torch.manual_seed(0)
    net = kiln.Network()
    x, y, z = (net.add_input(n, "float32", (64, 32)) for n in "xyz")
    w = net.add_constant(torch.randn(32, 32).numpy(), name="w")
    t = net.add_activation(net.add_elementwise(x, y, "add"), "relu")
    o = net.add_activation(net.add_elementwise(net.add_matmul(t, w), z, "mul"), "sigmoid")
    net.mark_output(o, "out")
    feed = {"x": torch.randn(64, 32), "y": torch.randn(64, 32), "z": torch.rand(64, 32) + 1}
    return net, feed


def swap_cubins(plan) -> bytes:
    """The plan's bytes with its two fused layers' cubins exchanged (each keeps its own
    cubin_key), sealed as a crafted file would be."""
    a, b = (x["attrs"]["cubin"].encode() for x in plan.layers() if x["op"] == "fused_pointwise")
    assert a != b
    data = plan.serialize()
    # Strings are stored as a little-endian u64 length and the bytes (ir/byte_io.h): exchanging
    # the two keeps every section's length.
    pa, pb = (len(s).to_bytes(8, "little") + s for s in (a, b))
    assert data.count(pa) == 1 and data.count(pb) == 1
    i, j = data.index(pa), data.index(pb)
    if i > j:
        (i, pa), (j, pb) = (j, pb), (i, pa)
    data = data[:i] + pb + data[i + len(pa) : j] + pa + data[j + len(pb) :]
    return seal_plan(data)


# float32 throughout; the GPU's expf and GEMM summation order differ from the CPU's by ulps.
TOL = dict(rtol=1e-4, atol=1e-4)


def _differs(got, want) -> bool:
    return (got - want).abs().max().item() > 0.01


@pytest.fixture(scope="module")
def crafted():
    """(crafted plan bytes, feed, reference output, output of the plan as built on the GPU)."""
    net, feed = two_chains()
    want = run_plan(build_plan(net), feed)["out"]
    plan = build_plan(net, target="cuda")
    assert sum(x["op"] == "fused_pointwise" for x in plan.layers()) == 2
    built = run_plan(plan, feed, target="cuda")["out"]
    torch.testing.assert_close(built, want, **TOL)
    return swap_cubins(plan), feed, want, built


def _run_engine(engine, feed):
    out = engine.create_execution_context().execute({k: v.cuda() for k, v in feed.items()})
    torch.cuda.synchronize()
    return out["out"].cpu()


@pytest.mark.gpu
def test_engine_trusted_runs_the_stored_cubins_untrusted_compiles(crafted):
    data, feed, want, built = crafted
    # Trusted (the default for plans, and explicitly): the plan's code runs, although this
    # process compiled the right kernels for the build: a stored cubin is what a trusted load runs.
    assert _differs(_run_engine(kiln.Engine(data, device="cuda"), feed), want)
    assert _differs(_run_engine(kiln.Engine(data, device="cuda", trusted=True), feed), want)
    # Untrusted, after those loads: Kiln's own kernels, never the swapped ones from the cache.
    got = _run_engine(kiln.Engine(data, device="cuda", trusted=False), feed)
    torch.testing.assert_close(got, want, **TOL)
    assert torch.equal(got, built)


@pytest.mark.gpu
def test_untrusted_engine_compiles_in_a_fresh_process(crafted, tmp_path):
    # A fresh process has no compiled kernels: untrusted, it runs NVRTC once per fused layer.
    data, feed, want, _ = crafted
    (tmp_path / "plan.kiln").write_bytes(data)
    torch.save(feed, tmp_path / "feed.pt")
    script = textwrap.dedent(
        f"""
        import time, torch, kiln
        from kiln import _C
        data = open({str(tmp_path / "plan.kiln")!r}, "rb").read()
        feed = {{k: v.cuda() for k, v in torch.load({str(tmp_path / "feed.pt")!r}).items()}}
        for trusted in (True, False):
            before, start = _C.nvrtc_compile_count(), time.perf_counter()
            engine = kiln.Engine(data, device="cuda", trusted=trusted)
            seconds = time.perf_counter() - start
            y = engine.create_execution_context().execute(feed)["out"]
            torch.cuda.synchronize()
            torch.save(y.cpu(), {str(tmp_path)!r} + f"/y_{{trusted}}.pt")
            print("trusted", trusted, "compilations", _C.nvrtc_compile_count() - before,
                  "load_s", round(seconds, 4))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    print(out.stdout)  # the load times, for docs/security.md
    assert "trusted True compilations 0" in out.stdout, out.stdout + out.stderr
    assert "trusted False compilations 2" in out.stdout, out.stdout + out.stderr
    assert _differs(torch.load(tmp_path / "y_True.pt"), want)
    torch.testing.assert_close(torch.load(tmp_path / "y_False.pt"), want, **TOL)


class _RunsEngine(torch.nn.Module):
    def __init__(self, engine):
        super().__init__()
        self.engine = engine

    def forward(self, x, y, z):
        return torch.ops.kiln.execute_engine([x, y, z], self.engine)[0]


@pytest.mark.gpu
@pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_load_recompiles_the_kernels_of_a_saved_engine(crafted, tmp_path):
    data, feed, want, built = crafted
    engine = rt.TorchEngine(data, "cuda")
    assert list(engine.input_names()) == ["x", "y", "z"]
    path = tmp_path / "crafted.ts"
    torch.jit.save(torch.jit.script(_RunsEngine(engine)), str(path))
    args = [feed[n].cuda() for n in "xyz"]
    with torch.no_grad():
        assert _differs(kiln.load(path, trusted=True)(*args).cpu(), want)
        got = kiln.load(path)(*args).cpu()  # untrusted by default
    torch.testing.assert_close(got, want, **TOL)
    assert torch.equal(got, built)
