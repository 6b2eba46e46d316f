"""The ONNX parser (onnx_parser/, kiln.onnx): real exported models against ONNX Runtime, the
three ways in (path, bytes, ModelProto), external data, and the errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln

onnx = pytest.importorskip("onnx", reason="the onnx package is needed (pip install onnx)")
ort = pytest.importorskip(
    "onnxruntime", reason="ONNX Runtime is the peer (pip install onnxruntime)"
)
from onnx import TensorProto, helper  # noqa: E402

if not hasattr(kiln._C, "onnx_parse_file"):
    pytest.skip(
        "this Kiln was built without its ONNX parser (needs libprotobuf-dev, protobuf-compiler)",
        allow_module_level=True,
    )
import kiln.onnx  # noqa: E402


def cosine(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_engine(net, feed, device="cpu", precisions=(), profile=None):
    config = kiln.BuilderConfig(device=device, precisions=list(precisions))
    if profile:
        config.add_optimization_profile(profile)
    plan = kiln.Builder().build(net, config)
    ctx = kiln.Engine(plan, device=device).create_execution_context()
    out = ctx.execute({k: torch.from_numpy(v).to(device) for k, v in feed.items()})
    return {k: v.float().cpu().numpy() for k, v in out.items()}, plan


def small_model(opset=17, op="Relu"):
    nodes = [
        helper.make_node(op, ["x"], ["r"], name="act"),
        helper.make_node("Add", ["r", "w"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_path_bytes_and_model_proto_give_the_same_network(tmp_path):
    model = small_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    nets = [
        kiln.onnx.parse(path),
        kiln.onnx.parse(str(path)),
        kiln.onnx.parse(model.SerializeToString()),
        kiln.onnx.parse(model),
    ]
    layers = [n._net.layers() for n in nets]
    assert all(la == layers[0] for la in layers)
    net = nets[0]
    assert [t.name for t in net.inputs] == ["x"] and [t.name for t in net.outputs] == ["y"]
    assert net.inputs[0].shape == (-1, 4)  # dim_param "N": a dynamic dim
    assert net.onnx_info["opset"] == 17
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    out, _ = run_engine(net, {"x": x}, profile={"x": ([1, 4], [3, 4], [8, 4])})
    np.testing.assert_allclose(
        out["y"], np.maximum(x, 0) + np.array([1, 2, 3, 4], np.float32), rtol=0, atol=0
    )
    assert "Relu" in kiln.onnx.supported_operators()


def test_backend_run_node_runs_one_node():
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1, alpha=0.5)
    a = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    b = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    (y,) = kiln.onnx.backend.run_node(node, [a, b])
    np.testing.assert_allclose(y, 0.5 * a @ b.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "int32_data"])
@pytest.mark.parametrize(
    "onnx_type,values",
    [
        (TensorProto.INT4, [-8, -3, 0, 5, 7]),  # odd count: the last byte half used
        (TensorProto.UINT4, [0, 1, 9, 15, 4]),
        (TensorProto.INT2, [-2, -1, 0, 1, 1, -2, 0]),
        (TensorProto.UINT2, [3, 0, 1, 2, 3]),
        (TensorProto.FLOAT4E2M1, [-6.0, -0.5, 0.0, 1.5, 3.0]),
        (TensorProto.FLOAT8E5M2, [-57344.0, -0.0, 1.75, 3.0e-5, 448.0]),
        (TensorProto.FLOAT8E4M3FNUZ, [-240.0, 0.0, 0.3125, 1e-3, 17.0]),
    ],
)
def test_narrow_initializers_unpack_as_the_reference_reads_them(onnx_type, values, raw):
    """Packed 4- and 2-bit and float8 initializers (raw_data and int32_data) are decoded into the
    values Kiln holds them in; DequantizeLinear of them matches onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    w = helper.make_tensor("w", onnx_type, [len(values)], values, raw=False)
    if raw:  # the same packed bytes as raw_data
        w = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w), "w")
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s"], ["d"]),
        helper.make_node("Mul", ["d", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(values)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(values)])],
        [w, helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    x = np.random.default_rng(4).standard_normal(len(values)).astype(np.float32)
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    out, _ = run_engine(kiln.onnx.parse(model), {"x": x})
    np.testing.assert_array_equal(out["y"], want)


RECURRENT_CASES = {
    # op, gates, attributes, optional inputs given (B, initial_h, initial_c, P)
    "lstm_bidirectional_peepholes_clip": (
        "LSTM",
        4,
        {"direction": "bidirectional", "clip": 2.5},
        ("B", "initial_h", "initial_c", "P"),
    ),
    "lstm_input_forget": ("LSTM", 4, {"input_forget": 1}, ("B", "initial_h")),
    "gru_linear_before_reset_reverse": (
        "GRU",
        3,
        {"linear_before_reset": 1, "direction": "reverse"},
        ("B", "initial_h"),
    ),
    "gru_bidirectional": ("GRU", 3, {"direction": "bidirectional"}, ("B",)),
    "rnn_relu_affine": (
        "RNN",
        1,
        {
            "direction": "bidirectional",
            "activations": ["Relu", "Affine"],  # alpha / beta go to the functions taking them
            "activation_alpha": [0.5],
            "activation_beta": [0.25],
        },
        ("B", "initial_h"),
    ),
}


@pytest.mark.parametrize("case", sorted(RECURRENT_CASES))
def test_recurrent_layers_match_onnxruntime(case):
    """RNN / GRU / LSTM unrolled: options the node tests leave out, against ONNX Runtime (which has
    no layout 1: the node tests' batchwise cases cover it)."""
    import onnxruntime as ort

    op, gates, attrs, optional = RECURRENT_CASES[case]
    steps, batch, inputs, hidden = 5, 3, 4, 6
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    rng = np.random.default_rng(7)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    feeds = {
        "X": rand(batch, steps, inputs) if layout else rand(steps, batch, inputs),
        "W": rand(dirs, gates * hidden, inputs),
        "R": rand(dirs, gates * hidden, hidden),
        "B": rand(dirs, 2 * gates * hidden),
        "initial_h": rand(*state),
        "initial_c": rand(*state),
        "P": rand(dirs, 3 * hidden),
    }
    names = ["X", "W", "R", "B", "", "initial_h", "initial_c", "P"][: 8 if op == "LSTM" else 6]
    names = [n if n in ("X", "W", "R") or n in optional else "" for n in names]
    while names[-1] == "":
        names.pop()
    outputs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, names, outputs, hidden_size=hidden, **attrs)
    feeds = {n: feeds[n] for n in names if n}
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got, _ = run_engine(kiln.onnx.parse(model), feeds)
    for name, w in zip(outputs, want, strict=True):
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5, err_msg=name)


