"""tools/check_layers.py: the layer rules hold on the tree, and a violation is reported."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_layers", ROOT / "tools" / "check_layers.py")
check_layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_layers)


def test_tree_respects_layers():
    assert check_layers.violations() == []


def test_upward_include_is_reported(tmp_path):
    (tmp_path / "ir").mkdir()
    (tmp_path / "ir" / "network.h").write_text('#include "ir/dims.h"\n#include "core/plan.h"\n')
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "k.cu").write_text('#include "ir/network.h"\n')
    (tmp_path / "converters").mkdir()
    (tmp_path / "converters" / "c.cpp").write_text('#include "driver/convert_segment.h"\n')
    assert sorted(check_layers.violations(tmp_path)) == [
        "converters/c.cpp: includes driver/convert_segment.h (converters may not include driver)",
        "ir/network.h: includes core/plan.h (ir may not include core)",
    ]


def test_layer_of_paths():
    assert check_layers.layer_of("py/kiln/csrc/bindings.cpp") == "py/kiln/csrc"
    assert check_layers.layer_of("ir/ops/activation.h") == "ir"
    assert check_layers.layer_of("tests/cpp/test_passes.cpp") is None
