"""One word per concept (docs/STYLE point 11): the names table in kiln/dtypes.py and every API
that reads it.

- precisions: every spelling (canonical names, torch dtypes, "float16"/"half"/...) is accepted by
  kiln.compile (both IRs), BuilderConfig and `kiln compile`; anything else is a ValueError that
  lists the accepted spellings;
- devices: `device` ("cuda"/"cpu", "auto" where a function picks) in BuilderConfig, Engine,
  TorchEngine, EngineModule, Inspection.profile and `kiln inspect`; the old `target=` /
  `backend=` / "reference" keep working with a DeprecationWarning;
- workspace_size (workspace_bytes deprecated), Engine.describe (describe_layers deprecated);
- `report` on every compiled module, including modules from kiln.load (both formats).

Everything runs on the CPU reference backend.
"""

import json
import warnings

import numpy as np
import pytest
import torch
from layer_util import run_kiln_cli

import kiln
from kiln import cli, dtypes
from kiln import runtime as rt

needs_runtime = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so not built")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

# Every accepted spelling and its canonical name.
PRECISIONS = {
    "fp32": "fp32",
    "float32": "fp32",
    torch.float32: "fp32",
    "tf32": "tf32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    torch.float16: "fp16",
    torch.half: "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    torch.bfloat16: "bf16",
}
REJECTED = ["fp4", "float64", "double", "FP16", "", torch.float64, torch.int8, 16, None]


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
    ).eval()


def _plan(**config) -> kiln.Plan:
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 4))
    net.mark_output(net.add_activation(x, "relu"), "y")
    return kiln.Builder().build(net, kiln.BuilderConfig(device="cpu", **config))


# ---- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", list(PRECISIONS), ids=str)
def test_precision_name_accepts_every_spelling(spelling):
    assert dtypes.precision_name(spelling) == PRECISIONS[spelling]


@pytest.mark.parametrize("spelling", REJECTED, ids=repr)
def test_precision_name_rejects_with_the_accepted_list(spelling):
    with pytest.raises(ValueError, match=r"unknown precision .*fp32, tf32, fp16, bf16.*'half'"):
        dtypes.precision_name(spelling)


def test_dtype_table():
    for name in dtypes.NAMES:
        assert dtypes.dtype_name(name) == name
        assert dtypes.dtype_name(getattr(torch, name)) == name
        assert dtypes.torch_dtype(name) is getattr(torch, name)
        if name != "bfloat16":  # numpy has none
            assert dtypes.dtype_name(np.dtype(name)) == name
    assert dtypes.find_dtype_name(torch.float64) is None
    with pytest.raises(TypeError, match="not supported by Kiln engines"):
        dtypes.dtype_name(torch.complex64)
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        dtypes.dtype_name("half")  # dtype names are torch's attribute names, not aliases
    assert (
        dtypes.precision_dtype("half") == "float16" and dtypes.precision_dtype("tf32") == "float32"
    )


def test_device_table():
    name = dtypes.device_name
    assert [name(d) for d in ("cpu", "cuda", "cuda:1", torch.device("cpu"))] == [
        "cpu",
        "cuda",
        "cuda:1",
        "cpu",
    ]
    assert name(torch.device("cuda", 0)) == "cuda:0"
    assert name("auto", allow_auto=True) == "auto"
    with pytest.warns(DeprecationWarning, match="'reference' is deprecated"):
        assert name("reference") == "cpu"
    for bad in ("auto", "gpu", "cuda:x", "tpu", "reference:0"):
        with pytest.raises(ValueError, match="unknown device"):
            name(bad)
    with pytest.raises(ValueError, match="current CUDA device"):
        name("cuda:1", allow_index=False)
    with pytest.raises(TypeError, match="device must be"):
        name(0)


# ---- precisions in every API -------------------------------------------------------------------


@pytest.mark.parametrize("spelling", list(PRECISIONS), ids=str)
def test_compile_accepts_every_precision_spelling(spelling):
    report = kiln.compile(
        _mlp(),
        [torch.randn(4, 16)],
        ir="export",
        device="cpu",
        dry_run=True,
        min_block_size=1,
        enabled_precisions={spelling},
    )
    assert report.num_engines == 1


