"""kiln.compile(ir="torchscript"): the C++ TorchScript frontend (torchscript/) end to end.

Scripted and traced models are compiled on the reference backend (CPU; CUDA variants are marked
gpu), compared with eager PyTorch on fresh random inputs, saved with torch.jit.save and loaded in
a fresh process that imports only torch and kiln. The reference backend computes in float32, so
whole models match eager float32 to 1e-4 (as in test_compile.py); a saved and reloaded module
runs the same engines on the same inputs, so its outputs are bit-identical.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from layer_util import DEVICES, run_kiln_cli

import kiln
from kiln import runtime as rt

pytestmark = [
    pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]

KINDS = ["script", "trace"]
TOL = dict(rtol=1e-4, atol=1e-4)
PY_DIR = Path(kiln.__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from test_compile import Block, SmallCNN  # noqa: E402


class WithLgamma(nn.Module):
    """torch.lgamma has no converter (and no decomposition in torch.export): it runs in PyTorch
    between two engines."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.lgamma(h + 1.0)
        return torch.sigmoid(self.b(h)) * 2.0


class Nonzero(nn.Module):
    def forward(self, x):
        y = torch.relu(x) * 2.0 + 1.0
        count = torch.nonzero(y > 1.5).shape[0]
        return y.sum(dim=1) + count


def _script(model, kind, example):
    model = model.eval()
    return torch.jit.script(model) if kind == "script" else torch.jit.trace(model, (example,))


def _engines(compiled):
    return [n for n in compiled.graph.nodes() if n.kind() == "kiln::execute_engine"]


