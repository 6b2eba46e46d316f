"""docs/ops.md "Converted aten ops" must list exactly the registered converters, with their
dynamic-shape flag and limits, and only engine ops that exist."""

import re
from pathlib import Path

from kiln import _C

DOC = Path(__file__).resolve().parents[2] / "docs" / "ops.md"


def documented_converters():
    text = DOC.read_text().split("## Converted aten ops", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
        if m:
            assert m.group(1) not in rows, f"docs/ops.md lists {m.group(1)} twice"
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_every_converter_is_documented_and_vice_versa():
    registered = {target for target, _, _ in _C.registered_converters()}
    assert set(documented_converters()) == registered


def test_documented_dynamic_flag_and_limits_match_the_registry():
    rows = documented_converters()
    for target, dynamic, limits in _C.registered_converters():
        engine_ops, doc_dynamic, doc_limits = rows[target]
        assert doc_dynamic == ("yes" if dynamic else "no"), target
        assert doc_limits == limits, target


def test_documented_engine_ops_exist():
    ops = set(_C.registered_ops())
    for target, (engine_ops, _, _) in documented_converters().items():
        for op in re.findall(r"[a-z_]+", engine_ops.split("(")[0]):
            assert op in ops, (target, op)


def core_aten_ops():
    """Every overload PyTorch tags core (torch.Tag.core), as "aten.name.overload". All schemas,
    not dir(torch.ops.aten), which lists only the packets loaded so far."""
    import torch

    ops = set()
    for schema in torch._C._jit_get_all_schemas():
        if not schema.name.startswith("aten::"):
            continue
        name, overload = schema.name[len("aten::") :], schema.overload_name or "default"
        try:
            op = getattr(getattr(torch.ops.aten, name), overload)
        except (AttributeError, RuntimeError):
            continue
        if torch.Tag.core in op.tags:
            ops.add(f"aten.{name}.{overload}")
    return ops


def documented_unconverted():
    text = DOC.read_text().split("## Core ATen ops not converted", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
        if m:
            assert m.group(2).strip(), f"{m.group(1)} has no reason"
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_every_core_aten_op_is_converted_or_listed_with_why():
    core = core_aten_ops()
    assert len(core) > 150  # torch's tag is there
    registered = {target for target, _, _ in _C.registered_converters()}
    listed = documented_unconverted()
    assert sorted(core - registered - set(listed)) == []
    assert sorted(set(listed) & registered) == [], "listed as not converted, but converted"
    assert sorted(set(listed) - core) == [], "listed, but not a core aten op"