@pytest.mark.parametrize("spelling", [s for s in REJECTED if s is not torch.int8], ids=repr)
def test_compile_rejects_unknown_precisions(spelling):
    with pytest.raises(ValueError, match="unknown precision"):
        kiln.compile(
            _mlp(),
            [torch.randn(4, 16)],
            ir="export",
            device="cpu",
            dry_run=True,
            enabled_precisions={torch.float32, spelling},
        )


def test_compile_takes_int8_with_a_calibrator_only():
    # torch.int8 is no BuilderConfig precision (precision_name refuses it); kiln.compile takes it
    # for INT8 quantization, which needs a calibrator or Q/DQ ops in the model.
    with pytest.raises(kiln.KilnError, match="INT8 needs either a calibrator"):
        kiln.compile(_mlp(), [torch.randn(4, 16)], device="cpu", enabled_precisions={torch.int8})


def test_compile_half_builds_float16_engines():
    """The spelling reaches the builder: "half" gives float16 layers inside the engine."""
    compiled = kiln.compile(
        _mlp(), [torch.randn(4, 16)], device="cpu", min_block_size=1, enabled_precisions={"half"}
    )
    lines = compiled.graph_module._kiln_engine_0.engine.describe()
    assert any("float16" in line for line in lines), lines


@needs_runtime
@pytest.mark.parametrize("spelling", ["half", torch.float16, "fp16", "float16"], ids=str)
def test_torchscript_compile_accepts_precision_spellings(spelling):
    # The spelling reaches the TorchScript frontend's builds: float16 layers in the engine.
    compiled = kiln.compile(
        torch.jit.script(_mlp()),
        [torch.randn(4, 16)],
        device="cpu",
        min_block_size=1,
        enabled_precisions={spelling},
    )
    lines = kiln.Engine(kiln.plans(compiled)[0], "cpu").describe()
    assert any("float16" in line for line in lines), lines
    report = kiln.compile(
        torch.jit.script(_mlp()),
        [torch.randn(4, 16)],
        device="cpu",
        dry_run=True,
        min_block_size=1,
        enabled_precisions={spelling},
    )
    assert report.num_engines == 1
    with pytest.raises(ValueError, match="unknown precision"):
        kiln.compile(
            torch.jit.script(_mlp()), [torch.randn(4, 16)], device="cpu", enabled_precisions={"x"}
        )


def test_builder_config_precisions():
    assert kiln.BuilderConfig(precisions=["half", torch.bfloat16, "tf32"]).precisions == [
        "fp32",
        "tf32",
        "fp16",
        "bf16",
    ]
    with pytest.raises(ValueError, match="unknown precision 'fp4'"):
        kiln.BuilderConfig(precisions=["fp4"])


# ---- BuilderConfig: device and workspace_size --------------------------------------------------


def test_builder_config_device():
    assert kiln.BuilderConfig().device == "auto"
    for device in ("auto", "cuda", "cpu"):
        assert kiln.BuilderConfig(device=device).device == device
    assert kiln.BuilderConfig(device=torch.device("cpu")).device == "cpu"
    config = kiln.BuilderConfig()
    config.device = "cpu"
    assert config.device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        kiln.BuilderConfig(device="gpu")
    with pytest.raises(ValueError, match="current CUDA device"):
        kiln.BuilderConfig(device="cuda:1")


def test_builder_config_target_is_deprecated():
    with pytest.warns(DeprecationWarning, match="target= is deprecated; use device="):
        config = kiln.BuilderConfig(target="reference")
    assert config.device == "cpu"
    with pytest.warns(DeprecationWarning, match="BuilderConfig.target is deprecated"):
        assert config.target == "reference"
    with pytest.warns(DeprecationWarning, match="BuilderConfig.target is deprecated"):
        config.target = "cuda"
    assert config.device == "cuda"
    with pytest.warns(DeprecationWarning, match="'reference' is deprecated"):
        assert kiln.BuilderConfig(device="reference").device == "cpu"
    with pytest.raises(TypeError, match="pass device= only"):
        kiln.BuilderConfig(device="cpu", target="reference")


