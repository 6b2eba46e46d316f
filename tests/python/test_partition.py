"""The partitioner on hand-built KGraphs: graph in, expected segments out (structure, no torch).

"test.opaque" has no converter, so it stands for any op that must run in PyTorch.
"""

import struct

import pytest

import kiln
from kiln import _C


def unary(g, name, target, x, shape=(2, 3)):
    out = g.add_value(name, "float32", list(shape), False)
    g.add_node(name, target, [("self", _C.ValueRef(x))], [out], "")
    return out


def segments(g, min_block_size=1, forced=(), full=False):
    p = _C.partition(g, min_block_size, list(forced), full)
    names = [
        ("engine" if s["engine"] else "pytorch", [g.node_name(n) for n in s["nodes"]])
        for s in p["segments"]
    ]
    return names, p


def test_all_convertible_is_one_engine_and_nothing_falls_back():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    g.mark_output(unary(g, "b", "aten.sigmoid.default", unary(g, "a", "aten.relu.default", x)))
    names, p = segments(g)
    assert names == [("engine", ["a", "b"])]
    assert p["fallbacks"] == []
    assert p["segments"][0]["inputs"] == [x]


def test_unconvertible_node_splits_and_says_why():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    a = unary(g, "a", "aten.relu.default", x)
    b = unary(g, "b", "test.opaque", a)
    c = unary(g, "c", "aten.tanh.default", b)
    g.mark_output(c)
    names, p = segments(g)
    assert names == [("engine", ["a"]), ("pytorch", ["b"]), ("engine", ["c"])]
    assert p["fallbacks"] == [(1, "no converter for test.opaque")]
    first, _, last = p["segments"]
    assert first["outputs"] == [a] and last["inputs"] == [b] and last["outputs"] == [c]


def test_independent_pytorch_node_does_not_split_an_engine():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    a = unary(g, "a", "aten.relu.default", x)
    side = unary(g, "side", "test.opaque", x)  # between a and c in program order
    c = unary(g, "c", "aten.tanh.default", a)
    g.mark_output(c)
    g.mark_output(side)
    names, _ = segments(g)
    assert sorted(names) == [("engine", ["a", "c"]), ("pytorch", ["side"])]


def test_min_block_size_and_forced_ops():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    g.mark_output(unary(g, "b", "aten.sigmoid.default", unary(g, "a", "aten.relu.default", x)))
    names, p = segments(g, min_block_size=3)
    assert names == [("pytorch", ["a", "b"])]
    assert "below min_block_size 3" in p["fallbacks"][0][1]
    names, p = segments(g, forced=["aten.sigmoid.default"])
    assert names == [("engine", ["a"]), ("pytorch", ["b"])]
    assert p["fallbacks"] == [(1, "listed in torch_executed_ops")]


def test_require_full_compilation_lists_every_node():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    a = g.add_value("a", "float32", [2, 3], False)
    g.add_node("a", "test.opaque", [("self", _C.ValueRef(x))], [a], "model.py:3 in forward")
    b = unary(g, "b", "test.other", a)
    g.mark_output(b)
    with pytest.raises(kiln.KilnError) as err:
        _C.partition(g, 1, [], True)
    text = str(err.value)
    assert "2 nodes cannot run" in text
    assert "a (test.opaque) at model.py:3 in forward: no converter for test.opaque" in text
    assert "b (test.other): no converter for test.other" in text


def test_capability_reason_is_reported():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    out = g.add_value("g", "float32", [2, 3], False)
    g.add_node(
        "g", "aten.gelu.default", [("self", _C.ValueRef(x)), ("approximate", "fancy")], [out], ""
    )
    g.mark_output(out)
    assert g.check_node(0) == "approximate='fancy' is not supported"
    _, p = segments(g)
    assert p["fallbacks"] == [(0, "approximate='fancy' is not supported")]


