"""docs/ops.md "Converted aten ops" must list exactly the registered converters, with their
dynamic-shape flag and limits, and only engine ops that exist."""

import re
from pathlib import Path

from kiln import _C

DOC = Path(__file__).resolve().parents[2] / "docs" / "ops.md"


def documented_converters():
    text = DOC.read_text().split("## Converted aten ops", 1)[1]
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