def test_builder_config_workspace_size():
    config = kiln.BuilderConfig(workspace_size=1 << 20)
    assert config.workspace_size == 1 << 20
    config.workspace_size = 1 << 21
    assert config.workspace_size == 1 << 21
    with pytest.warns(DeprecationWarning, match="workspace_bytes= is deprecated"):
        old = kiln.BuilderConfig(workspace_bytes=4096)
    assert old.workspace_size == 4096
    with pytest.warns(DeprecationWarning, match="workspace_bytes is deprecated"):
        assert old.workspace_bytes == 4096
    with pytest.warns(DeprecationWarning, match="workspace_bytes is deprecated"):
        old.workspace_bytes = 8192
    assert old.workspace_size == 8192


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        config = kiln.BuilderConfig(device="cpu", workspace_size=1 << 20, precisions=["half"])
        engine = kiln.Engine(_plan(), device="cpu")
        assert (config.device, config.workspace_size, engine.device_type()) == (
            "cpu",
            1 << 20,
            "cpu",
        )
        engine.describe()


# ---- Engine: device and describe ----------------------------------------------------------------


def test_engine_device_and_describe():
    plan = _plan()
    engine = kiln.Engine(plan)  # a plan built for the CPU runs there
    assert engine.device_type() == "cpu"
    assert kiln.Engine(plan, "cpu").device_type() == "cpu"
    assert kiln.Engine(plan.serialize(), device=torch.device("cpu")).device_type() == "cpu"
    lines = engine.describe()
    assert lines and all(isinstance(line, str) for line in lines)
    with pytest.warns(DeprecationWarning, match=r"describe_layers\(\) is deprecated"):
        assert engine.describe_layers() == lines
    with pytest.warns(DeprecationWarning, match="Engine.backend is deprecated"):
        assert engine.backend == "reference"
    with pytest.warns(DeprecationWarning, match="backend= is deprecated; use device="):
        assert kiln.Engine(plan, backend="reference").device_type() == "cpu"
    with pytest.warns(DeprecationWarning, match="'reference' is deprecated"):
        assert kiln.Engine(plan, "reference").device_type() == "cpu"  # the old positional word
    out = engine.create_execution_context().execute({"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(out["y"], np.ones((2, 4), np.float32))


@needs_runtime
def test_torch_engine_and_engine_module_device():
    plan = _plan()
    engine = rt.TorchEngine(plan, device="cpu")
    # Both Engine classes name the device alike; the torch class keeps its old backend() too.
    assert (engine.device_type(), engine.device_index()) == ("cpu", -1)
    assert (kiln.Engine(plan, "cpu").device_type(), kiln.Engine(plan, "cpu").device_index()) == (
        "cpu",
        -1,
    )
    assert engine.backend() == "reference"
    assert rt.TorchEngine(plan, torch.device("cpu")).describe() == engine.describe()
    with pytest.warns(DeprecationWarning, match="backend= is deprecated"):
        rt.TorchEngine(plan, backend="reference")
    module = rt.EngineModule(plan, device="cpu")
    x = torch.randn(2, 4)
    torch.testing.assert_close(module(x), torch.relu(x), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="backend= is deprecated"):
        rt.EngineModule(plan, backend="reference")
    with pytest.warns(DeprecationWarning, match="'reference' is deprecated"):
        rt.EngineModule(plan, "reference")


# ---- inspection ---------------------------------------------------------------------------------


def test_inspection_profile_device(tmp_path):
    info = kiln.inspect(_plan()).profile(runs=1, device="cpu")
    assert info.profile_device == "cpu" and "device cpu" in info.text()
    assert info.to_dict()["profile_device"] == "cpu"
    assert info.to_dict()["profile_backend"] == "reference"  # deprecated key, one release
    with pytest.warns(DeprecationWarning, match="profile_backend is deprecated"):
        assert info.profile_backend == "reference"
    with pytest.warns(DeprecationWarning, match="backend= is deprecated"):
        kiln.inspect(_plan()).profile(runs=1, backend="reference")


def _cli(*args):
    return run_kiln_cli(*args)


def test_cli_inspect_device(tmp_path):
    path = tmp_path / "relu.plan"
    _plan().save(str(path))
    out = _cli("inspect", path, "--profile", "--runs", "1", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["profile_device"] == "cpu"
    out = _cli("inspect", path, "--profile", "--runs", "1", "--backend", "reference")
    assert out.returncode == 0, out.stderr
    assert "--backend is deprecated; use --device" in out.stderr and "device cpu" in out.stdout
    assert "--backend" not in _cli("inspect", "--help").stdout
    out = _cli("inspect", path, "--profile", "--device", "reference")
    assert out.returncode == 2 and "invalid choice" in out.stderr


@needs_runtime
@pytest.mark.parametrize("spelling", ["fp16", "half", "float16", "bfloat16", "fp32", "tf32"])
def test_cli_compile_precision_spellings(spelling, tmp_path, capsys):
    torch.jit.save(torch.jit.script(_mlp()), str(tmp_path / "in.ts"))
    argv = ["compile", str(tmp_path / "in.ts"), str(tmp_path / "out.ts"), "--input", "4x16"]
    argv += ["--device", "cpu", "--precision", spelling, "--min-block-size", "1", "--dry-run"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "kiln engine" in capsys.readouterr().out


@needs_runtime
def test_cli_compile_rejects_unknown_precision(tmp_path, capsys):
    torch.jit.save(torch.jit.script(_mlp()), str(tmp_path / "in.ts"))
    argv = ["compile", str(tmp_path / "in.ts"), str(tmp_path / "out.ts"), "--input", "4x16"]
    assert cli.main([*argv, "--device", "cpu", "--precision", "fp4"]) == 2
    err = capsys.readouterr().err
    assert "kiln compile: error: unknown precision 'fp4'" in err and "'half'" in err


# ---- report -------------------------------------------------------------------------------------


def _same_report(a, b):
    assert b is not None
    assert a.num_engines == b.num_engines
    assert a.segments == b.segments
    assert a.fallbacks == b.fallbacks
    assert a.text == b.text
    assert a.checks == b.checks


def test_report_dict_round_trip():
    from kiln.compiler import CompileReport, Fallback

    report = CompileReport(
        2, [{"kind": "engine", "nodes": ["a"], "ops": ["aten.relu.default"]}], [], "text"
    )
    report.fallbacks.append(Fallback("roll", "aten.roll.default", "no converter"))
    report.checks.append(Fallback("item", "aten._local_scalar_dense.default", "checks a branch"))
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"num_engines", "segments", "fallbacks", "text", "checks"}
    _same_report(report, CompileReport.from_dict(data))


@needs_runtime
@pytest.mark.parametrize("output_format", ["exported_program", "torchscript"])
def test_load_restores_the_report(output_format, tmp_path):
    x = torch.randn(4, 16)
    compiled = kiln.compile(_mlp(), [x], device="cpu", min_block_size=1)
    assert compiled.report.num_engines == 1
    path = tmp_path / ("m.pt2" if output_format == "exported_program" else "m.ts")
    kiln.save(compiled, path, output_format=output_format)
    loaded = kiln.load(path)
    _same_report(compiled.report, loaded.report)
    torch.testing.assert_close(loaded(x), compiled(x), rtol=0, atol=0)


@needs_runtime
def test_load_without_a_stored_report(tmp_path):
    """Files kiln.save did not write (or older Kilns wrote) load with report None."""
    path = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(_mlp()), str(path))
    assert kiln.load(path).report is None
    program = torch.export.export(_mlp(), (torch.randn(4, 16),))
    torch.export.save(program, str(tmp_path / "plain.pt2"))
    assert kiln.load(tmp_path / "plain.pt2").report is None


@needs_runtime
def test_torchscript_compile_report(tmp_path):
    x = torch.randn(4, 16)
    compiled = kiln.compile(torch.jit.script(_mlp()), [x], device="cpu", min_block_size=1)
    assert isinstance(compiled, torch.jit.ScriptModule)
    assert compiled.report.num_engines == 1 and compiled.report.fallbacks == []
    with pytest.warns(DeprecationWarning, match="kiln_report is deprecated; use report"):
        assert compiled.kiln_report is compiled.report
    # float32 on the reference backend, summed in another order than torch (as test_torchscript)
    torch.testing.assert_close(compiled(x), _mlp()(x), rtol=1e-4, atol=1e-4)
    kiln.save(compiled, tmp_path / "ts.ts", output_format="torchscript")
    loaded = kiln.load(tmp_path / "ts.ts")
    _same_report(compiled.report, loaded.report)
    torch.testing.assert_close(loaded(x), compiled(x), rtol=0, atol=0)
