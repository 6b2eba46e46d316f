"""torch.compile(backend="kiln"): the dynamo backend against eager PyTorch on the current weights.

Float32 results are compared at 1e-4 (the reference backend computes in float32, as in
test_compile.py); bfloat16 autocast results at 2e-2 (bfloat16 keeps 8 bits of mantissa, and
Kiln's and PyTorch's kernels round intermediate results at different points).
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch._dynamo
import torch.nn as nn
from layer_util import DEVICES

import kiln
import kiln.compiler
from kiln import dynamo
from kiln import runtime as rt

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")

TOL = dict(rtol=1e-4, atol=1e-4)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


@torch.library.custom_op("kiln_test::dyn_odd", mutates_args=())
def dyn_odd(x: torch.Tensor) -> torch.Tensor:
    """An op Kiln has no converter for."""
    return x * 1.5 + 0.25


@dyn_odd.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(Net):
    def forward(self, x):
        return self.fc2(dyn_odd(torch.relu(self.fc1(x))))


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(autouse=True)
def _reset_stats():
    dynamo.reset_stats()


@pytest.fixture
def builds(monkeypatch):
    """The reports of every kiln.compile the backend ran (one per engine build)."""
    reports = []
    real = kiln.compiler.compile

    def counting(*args, **kwargs):
        compiled = real(*args, **kwargs)
        reports.append(compiled.report)
        return compiled

    monkeypatch.setattr(kiln.compiler, "compile", counting)
    return reports


@pytest.fixture
def warnings():
    messages = []
    kiln.set_log_sink(lambda severity, message: messages.append((severity, message)))
    yield messages
    kiln.set_log_sink(None)


def _model(device, cls=Net):
    torch.manual_seed(0)
    model = cls().to(device).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _check(compiled, model, x, **tol):
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(compiled(x), expected, **(tol or TOL))


def test_backend_is_registered():
    assert "kiln" in torch._dynamo.list_backends()
    assert torch._dynamo.lookup_backend("kiln") is dynamo.backend


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_weight_change_refits(device, builds):
    model = _model(device)
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    x = torch.randn(4, 8, device=device)
    _check(compiled, model, x)
    _check(compiled, model, x)
    assert len(builds) == 1 and builds[0].num_engines == 1 and not builds[0].fallbacks
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    _check(compiled, model, x)
    assert len(builds) == 1 and dynamo.stats() == {"builds": 1, "refits": 1}
    with torch.no_grad():
        model.bn.running_mean.mul_(3.0)  # a buffer (folded into fc1 by the builder)
    _check(compiled, model, x)
    assert dynamo.stats() == {"builds": 1, "refits": 2}
    _check(compiled, model, torch.randn(4, 8, device=device))
    assert dynamo.stats() == {"builds": 1, "refits": 2}  # unchanged weights: nothing to do


@pytest.mark.parametrize("device", DEVICES)
def test_training_loop_with_compiled_evaluation(device, builds):
    """Train steps in eager (and through the compiled model: autograd runs in PyTorch), eval steps
    compiled; after every optimizer step the evaluation uses the new weights."""
    model = _model(device)
    reference = _model(device)  # trained in lockstep without torch.compile
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    opts = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (model, reference)]
    evals = []
    for step in range(4):
        x = torch.randn(16, 8, device=device)
        target = torch.randn(16, 4, device=device)
        model.train()
        reference.train()
        for m, opt, use_compiled in ((model, opts[0], step % 2 == 1), (reference, opts[1], False)):
            opt.zero_grad()
            out = (compiled if use_compiled else m)(x)
            nn.functional.mse_loss(out, target).backward()
            opt.step()
        torch.testing.assert_close(model.fc1.weight, reference.fc1.weight, **TOL)
        model.eval()
        with torch.no_grad():
            for _ in range(2):
                xe = torch.randn(5, 8, device=device)
                y = compiled(xe)
                torch.testing.assert_close(y, model(xe), **TOL)
                evals.append(y)
    # One build, then one refit per later evaluation phase (none within one).
    assert len(builds) == 1 and dynamo.stats() == {"builds": 1, "refits": 3}


def test_weight_replaced_through_data_and_weights_changed(builds):
    model = _model("cpu")
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    x = torch.randn(4, 8)
    _check(compiled, model, x)
    model.fc2.weight.data = torch.randn(4, 32)  # new storage: a different data pointer
    _check(compiled, model, x)
    assert dynamo.stats() == {"builds": 1, "refits": 1}
    model.fc2.weight.data.copy_(torch.randn(4, 32))  # bypasses the version counter
    dynamo.weights_changed()
    _check(compiled, model, x)
    assert dynamo.stats() == {"builds": 1, "refits": 2}


@pytest.mark.parametrize("autocast", [False, True])
def test_cpu_autocast_matches_eager_under_the_same_autocast(autocast):
    model = _model("cpu")
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else TOL
    for _ in range(2):
        x = torch.randn(6, 8)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, expected = compiled(x), model(x)
        assert y.dtype == expected.dtype
        torch.testing.assert_close(y, expected, **tol)
        with torch.no_grad():
            model.fc1.bias.add_(0.5)
    # autocast off after on: another graph, float32 again
    _check(compiled, model, torch.randn(6, 8))


@pytest.mark.gpu
def test_cuda_autocast_float16():
    model = _model("cuda")
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    x = torch.randn(6, 8, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        y, expected = compiled(x), model(x)
    assert y.dtype == expected.dtype
    torch.testing.assert_close(y, expected, rtol=1e-2, atol=1e-2)


def test_options_reach_kiln_compile(builds):
    model = _model("cpu")
    x = torch.randn(4, 8)
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 100})
    _check(compiled, model, x)
    assert builds[-1].num_engines == 0  # every segment is smaller than min_block_size
    torch._dynamo.reset()
    options = {"min_block_size": 1, "torch_executed_ops": ["aten.relu.default"]}
    compiled = torch.compile(model, backend="kiln", options=options)
    _check(compiled, model, x)
    assert [f.target for f in builds[-1].fallbacks] == ["aten.relu.default"]
    assert builds[-1].num_engines == 2


def test_unknown_option_is_refused():
    compiled = torch.compile(_model("cpu"), backend="kiln", options={"min_blok_size": 1})
    with pytest.raises(Exception, match="unknown options.*min_blok_size"):
        compiled(torch.randn(4, 8))


def test_uncompilable_graph_runs_eagerly_with_a_warning(builds, warnings):
    model = _model("cpu", WithCustomOp)
    options = {"min_block_size": 1, "require_full_compilation": True, "torch_ops_in_engine": ()}
    compiled = torch.compile(model, backend="kiln", options=options)
    for _ in range(2):
        _check(compiled, model, torch.randn(4, 8))
    assert builds == []
    messages = [m for s, m in warnings if s == "WARNING"]
    assert len(messages) == 1 and "runs in PyTorch (eager)" in messages[0], warnings
    assert "kiln_test.dyn_odd" in messages[0]


def test_uncompilable_graph_raises_without_fallback():
    model = _model("cpu", WithCustomOp)
    options = {
        "min_block_size": 1,
        "require_full_compilation": True,
        "fallback": False,
        "torch_ops_in_engine": (),
    }
    compiled = torch.compile(model, backend="kiln", options=options)
    with pytest.raises(kiln.KilnError, match="dyn_odd"), torch.no_grad():
        compiled(torch.randn(4, 8))


def test_custom_op_runs_in_pytorch_between_engines(builds):
    model = _model("cpu", WithCustomOp)
    options = {"min_block_size": 1, "torch_ops_in_engine": ()}
    compiled = torch.compile(model, backend="kiln", options=options)
    _check(compiled, model, torch.randn(4, 8))
    assert builds[0].num_engines == 2
    assert [f.target for f in builds[0].fallbacks] == ["kiln_test.dyn_odd.default"]
    builds.clear()
    torch._dynamo.reset()
    # By default the op runs inside the one engine instead (torch ops in engines, automatic).
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    _check(compiled, model, torch.randn(4, 8))
    assert builds[0].num_engines == 1 and not builds[0].fallbacks, builds[0].text


def test_batchnorm_in_training_mode_runs_eagerly(warnings):
    model = _model("cpu").train()
    reference = _model("cpu").train()
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    x = torch.randn(8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference(x), **TOL)
    torch.testing.assert_close(model.bn.running_mean, reference.bn.running_mean, **TOL)
    assert any("mutates state" in m for _, m in warnings)


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_batch(device, builds):
    model = _model(device)
    compiled = torch.compile(model, backend="kiln", dynamic=True, options={"min_block_size": 1})
    for batch in (3, 5, 6, 2):
        _check(compiled, model, torch.randn(batch, 8, device=device))
    assert len(builds) == 1  # the range [1, 2 * 3] covers them all
    _check(compiled, model, torch.randn(11, 8, device=device))  # past the range: rebuilt
    assert len(builds) == 2
    _check(compiled, model, torch.randn(20, 8, device=device))  # range [1, 22]
    assert len(builds) == 2
    # dynamic=True passes BatchNorm's eps as a graph input: baked, and checked by value
    model.bn.eps = 0.5
    _check(compiled, model, torch.randn(20, 8, device=device))
    assert len(builds) == 3


def test_max_dynamic_size_option(builds):
    model = _model("cpu")
    options = {"min_block_size": 1, "max_dynamic_size": 64}
    compiled = torch.compile(model, backend="kiln", dynamic=True, options=options)
    for batch in (3, 40, 64):
        _check(compiled, model, torch.randn(batch, 8))
    assert len(builds) == 1


def test_entry_point_finds_the_backend_without_importing_kiln(tmp_path):
    """torch discovers the backend from the `torch_dynamo_backends` entry point declared in
    setup.py (here a stand-in distribution with the same declaration)."""
    line = "kiln = kiln.dynamo:backend"
    assert line in open(os.path.join(ROOT, "setup.py")).read()
    dist = tmp_path / "kiln_entry_point-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kiln-entry-point\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[torch_dynamo_backends]\n{line}\n")
    script = textwrap.dedent(
        """
        import sys, torch
        assert "kiln" not in sys.modules
        model = torch.nn.Linear(8, 4).eval()
        compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
        x = torch.randn(2, 8)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))
            model.weight.add_(1.0)
            torch.testing.assert_close(compiled(x), model(x))
        from kiln import dynamo
        assert torch._dynamo.lookup_backend("kiln") is dynamo.backend
        print("ok")
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.path.join(ROOT, "py")])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_size_input_no_tensor_has_is_built_per_value(builds, warnings):
    # A count that dynamo passes as a size input but that is the size of no tensor input (a
    # detector's number of boxes, computed in PyTorch before the graph): each engine is built
    # for one value of it and rebuilt when it changes, at most MAX_SIZE_BUILDS more times; past
    # that the graph runs eagerly, still correct.
    def f(x, n):
        y = (x * 2.0 + 1.0).relu().sum(0)
        return torch.cat([y, y.new_zeros(n)])

    compiled = torch.compile(f, backend="kiln", dynamic=True, options={"min_block_size": 1})
    x = torch.randn(8, 6)
    for n in (2, 2, 4):
        torch.testing.assert_close(compiled(x, n), f(x, n), **TOL)
    assert len(builds) == 2, [m for _, m in warnings]
    for n in (8, 12, 16, 24):
        torch.testing.assert_close(compiled(x, n), f(x, n), **TOL)
    assert len(builds) == 1 + dynamo.MAX_SIZE_BUILDS
    assert any("took more than 4 values" in m for _, m in warnings)


