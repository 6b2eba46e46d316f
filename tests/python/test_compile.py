"""kiln.compile end to end: torch.export -> KGraph -> partition -> engines + PyTorch fallback.

Every model is compared with eager PyTorch on fresh random inputs. The reference backend computes
in float32 (float64 accumulation in places), so whole models match eager float32 to 1e-4; CUDA
runs strict FP32 unless tf32 is enabled, and is compared at the same tolerance.
"""

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from layer_util import DEVICES

import kiln
from kiln import runtime as rt

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")

TOL = dict(rtol=1e-4, atol=1e-4)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():  # non-trivial running statistics
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


class Block(nn.Module):
    """A pre-norm transformer block written with explicit attention (matmul/softmax/matmul).

    Written so that TorchScript compiles it too (no generator expression): test_torchscript
    scripts and traces the same block."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        b, s, d = x.shape
        h = d // self.heads
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q = q.view(b, s, self.heads, h).transpose(1, 2)
        k = k.view(b, s, self.heads, h).transpose(1, 2)
        v = v.view(b, s, self.heads, h).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-2, -1) / h**0.5, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.drop(self.proj(y))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


@torch.library.custom_op("kiln_test::odd_scale", mutates_args=())
def odd_scale(x: torch.Tensor) -> torch.Tensor:
    """An op Kiln has no converter for."""
    return x * 1.5 + 0.25


@odd_scale.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = odd_scale(h)
        return torch.sigmoid(self.b(h)) * 2.0


def _engines(compiled):
    return [n for n in compiled.graph_module.graph.nodes if n.op == "call_module"]


@pytest.mark.parametrize("device", DEVICES)
def test_small_cnn_is_one_engine(device):
    model = SmallCNN().eval().to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    compiled = kiln.compile(model, [x], device=device, min_block_size=1)
    assert len(_engines(compiled)) == 1
    assert compiled.report.num_engines == 1 and compiled.report.fallbacks == []
    for _ in range(2):
        x = torch.randn(2, 3, 16, 16, device=device)
        torch.testing.assert_close(compiled(x), model(x), **TOL)


def test_one_engine_module_calls_its_engine_directly():
    # A module that is one engine on its inputs calls the engine's op itself (no GraphModule and
    # EngineModule calls), with the outputs as the full path gives them, one or several. A hook on
    # the engine's module takes the full path again, so the hook sees the call.
    class TwoOut(nn.Module):
        def forward(self, x, y):
            a = (x * 2.0 + y).relu()
            return a.sum(0), (a - y).exp()

    x, y = torch.randn(4, 8), torch.randn(4, 8)
    for model, args in ((TwoOut(), (x, y)), (nn.Linear(8, 3), (x,))):
        compiled = kiln.compile(model, list(args), min_block_size=1, device="cpu")
        engine = compiled._single_engine()
        assert isinstance(engine, rt.EngineModule)
        got, want = compiled(*args), model(*args)
        full = compiled.graph_module(*args)
        if isinstance(want, tuple):
            assert isinstance(got, tuple) and len(got) == len(want) == len(full)
            assert all(torch.equal(g, f) for g, f in zip(got, full, strict=True))
        else:
            assert torch.equal(got, full[0])
        torch.testing.assert_close(got, want, **TOL)
        seen = []
        handle = engine.register_forward_hook(lambda *a, seen=seen: seen.append(1))
        assert compiled._single_engine() is None
        compiled(*args)
        assert seen == [1]
        handle.remove()


@pytest.mark.parametrize("device", DEVICES)
def test_transformer_block_dynamic_batch_and_sequence(device):
    torch.manual_seed(0)
    model = Block().eval().to(device)
    spec = kiln.Input(min_shape=(1, 2, 32), opt_shape=(2, 8, 32), max_shape=(4, 16, 32))
    compiled = kiln.compile(model, [spec], device=device)
    assert compiled.report.num_engines == 1, str(compiled.report)
    assert compiled.report.fallbacks == []
    for shape in [(1, 2, 32), (2, 8, 32), (3, 5, 32), (4, 16, 32)]:
        x = torch.randn(*shape, device=device)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_unconvertible_op_falls_back_to_pytorch(device):
    model = WithCustomOp().eval().to(device)
    x = torch.randn(4, 16, device=device)
    compiled = kiln.compile(model, [x], device=device, min_block_size=1, torch_ops_in_engine=())
    report = compiled.report
    assert report.num_engines == 2, str(report)
    assert [f.target for f in report.fallbacks] == ["kiln_test.odd_scale.default"]
    assert "no converter" in report.fallbacks[0].reason
    assert len(_engines(compiled)) == 2
    for _ in range(2):
        x = torch.randn(4, 16, device=device)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), **TOL)


def test_nonzero_in_the_middle_falls_back():
    class M(nn.Module):
        def forward(self, x):
            y = torch.relu(x) * 2.0 + 1.0
            count = torch.nonzero(y > 1.5).shape[0]
            return y.sum(dim=1) + count

    model = M().eval()
    x = torch.randn(6, 5)
    compiled = kiln.compile(model, [x], device="cpu", min_block_size=1)
    assert compiled.report.fallbacks, str(compiled.report)
    for _ in range(2):
        x = torch.randn(6, 5)
        torch.testing.assert_close(compiled(x), model(x), **TOL)


def test_min_block_size_moves_small_segments_to_pytorch():
    model = WithCustomOp().eval()
    x = torch.randn(4, 16)
    # Before odd_scale: permute, addmm, relu (3 nodes); after: permute, addmm, sigmoid, mul (4).
    compiled = kiln.compile(model, [x], device="cpu", min_block_size=4, torch_ops_in_engine=())
    assert compiled.report.num_engines == 1, str(compiled.report)
    reasons = {f.target: f.reason for f in compiled.report.fallbacks}
    assert "below min_block_size 4" in reasons["aten.relu.default"]
    torch.testing.assert_close(compiled(x), model(x), **TOL)
    none = kiln.compile(model, [x], device="cpu", min_block_size=100)
    assert none.report.num_engines == 0 and _engines(none) == []
    torch.testing.assert_close(none(x), model(x), **TOL)


def test_torch_executed_ops_forces_ops_to_pytorch():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = kiln.compile(
        model, [x], device="cpu", min_block_size=1, torch_executed_ops={torch.ops.aten.relu.default}
    )
    assert [f.target for f in compiled.report.fallbacks] == ["aten.relu.default"]
    assert compiled.report.fallbacks[0].reason == "listed in torch_executed_ops"
    assert compiled.report.num_engines == 2
    torch.testing.assert_close(compiled(x), model(x), **TOL)
    by_name = kiln.compile(
        model, [x], device="cpu", min_block_size=1, torch_executed_ops={"aten.relu.default"}
    )
    assert [f.target for f in by_name.report.fallbacks] == ["aten.relu.default"]


def test_require_full_compilation_lists_every_unsupported_node():
    class M(nn.Module):
        def forward(self, x):
            return odd_scale(torch.relu(odd_scale(x)))

    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(
            M(),
            [torch.randn(3, 4)],
            device="cpu",
            require_full_compilation=True,
            torch_ops_in_engine=(),
        )
    message = str(err.value)
    assert "2 nodes cannot run in a Kiln engine" in message
    lines = [line for line in message.splitlines() if "(kiln_test.odd_scale.default)" in line]
    assert len(lines) == 2
    assert all("no converter for kiln_test.odd_scale.default" in line for line in lines)
    assert "test_compile.py" in message  # the source location of each node
    # With torch ops inside engines (the default "auto"), every node stays in the one engine.
    x = torch.randn(3, 4)
    inside = kiln.compile(M(), [x], device="cpu", require_full_compilation=True, cache_dir=False)
    assert inside.report.num_engines == 1 and not inside.report.fallbacks, inside.report.text
    torch.testing.assert_close(inside(x), M()(x), **TOL)
    # A fully convertible model passes.
    compiled = kiln.compile(
        SmallCNN().eval(), [torch.randn(1, 3, 8, 8)], device="cpu", require_full_compilation=True
    )
    assert compiled.report.num_engines == 1


def test_dry_run_reports_segments_without_building():
    report = kiln.compile(
        WithCustomOp().eval(),
        [torch.randn(4, 16)],
        device="cpu",
        dry_run=True,
        min_block_size=1,
        torch_ops_in_engine=(),
    )
    assert isinstance(report, kiln.compiler.CompileReport)
    assert report.num_engines == 2
    assert [s["kind"] for s in report.segments] == ["engine", "pytorch", "engine"]
    assert report.segments[1]["ops"] == ["kiln_test.odd_scale.default"]
    text = str(report)
    assert "2 engine segments, 1 PyTorch segment" in text
    assert "kiln_test.odd_scale.default" in text and "no converter" in text


def test_debug_logs_the_report():
    messages = []
    kiln.set_log_sink(lambda severity, message: messages.append(message))
    try:
        kiln.set_log_level("info")
        kiln.compile(
            SmallCNN().eval(), [torch.randn(1, 3, 8, 8)], device="cpu", dry_run=True, debug=True
        )
    finally:
        kiln.set_log_level("warning")
        kiln.set_log_sink(None)
    assert any("engine segment" in m for m in messages)
    assert any("aten.convolution.default" in m for m in messages)


def test_input_validation():
    with pytest.raises(ValueError, match="either shape or"):
        kiln.Input(shape=(1, 2), min_shape=(1, 2))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        kiln.Input(min_shape=(4,), opt_shape=(2,), max_shape=(8,))
    spec = kiln.Input(min_shape=(1, 3), opt_shape=(4, 3), max_shape=(8, 3))
    assert spec.dynamic_dims == [0]
    with pytest.raises(TypeError, match="torch.jit.ScriptModule"):
        kiln.compile(SmallCNN(), [torch.randn(1, 3, 8, 8)], ir="torchscript")


def test_exported_program_is_accepted():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(model, (x,))
    compiled = kiln.compile(program, [x], device="cpu", min_block_size=1)
    assert compiled.report.num_engines == 1
    torch.testing.assert_close(compiled(x), model(x), **TOL)


class Mixed(nn.Module):
    """One model touching most converters: SDPA (kept whole), slicing, pointwise math, clamps,
    embedding, casts, concat, comparisons and where, number operands on either side."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)

    def forward(self, x, ids):
        q = x.view(2, 4, 3, 8)
        a = F.scaled_dot_product_attention(q, q * 0.5, q, is_causal=True)
        b = a[:, 1:, :2]
        c = torch.exp(b) + torch.rsqrt(b.abs() + 1)
        d = F.relu6(c) + F.leaky_relu(c, 0.2) + F.hardswish(c)
        return (
            d.mean(-1),
            self.emb(ids),
            x.to(torch.float16),
            torch.cat([x, x], 1),
            x.pow(2),
            (x.abs() + 1e-3).sqrt(),
            torch.where(x > 0, x, 0.0),
            -x,
            1 - x,
            torch.clamp(x, min=-0.5),
            torch.log_softmax(x, -1),
            F.silu(x) + torch.tanh(x) - torch.sigmoid(x) / 2,
        )


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_model_converts_fully(device):
    model = Mixed().eval().to(device)
    x = torch.randn(2, 4, 24, device=device)
    ids = torch.randint(0, 10, (2, 3), device=device)
    compiled = kiln.compile(model, [x, ids], device=device, require_full_compilation=True)
    ops = {op for s in compiled.report.segments for op in s["ops"]}
    assert "aten.scaled_dot_product_attention.default" in ops  # not decomposed: one attention layer
    assert compiled.report.num_engines == 1
    for got, want in zip(compiled(x, ids), model(x, ids), strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **TOL)


