"""Refit of engines built from ONNX models (kiln.onnx.refit): the float initializers are
refittable weights by name, except those whose values decide the network's structure; a refitted
engine computes what a fresh build of the new model computes, bit for bit on the reference
backend."""

import io

import numpy as np
import pytest
import torch
import torch.nn as nn

import kiln

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

if not hasattr(kiln._C, "onnx_parse_file"):
    pytest.skip("this Kiln was built without its ONNX parser", allow_module_level=True)
import kiln.onnx  # noqa: E402


def _engine(model, precisions=()):
    plan = kiln.Builder().build(
        kiln.onnx.parse(model), kiln.BuilderConfig(device="cpu", precisions=list(precisions))
    )
    return kiln.Engine(plan, device="cpu")


def _run(engine, feed):
    out = engine.create_execution_context().execute(
        {k: torch.from_numpy(v) for k, v in feed.items()}
    )
    return {k: v.float().numpy() for k, v in out.items()}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _exported(seed) -> bytes:
    torch.manual_seed(seed)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.randn(2, 3, 8, 8),), buffer, input_names=["x"], output_names=["y"], dynamo=False
    )
    return buffer.getvalue(), net


@pytest.mark.parametrize("precisions", [(), ("fp16",)])
def test_a_refitted_engine_equals_a_fresh_build(precisions):
    first, _ = _exported(0)
    second, net = _exported(1)
    engine = _engine(first, precisions)
    weights = engine.refittable_weights()
    assert weights, "the convolution and linear initializers are weights"
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    before = _run(engine, {"x": x})["y"]
    assert kiln.onnx.refit(engine, second) == len(weights)
    got = _run(engine, {"x": x})["y"]
    fresh = _run(_engine(second, precisions), {"x": x})["y"]
    np.testing.assert_array_equal(got, fresh)
    assert not np.allclose(before, got)
    if not precisions:
        with torch.no_grad():
            np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


def _handmade(w, scales, bias):
    """x -> Resize(scales) -> MatMul(Transpose(w)) + bias: the scales are structure (read while
    parsing); w folds through a Transpose at parse time unless it is a weight."""
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["r", "wt"], ["m"]),
        helper.make_node("Add", ["m", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.asarray(w, np.float32), "w"),
            numpy_helper.from_array(np.asarray(scales, np.float32), "scales"),
            numpy_helper.from_array(np.asarray(bias, np.float32), "bias"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_structural_initializers_stay_constants_and_folded_weights_refit():
    rng = np.random.default_rng(1)
    scales = [1, 1, 2, 2]
    first = _handmade(rng.standard_normal((4, 6)), scales, rng.standard_normal(4))
    second = _handmade(rng.standard_normal((4, 6)), scales, rng.standard_normal(4))
    engine = _engine(first)
    assert set(engine.refittable_weights()) == {"w", "bias"}  # not the Resize's scales
    x = rng.standard_normal((1, 1, 2, 3), dtype=np.float32)
    kiln.onnx.refit(engine, second)
    np.testing.assert_array_equal(_run(engine, {"x": x})["y"], _run(_engine(second), {"x": x})["y"])


def test_a_model_without_the_weights_is_refused_by_name():
    first, _ = _exported(0)
    engine = _engine(first)
    proto = onnx.load_from_string(first)
    name = next(iter(engine.refittable_weights()))
    kept = [i for i in proto.graph.initializer if i.name != name]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    with pytest.raises(kiln.KilnError, match=f"no initializer '{name}'"):
        kiln.onnx.refit(engine, proto)


def test_plans_refit_from_onnx_and_external_data(tmp_path):
    first, _ = _exported(0)
    second, _ = _exported(2)
    plan = kiln.Builder().build(kiln.onnx.parse(first), kiln.BuilderConfig(device="cpu"))
    proto = onnx.load_from_string(second)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path, save_as_external_data=True, size_threshold=0, location="m.data")
    assert (tmp_path / "m.data").exists()
    kiln.onnx.refit(plan, path)
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(
        _run(kiln.Engine(plan, device="cpu"), {"x": x})["y"], _run(_engine(second), {"x": x})["y"]
    )