def test_values_in_turn_switch_between_kept_builds(builds, warnings):
    # One graph called with two values of a number and of a size in turn, as a detector's
    # remove_small_boxes runs with min_size 1e-3 for its proposals and 1e-2 for its detections:
    # one build per value, kept; later calls switch between them instead of building again.
    def f(x, s, n):
        y = (x * s + 1.0).relu().sum(0)
        return torch.cat([y, y.new_zeros(n)])

    compiled = torch.compile(f, backend="kiln", dynamic=True, options={"min_block_size": 1})
    x = torch.randn(8, 6)
    for _ in range(4):
        for s, n in ((0.5, 2), (2.0, 4)):
            torch.testing.assert_close(compiled(x, s, n), f(x, s, n), **TOL)
    assert len(builds) == 2, [m for _, m in warnings]
    assert not [m for _, m in warnings if "(eager)" in m]


def test_large_weights_keep_only_the_build_in_use(builds, monkeypatch):
    # Builds whose baked weights together would pass MAX_KEPT_WEIGHT_BYTES are not kept: a call
    # with the other value builds again (as before builds were kept).
    monkeypatch.setattr(dynamo, "MAX_KEPT_WEIGHT_BYTES", 100)  # less than two Linear(6, 6)
    lin = torch.nn.Linear(6, 6).eval()

    def f(x, s):
        return lin(x) * s

    compiled = torch.compile(f, backend="kiln", dynamic=True, options={"min_block_size": 1})
    x = torch.randn(4, 6)
    with torch.no_grad():
        for s in (0.5, 2.0, 0.5):
            torch.testing.assert_close(compiled(x, s), f(x, s), **TOL)
    assert len(builds) == 3