def _run_no_inputs(model) -> dict:
    plan = kiln.Builder().build(kiln.onnx.parse(model), kiln.BuilderConfig(device="cpu"))
    out = kiln.Engine(plan, device="cpu").create_execution_context().execute({})
    return {k: np.asarray(v) for k, v in out.items()}


def _branch(name, value):
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])
    node = helper.make_node(
        "Constant", [], ["o"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value])
    )
    return helper.make_graph([node], name, [], [out])


def test_control_flow_unrolls_when_known_and_says_why_when_not():
    """If picks its branch and Loop / Scan unroll while parsing when their conditions and counts
    are known (constants, or folded from constants); otherwise the error says what to do."""
    cond_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    if_node = helper.make_node(
        "If", ["c"], ["y"], then_branch=_branch("then", 1.0), else_branch=_branch("else", 2.0)
    )
    # the condition computed from constants: 3 > 2, folded while parsing
    nodes = [
        helper.make_node("Greater", ["a", "b"], ["c"]),
        if_node,
    ]
    inits = [
        helper.make_tensor("a", TensorProto.INT64, [], [3]),
        helper.make_tensor("b", TensorProto.INT64, [], [2]),
    ]
    graph = helper.make_graph(nodes, "g", [], [cond_out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _run_no_inputs(model)["y"].tolist() == [1.0]
    # a condition only known at run time
    graph = helper.make_graph(
        [if_node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [cond_out]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(kiln.KilnError, match=r"If's condition must be known while parsing"):
        kiln.onnx.parse(model)
    # a loop of too many iterations to unroll
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    for trips, expect in ((5, 5.0), (100000, None)):
        graph = helper.make_graph(
            [helper.make_node("Loop", ["M", "", "v0"], ["v"], body=body)],
            "g",
            [],
            [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
            [
                helper.make_tensor("M", TensorProto.INT64, [], [trips]),
                helper.make_tensor("v0", TensorProto.FLOAT, [1], [0.0]),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        if expect is None:
            with pytest.raises(kiln.KilnError, match="more than 4096 iterations to unroll"):
                kiln.onnx.parse(model)
        else:
            assert _run_no_inputs(model)["v"].tolist() == [expect]


def test_operators_defined_as_functions_are_expanded_by_their_definition():
    """HannWindow has no importer; kiln.onnx.parse inlines onnx's function body for it (the
    window length a constant here) and says so; the C++ parser alone refuses it by name."""
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph(
        [
            helper.make_node("HannWindow", ["n"], ["w"], periodic=0),
            helper.make_node("Mul", ["w", "x"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10])],
        [helper.make_tensor("n", TensorProto.INT64, [], [10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    net = kiln.onnx.parse(model)
    assert any(
        "expanded by their ONNX function definitions: HannWindow" in w
        for w in net.onnx_info["warnings"]
    )
    x = np.random.default_rng(5).standard_normal(10).astype(np.float32)
    out, _ = run_engine(net, {"x": x})
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_allclose(out["y"], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(
        kiln.KilnError, match=r"HannWindow, domain 'ai.onnx', opset 17\) is not supported"
    ):
        kiln._C.onnx_parse_bytes(model.SerializeToString(), "", {})


def test_integer_matmuls_stay_exact_past_float32s_integers():
    """MatMulInteger / QLinearMatMul with K = 600 uint8 x int8 products (sums past 2^24 in
    magnitude would round in one float32 matmul): chunked, exact, as onnx's reference."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (3, 600)).astype(np.uint8)
    b = rng.integers(-128, 128, (600, 5)).astype(np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["i"]),
            helper.make_node(
                "QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["q"]
            ),
        ],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 600]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [600, 5]),
        ],
        [
            helper.make_tensor_value_info("i", TensorProto.INT32, [3, 5]),
            helper.make_tensor_value_info("q", TensorProto.UINT8, [3, 5]),
        ],
        [
            helper.make_tensor("az", TensorProto.UINT8, [], [3]),
            helper.make_tensor("bz", TensorProto.INT8, [], [-2]),
            helper.make_tensor("as", TensorProto.FLOAT, [], [0.02]),
            helper.make_tensor("bs", TensorProto.FLOAT, [], [0.01]),
            helper.make_tensor("ys", TensorProto.FLOAT, [], [30.0]),
            helper.make_tensor("yz", TensorProto.UINT8, [], [128]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    want = ReferenceEvaluator(model).run(None, {"a": a, "b": b})
    got = kiln.onnx.backend.prepare(model).run([a, b])
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.int32 and got[1].dtype == np.uint8


def test_external_data_loads_and_bad_locations_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "weights.bin").exists()
    x = rng.standard_normal((2, 64)).astype(np.float32)
    out, _ = run_engine(kiln.onnx.parse(path), {"x": x})
    np.testing.assert_allclose(out["y"], x @ w, rtol=1e-5, atol=1e-5)
    # bytes need base_dir for the external file
    raw = path.read_bytes()
    with pytest.raises(kiln.KilnError, match="external data"):
        kiln.onnx.parse(raw)
    out, _ = run_engine(kiln.onnx.parse(raw, base_dir=tmp_path), {"x": x})
    np.testing.assert_allclose(out["y"], x @ w, rtol=1e-5, atol=1e-5)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(kiln.KilnError, match="cannot open external data file"):
        kiln.onnx.parse(path)
    # a location outside the model's folder is refused
    loaded = onnx.load(path, load_external_data=False)
    for kv in loaded.graph.initializer[0].external_data:
        if kv.key == "location":
            kv.value = "../../etc/passwd"
    with pytest.raises(kiln.KilnError, match="leaves the model's folder"):
        kiln.onnx.parse(loaded.SerializeToString(), base_dir=tmp_path)


def test_unsupported_operator_names_the_node_op_domain_and_opset():
    model = small_model(op="Relu")
    model.graph.node[0].op_type = "FancyOp"
    with pytest.raises(
        kiln.KilnError,
        match=r"ONNX node 'act' \(FancyOp, domain 'ai.onnx', opset 17\) is not supported",
    ):
        kiln.onnx.parse(model)
    model = small_model()
    model.graph.node[0].domain = "com.example"
    with pytest.raises(kiln.KilnError, match=r"domain 'com.example'"):
        kiln.onnx.parse(model)


def test_malformed_nodes_found_by_the_fuzzer_give_clean_errors():
    # fuzz/regressions/onnx/qdq-per-axis-scale-with-scalar-zero-point: read dims[0] of a scalar.
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], name="q", axis=1)
    graph = helper.make_graph(
        [q],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT16, [2, 3])],
        [
            helper.make_tensor("s", TensorProto.FLOAT, [3], [0.1, 0.2, 0.3]),
            helper.make_tensor("zp", TensorProto.INT16, [], [3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(kiln.KilnError, match=r"ONNX node 'q'.*must both be 1-D"):
        kiln.onnx.parse(model)
    # fuzz/regressions/onnx/scan-with-fewer-outputs-than-states: a negative count of scan outputs.
    body = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "body",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
    )
    scan = helper.make_node(
        "Scan", ["s0", "s1", "xs"], [], name="scan", num_scan_inputs=1, body=body
    )
    graph = helper.make_graph(
        [scan, helper.make_node("Identity", ["s0"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("s0", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("s1", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("xs", TensorProto.FLOAT, [3, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(kiln.KilnError, match=r"ONNX node 'scan'.*fewer outputs than loop-carried"):
        kiln.onnx.parse(model)


@pytest.mark.parametrize("opset, message", [(29, "newer than 28"), (6, "older than 7")])
def test_opsets_outside_the_supported_range_are_refused_by_number(opset, message):
    with pytest.raises(kiln.KilnError, match=f"opset is {opset}, {message}"):
        kiln.onnx.parse(small_model(opset=opset))


def test_an_operator_whose_meaning_changed_is_refused_in_older_opsets():
    # Softmax before opset 13 flattened to 2-D from `axis`; Kiln imports it from 13 on only.
    model = small_model(opset=11, op="Softmax")
    with pytest.raises(kiln.KilnError, match=r"Kiln imports Softmax from opset 13"):
        kiln.onnx.parse(model)
    kiln.onnx.parse(small_model(opset=11, op="Relu"))  # Relu kept its meaning


def test_malformed_and_truncated_files_give_clean_errors(tmp_path):
    data = small_model().SerializeToString()
    for bad in (data[: len(data) // 2], b"\x00\x01garbage" * 10, b""):
        with pytest.raises(kiln.KilnError):
            kiln.onnx.parse(bad)
    with pytest.raises(kiln.KilnError, match="cannot open ONNX model"):
        kiln.onnx.parse(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="path, bytes or an onnx.ModelProto"):
        kiln.onnx.parse(42)


def test_unknown_attribute_is_refused_not_ignored():
    model = small_model()
    model.graph.node[0].attribute.append(helper.make_attribute("alpha", 0.5))
    with pytest.raises(kiln.KilnError, match="attribute 'alpha' is not supported"):
        kiln.onnx.parse(model)


def test_input_values_make_shape_inputs_constants():
    # A Reshape whose target shape is a graph input: its values are needed while building.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(kiln.KilnError, match=r"ONNX node '#0' \(Reshape.*not known when building"):
        kiln.onnx.parse(model)
    net = kiln.onnx.parse(model, input_values={"shape": np.array([3, 4])})
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    out, _ = run_engine(net, {"x": x})
    np.testing.assert_array_equal(out["y"], x.reshape(3, 4))
    rep = kiln.onnx.backend.prepare(model, "CPU")  # the backend bakes such inputs in
    np.testing.assert_array_equal(rep.run([x, np.array([4, 3])])[0], x.reshape(4, 3))


def _export(model, args, path, dynamo, names, dynamic=None):
    kwargs = {"dynamo": dynamo, "input_names": names}
    if not dynamo:
        kwargs["opset_version"] = 17
        if dynamic:
            kwargs["dynamic_axes"] = dynamic
    torch.onnx.export(model, args, path, **kwargs)


@pytest.fixture(scope="module")
def resnet50():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


class _Bert(torch.nn.Module):
    """transformers' BertModel (default config, random weights), last hidden state."""

    def __init__(self):
        super().__init__()
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        self.bert = transformers.BertModel(transformers.BertConfig()).eval()

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).last_hidden_state


@pytest.fixture(scope="module")
def bert():
    return _Bert().eval()


def _exporters():
    exporters = [pytest.param(False, id="torchscript-exporter")]
    try:
        import onnxscript  # noqa: F401

        exporters.append(pytest.param(True, id="dynamo-exporter"))
    except ImportError:
        exporters.append(
            pytest.param(
                True, id="dynamo-exporter", marks=pytest.mark.skip(reason="needs onnxscript")
            )
        )
    return exporters


@pytest.mark.parametrize("dynamo", _exporters())
def test_resnet50_matches_onnxruntime(resnet50, dynamo, tmp_path):
    x = torch.randn(1, 3, 224, 224)
    path = tmp_path / "resnet50.onnx"
    _export(resnet50, (x,), path, dynamo, ["x"])
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )[0]
    net = kiln.onnx.parse(path)
    out, plan = run_engine(
        net,
        {"x": x.numpy()},
        profile={"x": ([1, 3, 224, 224],) * 3} if -1 in net.inputs[0].shape else None,
    )
    assert cosine(out[net.outputs[0].name], ref) >= 0.99999


@pytest.mark.parametrize("dynamo", _exporters())
def test_bert_matches_onnxruntime_with_dynamic_batch_and_sequence(bert, dynamo, tmp_path):
    ids = torch.randint(0, 30000, (2, 16))
    path = tmp_path / "bert.onnx"
    _export(
        bert, (ids,), path, dynamo, ["input_ids"], dynamic={"input_ids": {0: "batch", 1: "seq"}}
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net = kiln.onnx.parse(path)
    shapes = [(2, 16)]
    profile = None
    if -1 in net.inputs[0].shape:
        profile = {"input_ids": ([1, 4], [2, 16], [4, 32])}
        shapes.append((3, 9))
    for shape in shapes:
        ids = torch.randint(0, 30000, shape)
        ref = sess.run(None, {"input_ids": ids.numpy()})[0]
        out, plan = run_engine(net, {"input_ids": ids.numpy()}, profile=profile)
        assert cosine(out[net.outputs[0].name], ref) >= 0.99999, shape
    # The written-out attention (MatMul, scale, mask, Softmax, MatMul) runs as attention layers.
    got = [layer["op"] for layer in plan.layers()]
    assert "softmax" not in got and got.count("attention") + got.count("packed_attention") == 12, (
        got
    )
    # The exported GELU (either exporter's grouping of x * 0.5 * (1 + erf(x / sqrt(2)))) joins
    # the FFN's first GEMM.
    gelus = [la for la in plan.layers() if la.get("attrs", {}).get("activation") == "gelu"]
    assert len(gelus) == 12 and {la["op"] for la in gelus} == {"fully_connected"}, got
    if -1 not in net.inputs[0].shape:
        # Static shapes (the dynamo exporter here): the key's reshape/transpose/reshape chain
        # reads as the projection's [B, S, H, D] too, so each layer's attention packs onto the
        # fused QKV projection and no transpose is left to copy.
        assert got.count("packed_attention") == 12 and "transpose" not in got, got


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["resnet50", "bert"])
def test_fp16_cuda_builds_match_onnxruntime(which, resnet50, bert, tmp_path):
    path = tmp_path / f"{which}.onnx"
    if which == "resnet50":
        x = torch.randn(1, 3, 224, 224)
        _export(resnet50, (x,), path, False, ["x"])
        feed = {"x": x.numpy()}
    else:
        ids = torch.randint(0, 30000, (2, 16))
        _export(bert, (ids,), path, False, ["input_ids"])
        feed = {"input_ids": ids.numpy()}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    net = kiln.onnx.parse(path)
    out, _ = run_engine(net, feed, device="cuda", precisions=["fp16"])
    assert cosine(out[net.outputs[0].name], ref) >= 0.999


def test_cpp_example_makes_the_same_plan_as_python(tmp_path):
    # examples/onnx/onnx_to_plan.cpp parses and builds from C++ alone; Python's parse and build of
    # the same file give the same plan bytes (reference backend: deterministic).
    import os
    import subprocess
    from pathlib import Path

    build = Path(os.environ.get("KILN_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
    program = build / "examples" / "kiln_onnx_to_plan"
    assert program.exists(), f"{program} is missing: build Kiln first (tools/build.sh)"
    model = small_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "cpp.plan"
    run = subprocess.run(
        [str(program), str(path), str(out), "--target", "reference", "--shapes", "x:1x4:3x4:8x4"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "opset 17" in run.stdout
    config = kiln.BuilderConfig(device="cpu")
    config.add_optimization_profile({"x": ([1, 4], [3, 4], [8, 4])})
    plan = kiln.Builder().build(kiln.onnx.parse(path), config)
    assert bytes(plan.serialize()) == out.read_bytes()
    bad = subprocess.run(
        [str(program), str(tmp_path / "none.onnx"), str(out)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "cannot open ONNX model" in bad.stderr


def test_cli_builds_a_plan_from_an_onnx_file(tmp_path):
    from kiln.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(small_model(), path)
    out = tmp_path / "m.plan"
    assert (
        main(["onnx", str(path), "-o", str(out), "--device", "cpu", "--shapes", "x:1x4:3x4:8x4"])
        == 0
    )
    assert kiln.Plan.load(str(out)).layers()
    # a dynamic input without a range, and a malformed range, are refused with what to do
    assert main(["onnx", str(path), "-o", str(out), "--device", "cpu"]) == 2
    assert main(["onnx", str(path), "-o", str(out), "--device", "cpu", "--shapes", "x:1x4"]) == 2
