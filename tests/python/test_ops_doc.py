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


def documented_attributes(cell):
    """The attribute names an attributes cell mentions: its backticked identifiers, without the
    values listed after an attribute and a colon (`op`: add, sub, ... up to the next ';' or '(')."""
    names = re.sub(r"(`[a-z_][a-z0-9_]*`:)[^;(]*", r"\1", cell)
    return set(re.findall(r"`([a-z_][a-z0-9_]*)`", names))


def is_builder_internal(doc):
    return doc.startswith("set by the builder")


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
    for value in re.findall(r"[a-z_][a-z_0-9]*", rows["elementwise"][1].split(":", 1)[1]):
        operand = flag if value in ("and", "or", "xor") else x
        net.add_elementwise(operand, operand, value)
    for value in re.findall(r"[a-z_]+", rows["activation"][1].split(";")[0].split(":", 1)[1]):
        net.add_activation(x, value)
    for value in re.findall(r"[a-z_][a-z_0-9]*", rows["unary"][1].split(":", 1)[1]):
        if value != "not":  # bool-only
            net.add_layer("unary", [x], {"op": value})
    with pytest.raises(kiln.KilnError):
        net.add_activation(x, "not_an_activation")


def test_documented_attributes_match_the_schemas():
    # The attributes column of every row names the op's declared attributes (kiln._C.op_attributes),
    # except those only the builder sets, and names nothing the op does not declare.
    rows = documented_ops()
    for op in _C.registered_ops():
        declared = {name: doc for name, _type, _default, doc in _C.op_attributes(op)}
        documented = documented_attributes(rows[op][1])
        public = {name for name, doc in declared.items() if not is_builder_internal(doc)}
        assert not public - documented, (
            f"{op}: declared but not in docs/ops.md: {sorted(public - documented)}"
        )
        assert not documented - set(declared), (
            f"{op}: in docs/ops.md but not declared: {sorted(documented - set(declared))}"
        )


def test_declared_attributes_are_well_formed():
    # One entry per name, a known type, a default of that type (or None) and a doc string.
    python_type = {"int": int, "float": float, "int list": list, "float list": list, "string": str}
    for op in _C.registered_ops():
        names = [a[0] for a in _C.op_attributes(op)]
        assert len(names) == len(set(names)), op
        for name, type_name, default, doc in _C.op_attributes(op):
            assert type_name in python_type, (op, name, type_name)
            assert default is None or isinstance(default, python_type[type_name]), (
                op,
                name,
                default,
            )
            assert doc, (op, name)
