"""Layer attributes are checked against the op's schema (issue 14): an attribute the op does not
declare, or a value of another type, is refused with a KilnError naming the layer, the op, the
attribute and what the op takes. They used to be ignored: ``transpose_b=1.0`` and
``transpose_B=1`` both built a matmul that did not transpose. CPU reference backend."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from layer_util import crafted_plan, run_network

import kiln


def matmul_inputs():
    net = kiln.Network()
    return net, net.add_input("a", "float32", (2, 3)), net.add_input("b", "float32", (4, 3))


def test_misspelled_attribute_is_refused_naming_the_closest():
    net, a, b = matmul_inputs()
    with pytest.raises(
        kiln.KilnError,
        match=r"layer 'mm' \(matmul\): unknown attribute 'transpose_B' \(did you mean "
        r"'transpose_b'\?\); matmul takes transpose_a, transpose_b, allow_tf32, tactic",
    ):
        net.add_layer("matmul", [a, b], {"transpose_B": 1}, name="mm")
    with pytest.raises(kiln.KilnError, match=r"unknown attribute 'colour'; matmul takes"):
        net.add_layer("matmul", [a, b], {"colour": "red"})
    with pytest.raises(kiln.KilnError, match="embedding takes no attributes"):
        net.add_layer("embedding", [b, net.add_input("i", "int64", (5,))], {"padding_idx": 0})


def test_wrongly_typed_attribute_is_refused():
    net, a, b = matmul_inputs()
    with pytest.raises(
        kiln.KilnError,
        match=r"layer 'mm' \(matmul\): attribute 'transpose_b' must be an int \(0/1: .*\), "
        r"got a float \(1\)",
    ):
        net.add_layer("matmul", [a, b], {"transpose_b": 1.0}, name="mm")
    with pytest.raises(kiln.KilnError, match=r"'transpose_b' must be an int .*got a string"):
        net.add_layer("matmul", [a, b], {"transpose_b": "yes"})
    with pytest.raises(kiln.KilnError, match="'type' must be a string"):
        net.add_layer("activation", [a], {"type": 1})
    with pytest.raises(kiln.KilnError, match="'shape' must be an int list"):
        net.add_layer("reshape", [a], {"shape": [3.0, 2.0]})
    assert net._net.layers() == [], "a refused layer is not added"


@pytest.mark.parametrize("flag", [1, True, np.int64(1), np.bool_(True)])
def test_bool_and_integer_types_are_ints(flag):
    net, a, b = matmul_inputs()
    net.mark_output(net.add_layer("matmul", [a, b], {"transpose_b": flag}), "y")
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    out = run_network(net, {"a": x, "b": w})["y"]
    torch.testing.assert_close(out, x @ w.T)


def test_an_int_is_widened_where_a_float_is_declared():
    net = kiln.Network()
    x = net.add_input("x", "float32", (4, 5))
    net.mark_output(net.add_layer("activation", [x], {"type": "leaky_relu", "alpha": 2}), "y")
    data = torch.randn(4, 5)
    out = run_network(net, {"x": data})["y"]
    torch.testing.assert_close(out, torch.where(data > 0, data, 2 * data))


@pytest.mark.parametrize(
    "value, why",
    [
        (object(), "of Python type object"),
        (b"relu", "of Python type bytes"),
        (["a", "b"], "a sequence holding 'a'"),
        (2**70, "does not fit a 64-bit int"),
    ],
)
def test_values_of_no_attribute_type_are_refused(value, why):
    net, a, _ = matmul_inputs()
    with pytest.raises(
        kiln.KilnError, match=rf"layer 'act' \(activation\): attribute 'type' is .*{why}"
    ):
        net.add_layer("activation", [a], {"type": value}, name="act")


def test_builder_and_converter_attributes_are_declared():
    # The builder and the converters set attributes of their own (fused, activation, residual,
    # alias, tactic, layout, program, ...): every plan they write must load again. kiln.plans
    # parses the serialized plan of each engine, which checks every attribute.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16),
        nn.GELU(),
        nn.Linear(16, 4),
        nn.Sigmoid(),
    ).eval()
    compiled = kiln.compile(model, [torch.randn(2, 3, 6, 6)], device="cpu", min_block_size=1)
    (plan,) = kiln.plans(compiled)
    names = {name for layer in plan.layers() for name in layer["attrs"]}
    assert {"fused", "activation", "alias"} <= names, names
    reloaded = kiln.Plan.deserialize(plan.serialize())
    assert [lay["attrs"] for lay in reloaded.layers()] == [lay["attrs"] for lay in plan.layers()]


def test_every_declared_attribute_passes_its_own_check():
    # Each op's declared defaults are values of the declared type: set explicitly, they are
    # accepted by the check (validation errors beyond the type are the op's own business).
    for op in kiln._C.registered_ops():
        for name, _type, default, _doc in kiln._C.op_attributes(op):
            if default is None:
                continue
            net = kiln.Network()
            x = net.add_input("x", "float32", (1, 2, 4, 4))
            try:
                net.add_layer(op, [x], {name: default})
            except kiln.KilnError as e:
                for refusal in ("unknown attribute", f"attribute '{name}' must be"):
                    assert refusal not in str(e), (op, name, e)


# ---- plans -----------------------------------------------------------------------------------


def test_plan_with_a_wrongly_typed_attribute_is_refused():
    # transpose_b's value tag 0 (int) -> 1 (float): the same 8 bytes read as a double.
    def retype(plan: bytes) -> bytes:
        at = plan.index(b"transpose_b") + len(b"transpose_b")
        assert plan[at] == 0
        return plan[:at] + b"\x01" + plan[at + 1 :]

    with pytest.raises(
        kiln.KilnError, match=r"layer 'mm' \(matmul\): attribute 'transpose_b' must be an int"
    ):
        kiln.Plan.deserialize(crafted_plan(retype))


def test_plan_with_an_unknown_attribute_is_refused():
    def rename(plan: bytes) -> bytes:
        return plan.replace(b"transpose_b", b"transpose_c")

    with pytest.raises(
        kiln.KilnError, match=r"unknown attribute 'transpose_c' \(did you mean 'transpose_"
    ):
        kiln.Plan.deserialize(crafted_plan(rename))


def test_engine_attributes_are_accepted_on_every_op_and_documented():
    # `fused` is informational and may annotate any layer (kiln.inspect shows it).
    engine_attrs = kiln._C.engine_attributes()
    assert [a[0] for a in engine_attrs] == ["fused"]
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3))
    net.add_layer("identity", [x], {"fused": "a,b"})
    with pytest.raises(kiln.KilnError, match="attribute 'fused' must be a string"):
        net.add_layer("identity", [x], {"fused": 1})
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ops.md").read_text()
    paragraph = doc[doc.index("Besides its own, every") :].split("\n\n")[0]
    for name, *_ in engine_attrs:
        assert f"`{name}`" in paragraph, name
