"""Every error Kiln raises on bad input is a KilnError with a message (issue 14): names that are
not UTF-8, damaged files and a TorchScript module run at a shape it cannot take used to escape as
UnicodeDecodeError, BadZipFile, JSONDecodeError or std::ios_base::failure, or crash the process.
CPU reference backend."""

import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from layer_util import crafted_plan

import kiln
from kiln import runtime as rt

needs_runtime = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")


# ---- names are UTF-8 ---------------------------------------------------------------------------


def test_network_refuses_names_that_are_not_utf8():
    # bytes pass for str through the bindings: these used to enter the IR, and reading the name
    # back (Tensor.name, Plan.layers(), an error quoting it) raised UnicodeDecodeError.
    net = kiln.Network()
    with pytest.raises(kiln.KilnError, match=r'tensor name "x\\xff" is not valid UTF-8'):
        net.add_input(b"x\xff", "float32", (2, 3))
    x = net.add_input("x", "float32", (2, 3))
    with pytest.raises(kiln.KilnError, match=r'layer name "r\\xfe" is not valid UTF-8'):
        net.add_activation(x, "relu", name=b"r\xfe")
    with pytest.raises(kiln.KilnError, match="op name"):
        net.add_layer(b"activation\xff", [x], {"type": "relu"})
    y = net.add_activation(x, "relu")
    with pytest.raises(kiln.KilnError, match="output name"):
        net.mark_output(y, b"y\xc3")
    net.mark_output(y, "y")
    assert [layer[0] for layer in net._net.layers()] == [y.name]
    assert kiln.Plan.deserialize(kiln.Builder().build(net, kiln.BuilderConfig()).serialize())


def test_plan_with_names_that_are_not_utf8_is_refused():
    # A plan whose names are not UTF-8 loaded; Plan.layers() then raised UnicodeDecodeError.
    with pytest.raises(kiln.KilnError, match=r'tensor name "a\\xffin" is not valid UTF-8'):
        kiln.Plan.deserialize(crafted_plan(lambda b: b.replace(b"a_in", b"a\xffin")))
    with pytest.raises(kiln.KilnError, match=r'layer name "m\\xc3" is not valid UTF-8'):
        kiln.Plan.deserialize(
            crafted_plan(lambda b: b.replace(b"\x02\0\0\0\0\0\0\0mm", b"\x02\0\0\0\0\0\0\0m\xc3"))
        )


def test_an_error_quoting_bytes_that_are_not_utf8_is_still_a_kiln_error():
    # A message is decoded with backslashreplace: the KilnError arrives with its text, not a
    # UnicodeDecodeError raised while reporting it.
    net = kiln.Network()
    net.mark_output(net.add_activation(net.add_input("x", "float32", (2,)), "relu"), "y")
    config = kiln.BuilderConfig()
    config.set_layer_precision(b"l\xff", "float16")
    with pytest.raises(kiln.KilnError, match=r"layer precision set for 'l\\xff'.*no such layer"):
        kiln.Builder().build(net, config)


# ---- damaged files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small compiled module saved in both formats: {format: path}."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    compiled = kiln.compile(model, [torch.randn(2, 4)], device="cpu", min_block_size=1)
    folder = tmp_path_factory.mktemp("saved")
    paths = {"pt2": folder / "m.pt2", "ts": folder / "m.ts"}
    kiln.save(compiled, paths["pt2"])
    kiln.save(compiled, paths["ts"], output_format="torchscript")
    return paths


