"""kiln.save / kiln.load: compile -> run -> save (both formats) -> load -> identical outputs.

Models: the small CNN of test_compile (one engine, static shapes), its transformer block with a
dynamic batch and sequence (checked at several sizes in the profile), the custom-op model (two
engines around a PyTorch op) and the block with aten ops forced to PyTorch (PyTorch parts that
compute with symbolic sizes). The loaded module runs the same engines and the same PyTorch ops on
the same inputs, so its outputs must equal the compiled module's bit for bit (torch.equal). Each
file is also loaded in a fresh process that only does `import torch, kiln` (the custom-op model
is left out there: its op is registered by test_compile, not by kiln).
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from layer_util import DEVICES
from test_compile import Block, SmallCNN, WithCustomOp

import kiln
from kiln import runtime as rt

pytestmark = [
    pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]

FORMATS = {"exported_program": "pt2", "torchscript": "ts"}
PY_DIR = Path(kiln.__file__).resolve().parent.parent
BLOCK_SPEC = dict(min_shape=(1, 2, 32), opt_shape=(2, 8, 32), max_shape=(4, 16, 32))
BLOCK_SHAPES = [(2, 8, 32), (1, 2, 32), (3, 5, 32), (4, 16, 32)]


def _models(device):
    """name -> (compiled module, test inputs, loadable in a process without test_compile)."""
    torch.manual_seed(0)
    cnn = kiln.compile(
        SmallCNN().eval().to(device), [torch.randn(2, 3, 16, 16)], device=device, min_block_size=1
    )
    block_model = Block().eval().to(device)
    block = kiln.compile(block_model, [kiln.Input(**BLOCK_SPEC)], device=device)
    forced = kiln.compile(
        block_model,
        [kiln.Input(**BLOCK_SPEC)],
        device=device,
        min_block_size=1,
        torch_executed_ops=["aten.gelu.default", "aten.view.default", "aten._softmax.default"],
    )
    custom = kiln.compile(
        WithCustomOp().eval().to(device),
        [torch.randn(4, 16)],
        device=device,
        min_block_size=1,
        torch_ops_in_engine=(),  # the op runs in PyTorch between two engines
    )
    assert block.report.fallbacks == [] and forced.report.fallbacks, str(forced.report)
    assert custom.report.num_engines == 2, str(custom.report)
    sizes = [torch.randn(*s, device=device) for s in BLOCK_SHAPES]
    return {
        "cnn": (cnn, [torch.randn(2, 3, 16, 16, device=device)], True),
        "block": (block, sizes, True),
        "forced_fallback": (forced, sizes, True),
        "custom_op": (custom, [torch.randn(4, 16, device=device)], False),
    }


@pytest.fixture(scope="module", params=DEVICES)
def saved(request, tmp_path_factory):
    """Every model compiled, run, and saved in both formats: (device, dir, {name: ...})."""
    device = request.param
    folder = tmp_path_factory.mktemp(f"saved_{device}")
    models = _models(device)
    expected = {}
    for name, (compiled, inputs, _) in models.items():
        with torch.no_grad():
            expected[name] = [compiled(x) for x in inputs]
        for fmt, ext in FORMATS.items():
            kiln.save(compiled, folder / f"{name}.{ext}", output_format=fmt)
    return device, folder, models, expected


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", ["cnn", "block", "forced_fallback", "custom_op"])
def test_save_load_identical_outputs(saved, name, fmt):
    device, folder, models, expected = saved
    _, inputs, _ = models[name]
    path = folder / f"{name}.{FORMATS[fmt]}"
    assert kiln.serialize.archive_format(path) == fmt
    loaded = kiln.load(path)
    with torch.no_grad():
        for x, want in zip(inputs, expected[name], strict=True):
            got = loaded(x)
            assert got.shape == want.shape and torch.equal(got, want), (name, fmt, x.shape)


def test_torch_loaders_in_fresh_process(saved):
    """torch.jit.load / torch.export.load after only `import torch, kiln`."""
    device, folder, models, expected = saved
    cases = {name: (inputs, expected[name]) for name, (_, inputs, fresh) in models.items() if fresh}
    torch.save(
        {k: ([x.cpu() for x in i], [y.cpu() for y in e]) for k, (i, e) in cases.items()},
        folder / "io.pt",
    )
    script = f"""
import torch, kiln
folder = {str(folder)!r}
for name, (inputs, expected) in torch.load(folder + "/io.pt").items():
    modules = {{
        "exported_program": torch.export.load(f"{{folder}}/{{name}}.pt2").module(),
        "torchscript": torch.jit.load(f"{{folder}}/{{name}}.ts"),
    }}
    for fmt, module in modules.items():
        for x, want in zip(inputs, expected):
            with torch.no_grad():
                got = module(x.to({device!r})).cpu()
            assert torch.equal(got, want), (name, fmt, tuple(x.shape))
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env()
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_inputs_override_and_output_structure(tmp_path):
    """inputs= replaces the compile-time specs (here: static, so the loaded ExportedProgram takes
    that shape only); tuple outputs keep their structure in both formats."""

    class Two(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2.0, (x + 1.0, torch.sigmoid(x))

    spec = kiln.Input(min_shape=(1, 8), opt_shape=(4, 8), max_shape=(8, 8))
    compiled = kiln.compile(Two(), [spec], device="cpu", min_block_size=1)
    x = torch.randn(3, 8)
    want = compiled(x)
    for fmt, ext in FORMATS.items():
        kiln.save(compiled, tmp_path / f"two.{ext}", output_format=fmt, inputs=[x])
        got = kiln.load(tmp_path / f"two.{ext}")(x)
        assert isinstance(got, tuple) and isinstance(got[1], tuple | list), (fmt, type(got))
        for g, w in zip(
            torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True
        ):
            assert torch.equal(g, w), fmt
    with pytest.raises(Exception, match="(?i)shape|guard|expected"):
        kiln.load(tmp_path / "two.pt2")(torch.randn(5, 8))


def test_errors(tmp_path):
    compiled = kiln.compile(SmallCNN().eval(), [torch.randn(1, 3, 8, 8)], device="cpu")
    with pytest.raises(ValueError, match="output_format must be 'exported_program' or"):
        kiln.save(compiled, tmp_path / "m.onnx", output_format="onnx")
    with pytest.raises(TypeError, match="takes the module kiln.compile returned"):
        kiln.save(SmallCNN(), tmp_path / "m.pt2")
    with pytest.raises(ValueError, match="takes 1 inputs, got 2"):
        kiln.save(compiled, tmp_path / "m.pt2", inputs=[torch.randn(1, 3, 8, 8)] * 2)
    with pytest.raises(FileNotFoundError, match="missing.pt2 does not exist"):
        kiln.load(tmp_path / "missing.pt2")
    (tmp_path / "text.pt2").write_text("not an archive")
    with pytest.raises(kiln.KilnError, match="text.pt2 is not a torch archive"):
        kiln.load(tmp_path / "text.pt2")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(kiln.KilnError, match="state.pt is a torch.save file, neither"):
        kiln.load(tmp_path / "state.pt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(kiln.KilnError, match="other.zip is a zip file, neither"):
        kiln.load(tmp_path / "other.zip")


def test_kiln_import_stays_torch_free():
    script = "import sys, kiln; assert 'torch' not in sys.modules; kiln.save; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env()
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _env():
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {"PYTHONPATH": str(PY_DIR), **env}
