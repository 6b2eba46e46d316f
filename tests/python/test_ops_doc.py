"""docs/ops.md must list exactly the registered ops, and only kernels that exist."""

import re
from pathlib import Path

import pytest

import kiln
from kiln import _C

DOC = Path(__file__).resolve().parents[2] / "docs" / "ops.md"


def documented_ops():
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*([a-z_0-9]+)\s*\|(.*)\|\s*$", line)
        if m and m.group(1) not in ("op",):
            cells = [c.strip() for c in m.group(2).split("|")]
            rows[m.group(1)] = cells
    return rows


def test_every_registered_op_is_documented_and_vice_versa():
    assert set(documented_ops()) == set(_C.registered_ops())


def test_documented_kernels_exist_on_both_backends():
    for op, cells in documented_ops().items():
        ref, cuda = cells[-2], cells[-1]
        assert ref != "—" and _C.has_kernel(op, "reference"), op
        assert cuda != "—" and _C.has_kernel(op, "cuda"), op


def test_documented_attribute_values_are_accepted():
    # Every value listed for `op` / `type` must build; an unlisted one must be refused.
    rows = documented_ops()
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3))
    flag = net.add_input("flag", "bool", (2, 3))
    for value in re.findall(r"[a-z_]+", rows["elementwise"][1].split(":", 1)[1]):
        operand = flag if value in ("and", "or", "xor") else x
        net.add_elementwise(operand, operand, value)
    for value in re.findall(r"[a-z_]+", rows["activation"][1].split(";")[0].split(":", 1)[1]):
        net.add_activation(x, value)
    for value in re.findall(r"[a-z_]+", rows["unary"][1].split(":", 1)[1]):
        if value != "not":  # bool-only
            net.add_layer("unary", [x], {"op": value})
    with pytest.raises(kiln.KilnError):
        net.add_activation(x, "not_an_activation")