def test_symbolic_sizes_across_segments():
    # gelu forced to PyTorch splits the dynamic block: the views after it need the batch and
    # sequence sizes, which engines cannot hand over; the second engine recomputes them from the
    # graph input, so the split costs exactly one extra engine and only gelu runs in PyTorch.
    torch.manual_seed(0)
    model = Block().eval()
    spec = kiln.Input(min_shape=(1, 2, 32), opt_shape=(2, 8, 32), max_shape=(4, 16, 32))
    compiled = kiln.compile(
        model, [spec], device="cpu", min_block_size=1, torch_executed_ops={"aten.gelu.default"}
    )
    assert compiled.report.num_engines == 2, str(compiled.report)
    assert [f.target for f in compiled.report.fallbacks] == ["aten.gelu.default"]
    for shape in [(1, 2, 32), (3, 5, 32), (4, 16, 32)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), **TOL)


# ---- export of dynamic dims: guards torch cannot prove --------------------------------------


class UnprovableGuard(nn.Module):
    """Branches on s*(8 + s - s % 8) > 1, true for every s >= 1: the guard GPT-2 on CUDA puts on
    its sequence length (the attention mask padded to a multiple of 8), which torch's solver
    cannot prove over a Dim range, so a strict Dim export raises a constraint violation."""

    def forward(self, x):
        s = x.shape[1]
        y = x * 2
        if s * (8 + s - s % 8) > 1:
            y = y + 1
        return y