def test_constant_only_node_follows_its_pytorch_reader():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    w = g.add_constant("w", "float32", [3, 2], struct.pack("6f", *range(6)))
    wt = g.add_value("wt", "float32", [2, 3], False)
    g.add_node("wt", "aten.permute.default", [("self", _C.ValueRef(w)), ("dims", [1, 0])], [wt], "")
    out = g.add_value("y", "float32", [2, 3], False)
    g.add_node(
        "y", "test.opaque", [("self", _C.ValueRef(x)), ("other", _C.ValueRef(wt))], [out], ""
    )
    g.mark_output(out)
    names, p = segments(g)
    assert names == [("pytorch", ["wt", "y"])]
    assert "reads only constants" in dict(p["fallbacks"])[0]


def test_symbolic_size_never_crosses_an_engine_boundary():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [-1, 3])
    n = g.add_value("n", "int64", [], True)
    g.add_node("n", "aten.sym_size.int", [("self", _C.ValueRef(x)), ("dim", 0)], [n], "")
    y = g.add_value("y", "float32", [-1, 3], False)
    g.add_node("y", "test.opaque", [("self", _C.ValueRef(x)), ("size", _C.ValueRef(n))], [y], "")
    g.mark_output(y)
    names, p = segments(g)
    assert names == [("pytorch", ["n", "y"])]
    assert "symbolic size is used by PyTorch" in dict(p["fallbacks"])[0]


def test_symbolic_size_is_recomputed_in_the_engine_that_reads_it():
    # n = x.shape[0] feeds a reshape after a PyTorch node: the second engine converts sym_size
    # again from x (a graph input) instead of being split or receiving n.
    g = _C.KGraph()
    x = g.add_input("x", "float32", [-1, 3])
    n = g.add_value("n", "int64", [], True)
    g.add_node("n", "aten.sym_size.int", [("self", _C.ValueRef(x)), ("dim", 0)], [n], "")
    a = unary(g, "a", "aten.relu.default", x, (-1, 3))
    b = unary(g, "b", "test.opaque", a, (-1, 3))
    c = g.add_value("c", "float32", [-1, 3], False)
    size = [_C.ValueRef(n), 3]
    g.add_node("c", "aten.view.default", [("self", _C.ValueRef(b)), ("size", size)], [c], "")
    g.mark_output(c)
    names, p = segments(g)
    assert names == [("engine", ["n", "a"]), ("pytorch", ["b"]), ("engine", ["c"])]
    last = p["segments"][2]
    assert [g.node_name(i) for i in last["recompute"]] == ["n"]
    assert sorted(last["inputs"]) == sorted([x, b])
    assert n not in p["segments"][0]["outputs"]
    net = _C.convert_segment(g, last)
    assert [name for name, *_ in net.layers()][-1] == "c"


def test_segment_conversion_names_bindings_after_values():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    g.mark_output(unary(g, "a", "aten.relu.default", x))
    _, p = segments(g)
    net = _C.convert_segment(g, p["segments"][0])
    names = [name for name, *_ in net.layers()]
    assert names == ["a"]


def mm(g, name, a, b, shape, dtype="float32"):
    out = g.add_value(name, dtype, list(shape), False)
    g.add_node(
        name, "aten.mm.default", [("self", _C.ValueRef(a)), ("mat2", _C.ValueRef(b))], [out], ""
    )
    return out


def compile_graph(g, full=False, dry_run=True):
    options = _C.CompileOptions()
    options.device = "cpu"
    options.min_block_size = 1
    options.require_full_compilation = full
    options.dry_run = dry_run
    return _C.compile_graph(g, options, lambda v: None)


def test_node_whose_conversion_fails_runs_in_pytorch_with_the_reason():
    # The capability check passes (floating operands) but the engine's matmul refuses the layer
    # (inner dims 3 and 5 differ): the node falls back and the rest still converts.
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    w = g.add_input("w", "float32", [5, 4])
    a = unary(g, "a", "aten.relu.default", x)
    bad = mm(g, "bad", a, w, (2, 4))
    g.mark_output(unary(g, "c", "aten.tanh.default", bad, (2, 4)))
    segments, report, _ = compile_graph(g)
    kinds = [(s["engine"], [g.node_name(n) for n in s["nodes"]]) for s in segments]
    assert kinds == [(True, ["a"]), (False, ["bad"]), (True, ["c"])]
    [fallback] = report.fallbacks
    assert fallback.node == "bad" and fallback.reason.startswith("its conversion failed:")
    assert "matmul" in fallback.reason
    with pytest.raises(kiln.KilnError, match="require_full_compilation: bad .*conversion failed"):
        compile_graph(g, full=True)