def test_kept_builds_take_new_weights(builds):
    # A weight updated in place reaches every kept build: the one in use is refitted, and the
    # other when a call switches to it.
    lin = torch.nn.Linear(6, 6).eval()

    def f(x, s):
        return lin(x) * s

    compiled = torch.compile(f, backend="kiln", dynamic=True, options={"min_block_size": 1})
    x = torch.randn(4, 6)
    dynamo.reset_stats()
    with torch.no_grad():
        for s in (0.5, 2.0):
            torch.testing.assert_close(compiled(x, s), f(x, s), **TOL)
        lin.weight.mul_(-1.5)
        for s in (0.5, 2.0, 0.5):
            torch.testing.assert_close(compiled(x, s), f(x, s), **TOL)
    assert len(builds) == 2
    assert dynamo.stats()["refits"] >= 2


def test_graph_kiln_cannot_build_dynamically_is_built_for_its_sizes(warnings):
    # x's dims are dynamic, n a baked size: at n = 24 the profile's minimum x (1 x 1) cannot be
    # reshaped to [24, -1], so the dynamic build fails; the backend then builds for this call's
    # sizes instead of running the graph eagerly.
    def f(x, n):
        return (x.reshape(n, -1) * 2.0 + 1.0).relu().sum(0)

    compiled = torch.compile(f, backend="kiln", dynamic=True, options={"min_block_size": 1})
    x = torch.randn(8, 6)
    for n in (2, 4, 8, 24):
        torch.testing.assert_close(compiled(x, n), f(x, n), **TOL)
    assert not [m for _, m in warnings if "(eager)" in m]
    assert dynamo.stats()["builds"] >= 4