def _rewritten(src: Path, dst: Path, entry_suffix: str, data: bytes) -> Path:
    """A copy of the zip archive `src` whose entry ending in `entry_suffix` holds `data`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            body = data if item.filename.endswith(entry_suffix) else zin.read(item.filename)
            zout.writestr(item, body)
    return dst


@needs_runtime
@pytest.mark.parametrize("fmt", ["pt2", "ts"])
@pytest.mark.parametrize("report", [b"{not json", b"[1, 2]", b'{"num_engines": "x"}'])
def test_load_refuses_a_damaged_report_with_a_kiln_error(saved, tmp_path, fmt, report):
    # Used to raise JSONDecodeError, TypeError or KeyError from the report's parsing.
    path = _rewritten(saved[fmt], tmp_path / f"bad.{fmt}", "kiln_report.json", report)
    with pytest.raises(kiln.KilnError, match=r"kiln_report.json\) is damaged") as info:
        kiln.load(path)
    assert info.value.__cause__ is not None


@needs_runtime
def test_load_refuses_a_damaged_zip_with_a_kiln_error(saved, tmp_path):
    # A byte changed inside an entry (its CRC no longer matches): the archive check before
    # torch's loader raised BadZipFile. The smallest entry: the check reads all of it.
    data = bytearray(saved["pt2"].read_bytes())
    with zipfile.ZipFile(saved["pt2"]) as archive:
        entry = min((i for i in archive.infolist() if i.file_size), key=lambda i: i.file_size)
    local = entry.header_offset  # the local header's name and extra lengths (torch pads extra)
    name_len, extra_len = struct.unpack("<HH", data[local + 26 : local + 30])
    data[local + 30 + name_len + extra_len] ^= 0x55
    path = tmp_path / "flipped.pt2"
    path.write_bytes(bytes(data))
    with pytest.raises(kiln.KilnError, match="is a damaged zip archive") as info:
        kiln.load(path)
    assert isinstance(info.value.__cause__, zipfile.BadZipFile)
    with pytest.raises(kiln.KilnError, match="torch cannot load"):
        kiln.load(path, trusted=True)


@needs_runtime
def test_load_of_a_missing_file_is_a_kiln_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(kiln.KilnError, match="does not exist") as info:
        kiln.load(tmp_path / "missing.pt2")
    assert isinstance(info.value, FileNotFoundError)


def test_load_names_the_cause_not_what_it_hid():
    # A model.json cut at a value gave "torch cannot load: StopIteration: 1595": the root cause
    # followed the context JSONDecodeError raises `from None`.
    import json

    from kiln.serialize import _root_cause

    try:
        try:
            json.loads('{"graph": ')
        except ValueError as e:
            raise RuntimeError("We ran into an error when deserializing the saved file") from e
    except RuntimeError as e:
        assert _root_cause(e).startswith("JSONDecodeError: Expecting value"), _root_cause(e)


def test_plan_load_of_a_directory_is_a_kiln_error(tmp_path):
    # std::ifstream threw std::ios_base::failure: RuntimeError "basic_filebuf::underflow".
    with pytest.raises(kiln.KilnError, match="cannot read plan file"):
        kiln.Plan.load(str(tmp_path))
    with pytest.raises(kiln.KilnError, match="cannot read plan file"):
        kiln.inspect(tmp_path)


def test_engine_of_something_that_is_no_plan_says_what_it_takes():
    # Used to be AttributeError: 'str' object has no attribute 'header'.
    with pytest.raises(TypeError, match=r"kiln.Engine takes a kiln.Plan or plan bytes.*Plan.load"):
        kiln.Engine("model.plan")


# ---- the TorchScript frontend at a shape the model cannot take --------------------------------

# Run in a fresh process: before the fix this crashed the interpreter (SIGSEGV in
# InterpreterStateImpl::callstack() under record_values). Freezing deleted the helper method
# (_forward_impl) the graph's call stacks point at; MALLOC_PERTURB_ fills freed memory, so that
# reading it faults every time instead of now and then.
_TORCHSCRIPT_CASE = textwrap.dedent(
    """
    import sys
    import torch
    import kiln

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def _forward_impl(self, x):
            return torch.relu(self.conv(x))

        def forward(self, x):
            return self._forward_impl(x)

    case, shape = sys.argv[1], tuple(int(d) for d in sys.argv[2].split("x"))
    if case == "sequential":
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    else:
        model = Net()
    scripted = torch.jit.script(model.eval())
    if case == "save":
        scripted.save(sys.argv[3])
        sys.exit(0)
    try:
        if case == "runtime":  # compiled at a good shape, the conv in PyTorch, run at a bad one
            compiled = kiln.compile(
                scripted, [kiln.Input(shape=(1, 3, 16, 16))], device="cpu", min_block_size=1,
                torch_executed_ops=["aten.convolution.default"],
            )
            compiled(torch.randn(shape))
        else:
            kiln.compile(scripted, [kiln.Input(shape=shape)], device="cpu")
    except Exception as e:
        print(type(e).__name__ + ": " + str(e))
        sys.exit(3)
    """
)


def _run_case(folder: Path, *args):
    """_TORCHSCRIPT_CASE with `args` in a fresh process (from a file: TorchScript reads the
    source of the classes it scripts)."""
    import os

    script = folder / "torchscript_case.py"
    script.write_text(_TORCHSCRIPT_CASE)
    env = dict(os.environ, MALLOC_PERTURB_="165", PYTHONPATH=str(Path(kiln.__file__).parents[1]))
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@needs_runtime
@pytest.mark.parametrize("case", ["helper", "sequential"])
@pytest.mark.parametrize(
    "shape, torch_says",
    [
        ("1x4x224x224", "expected input[1, 4, 224, 224] to have 3 channels, but got 4"),
        ("1x3x2x2", "Kernel size can't be greater than actual input size"),
    ],
)
def test_torchscript_compile_at_a_shape_the_model_cannot_take(tmp_path, case, shape, torch_says):
    out = _run_case(tmp_path, case, shape)
    assert out.returncode == 3, f"exit code {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    first = out.stdout.splitlines()[0]
    assert first.startswith(
        f"KilnError: the TorchScript module cannot run on input 0 of shape {shape} (Float): this "
        "input shape does not fit the model"
    ), first
    assert "PyTorch said: RuntimeError: " in first and torch_says in first, first
    assert "Traceback of TorchScript" in out.stdout  # where in the model, after the summary


@needs_runtime
def test_torchscript_compiled_module_raising_in_its_pytorch_part(tmp_path):
    out = _run_case(tmp_path, "runtime", "1x4x16x16")
    assert out.returncode == 3, f"exit code {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    assert "expected input[1, 4, 16, 16] to have 3 channels" in out.stdout


@needs_runtime
def test_cli_compile_at_a_shape_the_model_cannot_take(tmp_path, monkeypatch):
    from layer_util import run_kiln_cli

    model = tmp_path / "m.ts"
    assert _run_case(tmp_path, "save", "1x3x8x8", model).returncode == 0
    monkeypatch.setenv("MALLOC_PERTURB_", "165")
    out = run_kiln_cli("compile", model, tmp_path / "out.ts", "--input", "1x3x224", timeout=300)
    assert out.returncode not in (0, -11), out.stderr[-3000:]
    assert "cannot run on input 0 of shape 1x3x224 (Float): this input shape does not fit" in (
        out.stderr
    ), out.stderr[-3000:]