def _reload_in_fresh_process(path, x, tmp_path):
    """Loads `path` in a new interpreter (only torch and kiln imported) and runs it on x."""
    torch.save(x.cpu(), tmp_path / "x.pt")
    code = textwrap.dedent(
        f"""
        import torch, kiln
        m = torch.jit.load({str(path)!r})
        x = torch.load({str(tmp_path / "x.pt")!r})
        torch.save(m(x.to({str(x.device)!r})).cpu(), {str(tmp_path / "y.pt")!r})
        """
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(PY_DIR), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "y.pt")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_small_cnn(kind, device, tmp_path):
    torch.manual_seed(0)
    model = SmallCNN().eval().to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    compiled = kiln.compile(_script(model, kind, x), [x], device=device, min_block_size=1)
    assert isinstance(compiled, torch.jit.ScriptModule)
    assert compiled.report.num_engines == 1 and compiled.report.fallbacks == []
    assert len(_engines(compiled)) == 1
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(2, 3, 16, 16, device=device)
            torch.testing.assert_close(compiled(x), model(x), **TOL)
        kiln.save(compiled, tmp_path / "cnn.ts", output_format="torchscript")
        assert torch.equal(
            _reload_in_fresh_process(tmp_path / "cnn.ts", x, tmp_path), compiled(x).cpu()
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_transformer_block_dynamic_batch_and_sequence(kind, device, tmp_path):
    torch.manual_seed(0)
    model = Block().eval().to(device)
    spec = kiln.Input(min_shape=(1, 2, 32), opt_shape=(2, 8, 32), max_shape=(4, 16, 32))
    scripted = _script(model, kind, torch.randn(2, 8, 32, device=device))
    compiled = kiln.compile(scripted, [spec], device=device)
    report = compiled.report
    assert report.num_engines == 1 and report.fallbacks == [], str(report)
    with torch.no_grad():
        for shape in [(1, 2, 32), (2, 8, 32), (3, 5, 32), (4, 16, 32)]:
            x = torch.randn(*shape, device=device)
            torch.testing.assert_close(compiled(x), model(x), **TOL)
        torch.jit.save(compiled, str(tmp_path / "block.ts"))
        x = torch.randn(3, 7, 32, device=device)
        assert torch.equal(
            _reload_in_fresh_process(tmp_path / "block.ts", x, tmp_path), compiled(x).cpu()
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_unconvertible_op_falls_back_to_torchscript(kind, device, tmp_path):
    model = WithLgamma().eval().to(device)
    x = torch.randn(4, 16, device=device)
    compiled = kiln.compile(
        _script(model, kind, x), [x], device=device, min_block_size=1, torch_ops_in_engine=()
    )
    report = compiled.report
    assert report.num_engines == 2, str(report)
    assert [f.target for f in report.fallbacks] == ["aten.lgamma.default"]
    assert "no converter" in report.fallbacks[0].reason
    kinds = [n.kind() for n in compiled.graph.nodes()]
    assert kinds.count("kiln::execute_engine") == 2 and "aten::lgamma" in kinds
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(4, 16, device=device)
            torch.testing.assert_close(compiled(x), model(x), **TOL)
        torch.jit.save(compiled, str(tmp_path / "lgamma.ts"))
        assert torch.equal(
            _reload_in_fresh_process(tmp_path / "lgamma.ts", x, tmp_path), compiled(x).cpu()
        )


def test_data_dependent_size_stays_in_pytorch():
    model = Nonzero().eval()
    x = torch.randn(6, 5)
    compiled = kiln.compile(torch.jit.script(model), [x], device="cpu", min_block_size=1)
    assert compiled.report.fallbacks, str(compiled.report)
    for _ in range(3):
        x = torch.randn(6, 5)
        torch.testing.assert_close(compiled(x), model(x), **TOL)


def test_require_full_compilation_lists_every_unsupported_node():
    class M(nn.Module):
        def forward(self, x):
            return torch.lgamma(torch.relu(torch.lgamma(x)))

    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(
            torch.jit.script(M()),
            [torch.randn(3, 4)],
            device="cpu",
            require_full_compilation=True,
            torch_ops_in_engine=(),
        )
    message = str(err.value)
    assert "2 nodes cannot run in a Kiln engine" in message
    lines = [line for line in message.splitlines() if "(aten.lgamma.default)" in line]
    assert len(lines) == 2 and all("no converter for aten.lgamma.default" in line for line in lines)
    compiled = kiln.compile(
        torch.jit.script(SmallCNN().eval()),
        [torch.randn(1, 3, 8, 8)],
        device="cpu",
        require_full_compilation=True,
    )
    assert compiled.report.num_engines == 1


def test_torch_executed_ops_forces_ops_to_pytorch():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = kiln.compile(
        torch.jit.script(model),
        [x],
        device="cpu",
        min_block_size=1,
        torch_executed_ops={torch.ops.aten.relu.default},
    )
    report = compiled.report
    assert [f.target for f in report.fallbacks] == ["aten.relu.default"]
    assert report.fallbacks[0].reason == "listed in torch_executed_ops"
    assert report.num_engines == 2
    torch.testing.assert_close(compiled(x), model(x), **TOL)


def test_dry_run_returns_the_report():
    report = kiln.compile(
        torch.jit.script(WithLgamma().eval()),
        [torch.randn(4, 16)],
        device="cpu",
        dry_run=True,
        min_block_size=1,
        torch_ops_in_engine=(),
    )
    assert isinstance(report, kiln.compiler.CompileReport)
    assert report.num_engines == 2 and [s["kind"] for s in report.segments] == [
        "engine",
        "pytorch",
        "engine",
    ]


def test_auto_ir_takes_script_modules():
    scripted = torch.jit.script(SmallCNN().eval())
    compiled = kiln.compile(scripted, [torch.randn(1, 3, 8, 8)], device="cpu", min_block_size=1)
    assert isinstance(compiled, torch.jit.ScriptModule)


def test_errors():
    scripted = torch.jit.script(SmallCNN().eval())
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(kiln.KilnError, match="forward takes 1 inputs, the compile spec gives 2"):
        kiln.compile(scripted, [x, x], device="cpu")
    with pytest.raises(kiln.KilnError, match="float64"):
        kiln.compile(scripted, [x.double()], device="cpu")
    with pytest.raises(
        kiln.KilnError, match="cannot run on input 0 of shape 1x5x8x8 .*does not fit"
    ):
        kiln.compile(scripted, [torch.randn(1, 5, 8, 8)], device="cpu")  # conv wants 3 channels
    with pytest.raises(TypeError, match="torch.jit.ScriptModule"):
        kiln.compile(SmallCNN(), [x], ir="torchscript")
    with pytest.raises(ValueError, match="output_format='torchscript'"):
        kiln.save(kiln.compile(scripted, [x], device="cpu"), "/tmp/never.pt2")


def _cli(*args):
    return run_kiln_cli(*args)


def test_cli_compile(tmp_path):
    torch.manual_seed(0)
    model = Block().eval()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "in.ts"))
    proc = _cli(
        "compile",
        tmp_path / "in.ts",
        tmp_path / "out.ts",
        "--input-range",
        "1x2x32:2x8x32:4x16x32",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 engine segment" in proc.stdout
    compiled = torch.jit.load(str(tmp_path / "out.ts"))
    with torch.no_grad():
        for shape in [(1, 2, 32), (4, 9, 32)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(compiled(x), model(x), **TOL)

    proc = _cli(
        "compile",
        tmp_path / "in.ts",
        tmp_path / "o.ts",
        "--input",
        "2x8x32",
        "--device",
        "cpu",
        "--dry-run",
    )
    assert (
        proc.returncode == 0 and "kiln engine" in proc.stdout and not (tmp_path / "o.ts").exists()
    )


def test_cli_errors(tmp_path):
    proc = _cli("compile", tmp_path / "missing.ts", tmp_path / "o.ts", "--input", "1x4")
    assert proc.returncode == 2 and "missing.ts does not exist" in proc.stderr
    (tmp_path / "bad.ts").write_text("not a torchscript file")
    proc = _cli(
        "compile", tmp_path / "bad.ts", tmp_path / "o.ts", "--input", "1x4", "--device", "cpu"
    )
    assert proc.returncode == 2 and "cannot load TorchScript module" in proc.stderr, proc.stderr
    torch.jit.save(torch.jit.script(WithLgamma()), str(tmp_path / "m.ts"))
    proc = _cli(
        "compile", tmp_path / "m.ts", tmp_path / "o.ts", "--input", "4xa", "--device", "cpu"
    )
    assert proc.returncode == 2 and "not like 1x3x224x224" in proc.stderr
    proc = _cli(
        "compile",
        tmp_path / "m.ts",
        tmp_path / "o.ts",
        "--input-range",
        "1x16:4x16",
        "--device",
        "cpu",
    )
    assert proc.returncode == 2 and "MIN:OPT:MAX" in proc.stderr
    proc = _cli(
        "compile",
        tmp_path / "m.ts",
        tmp_path / "o.ts",
        "--input",
        "4x16",
        "--require-full-compilation",
        "--torch-op-in-engine",
        "none",
        "--device",
        "cpu",
    )
    assert proc.returncode == 2 and "aten.lgamma.default" in proc.stderr
