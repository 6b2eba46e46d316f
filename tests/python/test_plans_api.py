"""kiln.plans(module) / CompiledModule.plans(): the plans of a compiled module's engines, from
either frontend and after kiln.save / kiln.load, and `kiln inspect` of a saved module."""

import pytest
import torch
import torch.nn as nn

import kiln
from kiln import cli
from kiln import runtime as rt

pytestmark = [
    pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _ops(plan):
    return [layer["op"] for layer in plan.layers()]


@pytest.fixture(scope="module")
def compiled():
    x = torch.randn(4, 16)
    exported = kiln.compile(_mlp(), [x], ir="export", device="cpu", min_block_size=1)
    scripted = kiln.compile(torch.jit.trace(_mlp(), (x,)), [x], device="cpu", min_block_size=1)
    return exported, scripted


def test_plans_of_both_frontends(compiled):
    exported, scripted = compiled
    (plan,) = exported.plans()
    assert _ops(plan) == _ops(kiln.plans(exported)[0])
    assert "fully_connected" in _ops(plan)
    (ts_plan,) = kiln.plans(scripted)
    assert "fully_connected" in _ops(ts_plan)
    # The plan is the engine's: a fresh engine from it computes what the module computes.
    x = torch.randn(4, 16)
    engine = kiln.Engine(plan, "cpu")
    (name,) = engine.input_names
    out = engine.create_execution_context().execute({name: x})
    torch.testing.assert_close(next(iter(out.values())), exported(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["exported_program", "torchscript"])
def test_plans_after_save_and_load(compiled, fmt, tmp_path):
    exported, _ = compiled
    path = tmp_path / ("m.pt2" if fmt == "exported_program" else "m.ts")
    kiln.save(exported, path, output_format=fmt)
    loaded = kiln.load(path)
    plans = kiln.plans(loaded)
    assert [_ops(p) for p in plans] == [_ops(p) for p in exported.plans()]


def test_plans_of_a_module_without_engines_is_empty():
    assert kiln.plans(_mlp()) == []


def test_inspect_a_saved_module(compiled, tmp_path, capsys):
    _, scripted = compiled
    path = tmp_path / "m.ts"
    kiln.save(scripted, path, output_format="torchscript")
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fully_connected" in out and "Kiln plan" in out
    plain = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.trace(_mlp(), (torch.randn(4, 16),)), plain)
    assert cli.main(["inspect", str(plain)]) == 2
    assert "no Kiln engine" in capsys.readouterr().err