class NarrowingBranch(nn.Module):
    def forward(self, x):
        return x * 2 if x.shape[1] > 100 else x - 1


class SpecializingBranch(nn.Module):
    def forward(self, x):
        return x * 2 if x.shape[1] == 16 else x - 1


class GuardFailsInRange(nn.Module):
    """Branches on s*s - 20*s + 99 > 0, false only for s in 9..11: neither provable nor a range,
    so the Dim.DYNAMIC export keeps it as a call-time guard (which Kiln's engines do not run)."""

    def forward(self, x):
        s = x.shape[1]
        return x * 2 if s * s - 20 * s + 99 > 0 else x - 1


class ModuloBranch(nn.Module):
    def forward(self, x):
        return x * 2 if x.shape[1] % 8 == 0 else x - 1


SEQ_SPEC = kiln.Input(min_shape=(2, 8), opt_shape=(2, 16), max_shape=(2, 512))


def _warnings_of(fn):
    messages = []
    kiln.set_log_sink(lambda severity, message: messages.append((severity, message)))
    try:
        result = fn()
    finally:
        kiln.set_log_sink(None)
    return result, [m for s, m in messages if s.lower().startswith("warn")]


def test_unprovable_guard_retries_with_dynamic_hints():
    with pytest.raises(Exception, match="Not all values"):  # the strict export alone refuses
        torch.export.export(
            UnprovableGuard(),
            (torch.randn(2, 16),),
            dynamic_shapes=({1: torch.export.Dim("s", min=8, max=512)},),
        )
    compiled, warnings = _warnings_of(
        lambda: kiln.compile(UnprovableGuard(), [SEQ_SPEC], device="cpu", min_block_size=1)
    )
    assert any("Dim.DYNAMIC" in m and "% 8" in m for m in warnings), warnings
    assert compiled.report.num_engines == 1
    for n in (8, 37, 512):  # the whole requested range still runs, with the branch taken
        x = torch.randn(2, n)
        torch.testing.assert_close(compiled(x), x * 2 + 1, **TOL)


class ValueBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):  # a Python branch on tensor values: not one exported graph
        if not torch.isfinite(x).all():
            x = torch.nan_to_num(x)
        return self.lin(x) * 2


def test_a_branch_on_tensor_values_follows_the_example_and_is_checked_each_call(tmp_path):
    model = ValueBranch().eval()
    x = torch.randn(3, 4)
    compiled, warnings = _warnings_of(
        lambda: kiln.compile(model, [x], device="cpu", min_block_size=1)
    )
    assert any("reads tensor values" in m and "isfinite" in m for m in warnings), warnings
    report = compiled.report
    assert report.num_engines == 1 and report.fallbacks == [], report.text
    assert report.checks and "speculated branches" in report.text
    (where,) = compiled.speculated  # file:line `code`: the truth the engines follow
    assert re.fullmatch(
        r"test_compile\.py:\d+ `if not torch\.isfinite\(x\)\.all\(\):`: True", where
    )
    with torch.no_grad():
        for _ in range(2):  # fresh finite inputs: the engines' branch, no warning
            y = torch.randn(3, 4)
            torch.testing.assert_close(compiled(y), model(y), **TOL)
        y[1, 2] = float("nan")  # the other branch: the model's own code runs it
        got, warnings = _warnings_of(lambda: compiled(y))
        torch.testing.assert_close(got, model(y), **TOL)
        assert torch.isfinite(got).all()
    assert any("reads another value" in m for m in warnings), warnings
    # Without the model (a saved and loaded module), that call is refused, never wrong.
    path = tmp_path / "m.pt2"
    kiln.save(compiled, str(path))
    loaded = kiln.load(str(path))
    torch.testing.assert_close(loaded(x), model(x), **TOL)
    with pytest.raises(Exception, match="Runtime assertion failed"):
        loaded(y)


class IntegerReads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        n = int((x > 0).sum())  # an int read from a tensor: a size below
        y = self.lin(x)
        if (y > 100).any().item():  # a bool read with .item(): a branch
            y = y / 100
        return y[:, : n % 4 + 1]