def test_matmul_operands_of_different_floating_dtypes_are_promoted():
    g = _C.KGraph()
    x = g.add_input("x", "float16", [2, 3])
    w = g.add_constant("w", "float32", [3, 4], struct.pack("12f", *range(12)))
    g.mark_output(mm(g, "y", x, w, (2, 4)))
    segments, report, _ = compile_graph(g, full=True)
    assert report.num_engines == 1 and not report.fallbacks
    net = _C.convert_segment(g, segments[0])
    assert [op for _, op, *_ in net.layers()] == ["cast", "matmul"]


def test_report_groups_fallbacks_by_op_and_reason():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [2, 3])
    v = x
    for k in range(4):
        v = unary(g, f"opaque{k}", "test.opaque", unary(g, f"relu{k}", "aten.relu.default", v))
    g.mark_output(v)
    _, report, _ = compile_graph(g)
    lines = [line for line in report.text.splitlines() if "pytorch:" in line]
    assert lines == ["  pytorch: test.opaque x4 (first: opaque0): no converter for test.opaque"]


def test_device_change_converts_for_constants_only():
    g = _C.KGraph()
    x = g.add_input("x", "float32", [3])
    c = g.add_constant("c", "float32", [3], struct.pack("3f", 1, 2, 3))
    moved = {}
    for name, src in (("moved_const", c), ("moved_input", x)):
        out = moved[name] = g.add_value(name, "float32", [3], False)
        args = [("self", _C.ValueRef(src)), ("dtype", None), ("layout", None), ("device", "cuda:0")]
        g.add_node(name, "aten._to_copy.default", args, [out], "")
        g.mark_output(out)
    y = g.add_value("y", "float32", [3], False)  # an engine reader of the moved constant
    args = [("self", _C.ValueRef(x)), ("other", _C.ValueRef(moved["moved_const"]))]
    g.add_node("y", "aten.mul.Tensor", args, [y], "")
    g.mark_output(y)
    _, report, _ = compile_graph(g)
    assert [(f.node, f.reason) for f in report.fallbacks] == [
        ("moved_input", "a device change is not converted")
    ]


def test_device_change_converts_for_values_computed_from_constants():
    # A transformers sliding-window cache returns a CPU counter: the export clones a lifted
    # constant and moves it to the GPU. Neither node may fall back (they did on CUDA, as two
    # PyTorch islands per layer); a value that reads an input still may not move.
    g = _C.KGraph()
    x = g.add_input("x", "float32", [3])
    c = g.add_constant("c", "int64", [], struct.pack("q", 7))
    cloned = g.add_value("cloned", "int64", [], False)
    g.add_node("cloned", "aten.clone.default", [("self", _C.ValueRef(c))], [cloned], "")
    moved = g.add_value("moved", "int64", [], False)
    args = [("self", _C.ValueRef(cloned)), ("dtype", None), ("layout", None), ("device", "cuda:0")]
    g.add_node("moved", "aten._to_copy.default", args, [moved], "")
    y = g.add_value("y", "float32", [3], False)
    g.add_node("y", "aten.neg.default", [("self", _C.ValueRef(x))], [y], "")
    tainted = g.add_value("tainted", "float32", [3], False)
    args = [("self", _C.ValueRef(y)), ("dtype", None), ("layout", None), ("device", "cuda:0")]
    g.add_node("tainted", "aten._to_copy.default", args, [tainted], "")
    for v in (moved, y, tainted):
        g.mark_output(v)
    _, report, _ = compile_graph(g)
    assert [(f.node, f.reason) for f in report.fallbacks] == [
        ("tainted", "a device change is not converted")
    ]
