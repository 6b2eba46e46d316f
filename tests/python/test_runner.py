"""`kiln run` and `kiln compare` on the CPU reference backend: every kind of model file, the
summary and its JSON, given and random inputs, the comparisons against ONNX Runtime, eager torch
and the reference backend, and --per-layer finding a layer that overflows in FP16."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kiln
from kiln.cli import main

onnx = pytest.importorskip("onnx", reason="the onnx package is needed (pip install onnx)")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is the peer (pip install onnxruntime)")
from onnx import TensorProto, helper  # noqa: E402

if not hasattr(kiln._C, "onnx_parse_file"):
    pytest.skip("this Kiln was built without its ONNX parser", allow_module_level=True)


def onnx_model(path, scale=1.0):
    """x [N, 8] -> MatMul -> Mul(scale) -> Relu -> Mul(1 / scale) -> Add -> y [N, 4]: with a large
    scale the middle layers leave FP16's range while the output stays small."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Mul", ["h", "s"], ["big"], name="scale_up"),
        helper.make_node("Relu", ["big"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "inv"], ["back"], name="scale_down"),
        helper.make_node("Add", ["back", "b"], ["y"], name="bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [8, 4], w.ravel().tolist()),
            helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("inv", TensorProto.FLOAT, [], [1.0 / scale]),
            helper.make_tensor("b", TensorProto.FLOAT, [4], [0.5, -0.5, 1.0, 0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return w


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 16)
        self.b = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_run_onnx_prints_the_summary_and_writes_json_and_outputs(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    w = onnx_model(path)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rc = main(
        [
            "run", str(path), "--device", "cpu", "--shapes", "x:1x8:3x8:6x8", "--inputs",
            str(tmp_path / "in.npz"), "--warmup", "1", "--iterations", "4", "--json",
            str(tmp_path / "r.json"), "--outputs", str(tmp_path / "out.npz"),
            "--save-plan", str(tmp_path / "m.plan"),
        ]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    for word in (
        "latency ms over 4 runs",
        "median",
        "p99",
        "throughput",
        "build:",
        "CPU reference",
    ):
        assert word in text
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["iterations"] == 4 and data["input_shapes"] == {"x": [3, 8]}
    assert set(data["latency_ms"]) == {"min", "mean", "median", "p90", "p99", "max"}
    assert data["latency_ms"]["min"] <= data["latency_ms"]["median"] <= data["latency_ms"]["max"]
    y = np.load(tmp_path / "out.npz")["y"]
    want = np.maximum(x @ w, 0) + np.array([0.5, -0.5, 1.0, 0.0])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # the plan it saved runs too, with the profile's opt shape when no shape is given
    assert main(["run", str(tmp_path / "m.plan"), "--device", "cpu", "--iterations", "2"]) == 0
    assert "x 3x8" in capsys.readouterr().out


def test_run_compiles_an_ordinary_torchscript_file_and_runs_a_compiled_one(tmp_path, capsys):
    ts = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(Mlp().eval()), ts)
    assert main(["run", str(ts), "--device", "cpu", "--shapes", "x:2x8", "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "(torchscript)" in out and "build:" in out
    compiled = kiln.compile(Mlp().eval(), [torch.randn(2, 8)], device="cpu")
    saved = tmp_path / "compiled.pt2"
    kiln.save(compiled, saved)
    assert (
        main(["run", str(saved), "--device", "cpu", "--shapes", "x:2x8", "--iterations", "2"]) == 0
    )
    assert "(compiled)" in capsys.readouterr().out


def test_run_errors_say_what_to_do(tmp_path, capsys):
    import re

    def fails(argv, pattern):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("kiln: error:") and re.search(pattern, err), err

    path = tmp_path / "m.onnx"
    onnx_model(path)
    fails(["run", str(path), "--device", "cpu"], r"dynamic dims.*--shapes x:MIN:OPT:MAX.*--batch")
    np.savez(tmp_path / "bad.npz", z=np.zeros((2, 8), np.float32))
    fails(
        [
            "run",
            str(path),
            "--device",
            "cpu",
            "--batch",
            "2",
            "--inputs",
            str(tmp_path / "bad.npz"),
        ],
        r"arrays \['z'\] that are not inputs",
    )
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    fails(["run", str(tmp_path / "junk.bin")], "neither an ONNX model, a Kiln plan")
    ts = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(Mlp().eval()), ts)
    fails(["run", str(ts), "--device", "cpu"], r"give the shapes of its inputs \['x'\]")


@pytest.mark.parametrize("against", ["onnxruntime", "reference"])
def test_compare_onnx_passes_against_onnxruntime_and_the_reference(tmp_path, capsys, against):
    path = tmp_path / "m.onnx"
    onnx_model(path)
    rc = main(["compare", str(path), "--against", against, "--device", "cpu", "--batch", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "cosine" in out and out.strip().endswith("PASS")


def test_compare_torchscript_and_exported_program_against_eager_torch(tmp_path, capsys):
    ts = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(Mlp().eval()), ts)
    rc = main(["compare", str(ts), "--against", "torch", "--device", "cpu", "--shapes", "x:4x8"])
    assert rc == 0, capsys.readouterr().out
    ep = tmp_path / "mlp.pt2"  # an ordinary ExportedProgram: its example shapes are the inputs'
    torch.export.save(torch.export.export(Mlp().eval(), (torch.randn(3, 8),)), ep)
    rc = main(["compare", str(ep), "--against", "torch", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "output0" in out, out


def test_compare_per_layer_names_the_layer_that_overflows_in_fp16(tmp_path, capsys):
    """The planted bad layer: `scale_up` multiplies by 1e5 (its values leave FP16's range), so an
    FP16 build breaks there while FP32 is fine. --per-layer names it first, lists the overflowing
    layers and the --pin-fp32 list; the build with that list passes."""
    from kiln.compare import compare

    path = tmp_path / "m.onnx"
    onnx_model(path, scale=1e5)
    result = compare(str(path), "onnxruntime", precisions=["fp32", "fp16"], device="cpu",
                     batch=3, per_layer=True)  # fmt: skip
    assert not result.passed
    assert result.first_bad is not None and result.first_bad.name == "big"
    assert result.first_bad.op == "Mul"
    assert [d.name for d in result.path][-1] == "big" and result.path[0].name == "h"
    assert {d.name for d in result.overflow} == {"big", "r"}
    assert result.pin_fp32
    text = result.text()
    assert "first layer beyond tolerance: big (Mul" in text and "--pin-fp32" in text
    fixed = compare(str(path), "onnxruntime", precisions=["fp32", "fp16"], device="cpu", batch=3,
                    pin_fp32=result.pin_fp32)  # fmt: skip
    assert fixed.passed, fixed.text()
    # FP32 needs no pins
    assert (
        compare(str(path), "onnxruntime", device="cpu", batch=3, per_layer=True).first_bad is None
    )
    rc = main(["compare", str(path), "--fp16", "--device", "cpu", "--batch", "3", "--per-layer"])
    assert rc == 1 and "first layer beyond tolerance: big" in capsys.readouterr().out


@pytest.mark.gpu
def test_run_and_compare_on_cuda(tmp_path, capsys):
    """On the GPU: kiln run times with CUDA events (graphs on and off, two streams) and reports
    GPU memory; kiln compare --per-layer names the FP16 overflow there too."""
    if not kiln.cuda_available():
        pytest.skip("no CUDA GPU visible (GPU test)")
    from kiln.compare import compare
    from kiln.runner import benchmark, load_model

    path = tmp_path / "m.onnx"
    onnx_model(path)
    model = load_model(path, batch=4, precisions=["fp32", "fp16"], device="cuda")
    for graphs in (True, False):
        result, out = benchmark(model, iterations=20, cuda_graphs=graphs, streams=2, batch=4)
        assert result.device == "cuda" and result.cuda_graphs is graphs
        assert len(result.latencies_ms) == 20 and result.throughput > 0
        assert result.memory["weights"] > 0 and result.memory["context (arena, workspace)"] > 0
        assert out["y"].shape == (4, 4)
    assert (
        main(["run", str(path), "--batch", "4", "--fp16", "--iterations", "10", "--profile"]) == 0
    )
    assert "slowest layers" in capsys.readouterr().out
    onnx_model(path, scale=1e5)
    result = compare(str(path), "onnxruntime", precisions=["fp32", "fp16"], device="cuda", batch=3,
                     per_layer=True)  # fmt: skip
    assert not result.passed and result.first_bad.name == "big"
    fixed = compare(str(path), "onnxruntime", precisions=["fp32", "fp16"], device="cuda", batch=3,
                    pin_fp32=result.pin_fp32)  # fmt: skip
    assert fixed.passed, fixed.text()