def test_integer_and_item_reads_follow_the_example_and_are_checked():
    model = IntegerReads().eval()

    def sample(positives):  # 3 x 4 with exactly `positives` entries above 0
        x = -torch.rand(3, 4) - 0.1
        x.view(-1)[torch.randperm(12)[:positives]] = torch.rand(positives) + 0.1
        return x

    x = sample(6)
    compiled = kiln.compile(model, [x], device="cpu", min_block_size=1)
    assert compiled.report.num_engines == 1 and compiled.report.fallbacks == []
    assert len(compiled.speculated) == 2, compiled.speculated
    with torch.no_grad():
        y = sample(6)  # the same reads: the engine, 3 columns
        got, warnings = _warnings_of(lambda: compiled(y))
        assert got.shape == (3, 3) and not warnings
        torch.testing.assert_close(got, model(y), **TOL)
        y = sample(5)  # another count: the model's own code, 2 columns
        got, warnings = _warnings_of(lambda: compiled(y))
        assert got.shape == (3, 2) and any("another" in m for m in warnings), warnings
        torch.testing.assert_close(got, model(y), **TOL)


class ItemBranch(torch.nn.Module):
    def forward(self, x):  # a branch on a Python number read from a tensor
        if x.sum().item() > 0:
            return x * 2
        return x - 1


def test_data_dependent_branch_is_explained_and_the_backend_compiles_it():
    with pytest.raises(kiln.KilnError, match=r"branches on tensor values.*backend='kiln'"):
        kiln.compile(ItemBranch(), [torch.randn(3, 4)], device="cpu", min_block_size=1)
    torch._dynamo.reset()
    compiled = torch.compile(
        ItemBranch(), backend="kiln", options={"device": "cpu", "min_block_size": 1}
    )
    x = torch.randn(3, 4).abs()
    torch.testing.assert_close(compiled(x), x * 2, **TOL)


class Uint8Image(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, img):  # uint8 frames in and out, as camera pipelines feed them
        y = self.conv(img.float() / 255).relu()
        return y, (y * 255).to(torch.uint8)


def test_a_dtype_engines_lack_runs_in_pytorch_around_the_engine():
    m = Uint8Image().eval()
    img = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    compiled = kiln.compile(m, [img], device="cpu", min_block_size=1)
    report = compiled.report
    assert report.num_engines == 1
    reasons = sorted(f.reason for f in report.fallbacks)
    assert len(reasons) == 2, reasons
    assert "makes a torch.uint8 tensor" in reasons[0] and "reads img, a torch.uint8" in reasons[1]
    img = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    (got, got8), (want, want8) = compiled(img), m(img)
    torch.testing.assert_close(got, want, **TOL)
    assert got8.dtype == torch.uint8 and (got8.int() - want8.int()).abs().max() <= 1


def test_retry_refuses_a_narrowed_range():
    with pytest.raises(kiln.KilnError, match=r"input 0 \(x\) dim 1 dynamic only over 8\.\.100"):
        kiln.compile(NarrowingBranch(), [SEQ_SPEC], device="cpu", min_block_size=1)


def test_retry_refuses_a_specialized_dim():
    with pytest.raises(kiln.KilnError, match="cannot keep the requested dynamic dims.*16"):
        kiln.compile(SpecializingBranch(), [SEQ_SPEC], device="cpu", min_block_size=1)


def test_dim_range_starting_at_one_is_covered():
    # torch reports a lower bound of 0 or 1 as 2 after a Dim.DYNAMIC export: not a narrowing.
    spec = kiln.Input(min_shape=(2, 1), opt_shape=(2, 16), max_shape=(2, 512))
    compiled = kiln.compile(UnprovableGuard(), [spec], device="cpu", min_block_size=1)
    for n in (1, 9):
        x = torch.randn(2, n)
        torch.testing.assert_close(compiled(x), x * 2 + 1, **TOL)


@pytest.mark.parametrize(
    "model,guard,size",
    [(GuardFailsInRange(), r"\+ 99|99 \+", 9), (ModuloBranch(), r"% 8\) == 0", 9)],
    ids=["quadratic", "modulo"],
)
def test_retry_refuses_a_guard_that_fails_inside_the_range(model, guard, size):
    # The traced branch is wrong at `size`: an engine for 8..512 would silently compute it there.
    with pytest.raises(kiln.KilnError, match=rf"guard .*({guard}).* fails at x dim 1 = {size}"):
        kiln.compile(model, [SEQ_SPEC], device="cpu", min_block_size=1)
    # Where the guard holds over the whole range, the same model compiles.
    spec = kiln.Input(min_shape=(2, 12), opt_shape=(2, 16), max_shape=(2, 64))
    if isinstance(model, GuardFailsInRange):
        compiled = kiln.compile(model, [spec], device="cpu", min_block_size=1)
        x = torch.randn(2, 13)
        torch.testing.assert_close(compiled(x), x * 2, **TOL)
