"""ONNX models into Kiln: ``kiln.onnx.parse`` and a backend for onnx's backend test harness.

    net = kiln.onnx.parse("model.onnx")                 # or bytes, or an onnx.ModelProto
    config = kiln.BuilderConfig(device="cuda", precisions=["fp16"])
    config.add_optimization_profile({"x": ([1, 3, 224, 224], [8, 3, 224, 224],
                                     [32, 3, 224, 224])})
    plan = kiln.Builder().build(net, config)

    rep = kiln.onnx.backend.prepare(model_proto, device="CUDA")   # onnx.backend.base.Backend
    outputs = rep.run([x])

The parser is C++ (``onnx_parser/``, ``kiln::onnx::parse`` for C++ applications); this module
adds the Python spellings and the backend. ``docs/onnx.md`` lists the operators and the pass rate
over onnx's node tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from kiln import _C
from kiln.network import Network

try:  # the backend is an onnx.backend.base.Backend when onnx is installed
    from onnx.backend.base import Backend as _Backend
    from onnx.backend.base import BackendRep as _BackendRep
except ImportError:  # pragma: no cover - onnx is optional for parse()
    _Backend = _BackendRep = object

__all__ = [
    "parse",
    "weights",
    "refit",
    "supported_operators",
    "backend",
    "KilnBackend",
    "KilnBackendRep",
]

# ONNX element types whose binding Kiln holds in another dtype (ParseInfo.converted_bindings),
# by numpy's name (ml_dtypes' for the narrow types) -> the dtype Kiln holds it in. Narrow floats
# are held as float32 and narrow integers as int32, their values exactly.
_HELD = {
    "float64": "float32",
    "uint8": "int32",
    "int16": "int32",
    "uint16": "int32",
    "uint32": "int64",
    "uint64": "int64",
    "float8_e4m3fn": "float32",
    "float8_e4m3fnuz": "float32",
    "float8_e5m2": "float32",
    "float8_e5m2fnuz": "float32",
    "float4_e2m1fn": "float32",
    "int4": "int32",
    "uint4": "int32",
    "int2": "int32",
    "uint2": "int32",
}


def _numpy_type(name: str):
    """numpy's dtype of an ONNX type Kiln holds in another dtype (ml_dtypes for narrow ones)."""
    if hasattr(np, name):
        return np.dtype(name)
    import ml_dtypes  # a dependency of onnx

    return np.dtype(getattr(ml_dtypes, name))


def _require_parser() -> None:
    if not hasattr(_C, "onnx_parse_file"):
        raise RuntimeError(
            "this Kiln was built without its ONNX parser: install protobuf's C++ library and "
            "compiler (apt-get install libprotobuf-dev protobuf-compiler) and the onnx Python "
            "package (pip install onnx), then rebuild (python setup.py build_ext --inplace)"
        )


def supported_operators() -> list[str]:
    """The ONNX operators (default domain) the parser imports."""
    _require_parser()
    return list(_C.onnx_supported_operators())


_SUPPORTED_NUMPY = {"float32", "float16", "bfloat16", "int8", "int32", "int64", "bool", *_HELD}


def _held(a: np.ndarray) -> tuple[str, np.ndarray]:
    """(Kiln dtype name, array) of a numpy value as Kiln holds it; bfloat16 stays as its bits."""
    name = a.dtype.name
    if a.dtype == object or name not in _SUPPORTED_NUMPY:
        raise TypeError(
            f"numpy dtype {a.dtype} has no Kiln dtype (Kiln holds float32/16, bfloat16, float64 "
            "as float32, int8/16/32/64, uint8/16/32/64, bool, and float8, float4, int4/2 and "
            "uint4/2 as float32 or int32)"
        )
    if name == "bfloat16":
        return "bfloat16", a
    held = _HELD.get(name, name)
    return held, a.astype(held) if held != name else a


def parse(
    model,
    base_dir: str | os.PathLike | None = None,
    input_values: Mapping[str, object] | None = None,
) -> Network:
    """Parses an ONNX model into a :class:`kiln.Network`.

    model: a path (str or os.PathLike), the model's bytes, or an ``onnx.ModelProto``.
    base_dir: where external data files are (default: the model file's folder; for bytes and
    ModelProtos, needed only when the model keeps weights in external files).
    input_values: {input name: array} for graph inputs whose values the network needs while
    building (TensorRT's shape tensors: a Reshape target, Range bounds or Reduce axes fed as
    inputs); each becomes a constant of that value.

    The network's ``onnx_info`` holds the model's opset, producer, parser warnings and the
    bindings whose ONNX type Kiln holds in another dtype (float64 in float32, ...).

    An operator the C++ parser lacks but that ONNX defines as a function of other operators
    (SwiGLU, the window functions, AffineGrid, LinearAttention, CausalConvWithState,
    FlexAttention, ...) is expanded by onnx's own definition and the model parsed again (the
    warnings say which); the C++ API (kiln::onnx::parse) does not expand.
    """
    _require_parser()
    base = os.fspath(base_dir) if base_dir is not None else ""
    values = {}
    for name, value in (input_values or {}).items():
        held, a = _held(np.asarray(value, order="C"))
        values[name] = (held, list(a.shape), a.tobytes())
    if not isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview)) and not hasattr(
        model, "SerializeToString"
    ):
        raise TypeError(
            f"kiln.onnx.parse takes a path, bytes or an onnx.ModelProto, not {type(model).__name__}"
        )
    try:
        c_net, info = _parse(model, base, values)
    except _C.KilnError as error:
        # An operator the parser lacks that ONNX defines as a function of other operators
        # (SwiGLU, the window functions, AffineGrid, LinearAttention, ...): its definition
        # inlined (onnx's own), then parsed again.
        expanded = _expand_functions(model, str(error))
        if expanded is None:
            raise
        if not base and isinstance(model, (str, os.PathLike)):
            base = os.path.dirname(os.path.abspath(os.fspath(model)))
        try:
            c_net, info = _C.onnx_parse_bytes(expanded[0], base, values)
        except _C.KilnError as again:
            raise _C.KilnError(f"{again} (the model's operators {expanded[1]})") from None
        info["warnings"] = list(info["warnings"]) + [expanded[1]]
    net = Network.__new__(Network)
    net._net = c_net
    net.onnx_info = info
    return net


def _load_model(model, base_dir):
    """An onnx.ModelProto of a path, bytes or a ModelProto, with its external data loaded."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model), load_external_data=True)
    if isinstance(model, (bytes, bytearray, memoryview)):
        model = onnx.load_from_string(bytes(model))
    if base_dir is not None:
        load_external_data_for_model(model, os.fspath(base_dir))
    return model


def weights(model, base_dir: str | os.PathLike | None = None, names=None) -> dict[str, np.ndarray]:
    """{initializer name: array} of an ONNX model's initializers (all, or those in `names`), in
    the dtypes Kiln holds them in (float64 as float32): new values for the weights of an engine
    built from another version of the model (:func:`refit`, ``kiln.Engine.refit``).

    model: a path, bytes or an onnx.ModelProto; base_dir: where its external data files are (a
    path's own folder by default)."""
    from onnx import numpy_helper

    proto = _load_model(model, base_dir)
    wanted = None if names is None else set(names)
    out = {}
    for init in proto.graph.initializer:
        if wanted is None or init.name in wanted:
            out[init.name] = _held(numpy_helper.to_array(init))[1]
    return out


def refit(target, model, base_dir: str | os.PathLike | None = None) -> int:
    """Gives a kiln.Engine or kiln.Plan built from an ONNX model the weights of `model` (the same
    graph with other initializer values: a fine-tuned export), without rebuilding; returns the
    number of weights set. The engine's refittable weights are the model's float initializers of
    more than one element that the parser did not read to decide structure (docs/refit.md);
    ``target.refittable_weights()`` names them. An initializer missing from `model`, or of
    another shape, is refused by name."""
    names = list(target.refittable_weights())
    values = weights(model, base_dir, names)
    missing = sorted(set(names) - values.keys())
    if missing:
        shown = ", ".join(repr(n) for n in missing[:8])
        raise _C.KilnError(
            f"kiln.onnx.refit: the model has no initializer {shown}"
            + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            + ": refit takes a model of the same graph (the initializers the engine was built "
            "from, by name)"
        )
    target.refit(values)
    return len(values)


def _parse(model, base: str, values: dict):
    if isinstance(model, (str, os.PathLike)):
        return _C.onnx_parse_file(os.fspath(model), base, values)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _C.onnx_parse_bytes(bytes(model), base, values)
    return _C.onnx_parse_bytes(model.SerializeToString(), base, values)


_EXPANDED_DOMAIN = "kiln.expanded"


def _expand_functions(model, error: str) -> tuple[bytes, str] | None:
    """The model with every node of an operator the parser lacks, but that ONNX defines as a
    function (a fixed one, or one that depends on the node's attributes and input types), replaced
    by that function's body (onnx.inliner); None when the error is not an unsupported operator or
    nothing can be expanded. Returns the model's bytes and a note for the warnings."""
    if "is not supported by Kiln's ONNX parser" not in error:
        return None
    try:
        import onnx
        import onnx.inliner
    except ImportError:
        return None
    if isinstance(model, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model), load_external_data=False)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto = onnx.load_from_string(bytes(model))
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    supported = set(supported_operators())
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    opsets.setdefault("", opsets.get("ai.onnx", 0))
    try:
        typed = onnx.shape_inference.infer_shapes(proto)
        types = {
            v.name: v.type
            for v in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]
        }
    except Exception:  # noqa: BLE001 (shape inference rejects some valid models; types are optional)
        types = {}
    for init in proto.graph.initializer:
        types.setdefault(
            init.name, onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        )
    expanded = []
    for k, node in enumerate(proto.graph.node):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if domain == "" and node.op_type in supported:
            continue
        function = _function_of(node, domain, opsets.get(domain, 0), types)
        if function is None:
            continue
        function.domain = _EXPANDED_DOMAIN
        function.name = f"{node.op_type}_{k}"
        node.domain, node.op_type = _EXPANDED_DOMAIN, function.name
        proto.functions.append(function)
        expanded.append(function.name.rsplit("_", 1)[0])
    if not expanded:
        return None
    proto.opset_import.append(onnx.helper.make_opsetid(_EXPANDED_DOMAIN, 1))
    inlined = onnx.inliner.inline_local_functions(proto)
    del inlined.opset_import[:]
    inlined.opset_import.extend(o for o in proto.opset_import if o.domain != _EXPANDED_DOMAIN)
    names = ", ".join(sorted(set(expanded)))
    return inlined.SerializeToString(), f"expanded by their ONNX function definitions: {names}"


def _function_of(node, domain: str, opset: int, types: dict):
    """onnx's FunctionProto for `node` (its schema's function at `opset`), or None."""
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None
    # Attributes the node leaves to their defaults: given explicitly, so that the inlined body's
    # references to them resolve.
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            node.attribute.append(attr.default_value)
            node.attribute[-1].name = name
    function = onnx.FunctionProto()
    if schema.has_function:
        body = schema.get_function_with_opset_version(opset) or schema.function_body
        function.CopyFrom(
            body if isinstance(body, onnx.FunctionProto) else onnx.FunctionProto.FromString(body)
        )
        return function
    if schema.has_context_dependent_function:
        inputs = [types.get(name) for name in node.input if name]
        if any(t is None for t in inputs):
            return None
        try:
            data = schema.get_context_dependent_function_with_opset_version(
                opset, node.SerializeToString(), [t.SerializeToString() for t in inputs]
            )
        except Exception:  # noqa: BLE001 (onnx refuses a node it cannot expand)
            return None
        if not data:
            return None
        function.ParseFromString(data)
        return function
    return None


class KilnBackendRep(_BackendRep):
    """A prepared model (onnx.backend.base.BackendRep): an engine built for the inputs' shapes.

    When the network needs the values of some inputs while building (Reshape targets, Range
    bounds, axes fed as inputs), the small inputs (at most 64 elements) are baked in as
    constants, as TensorRT's shape tensors are, and the engine is rebuilt when they change.
    """

    SMALL = 64

    def __init__(self, model, device: str, precisions: Sequence[str] = ()):
        self._model = model.SerializeToString() if hasattr(model, "SerializeToString") else model
        self._device = device
        self._precisions = list(precisions)
        self._inputs = _graph_inputs(self._model)
        self._needs_values = False
        self._error: Exception | None = None
        try:
            self._net = parse(self._model)
        except Exception as e:
            # Perhaps the network needs input values while building (run() supplies them);
            # otherwise this error is raised by run().
            self._net = None
            self._needs_values = True
            self._error = e
        self._key = None
        self._context = None
        self._outputs: list[str] = []
        self._onnx_types: dict[str, str] = {}

    def _build(self, arrays: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]):
        from kiln.engine import Engine
        from kiln.network import Builder, BuilderConfig

        net = parse(self._model, input_values=values) if values else self._net
        config = BuilderConfig(device=self._device, precisions=self._precisions)
        dynamic = [t for t in net.inputs if -1 in t.shape]
        if dynamic:
            config.add_optimization_profile(
                {t.name: (list(arrays[t.name].shape),) * 3 for t in net.inputs}
            )
        plan = Builder().build(net, config)
        self._outputs = [t.name for t in net.outputs]
        self._onnx_types = {n: t for n, t, _ in net.onnx_info["converted_bindings"]}
        self._bound = [t.name for t in net.inputs]
        return Engine(plan, device=self._device).create_execution_context()

    def _prepare(self, arrays: Mapping[str, np.ndarray]) -> None:
        small = {k: a for k, a in arrays.items() if a.size <= self.SMALL}
        key = tuple((k, a.shape, a.dtype.str) for k, a in arrays.items())
        if self._needs_values:
            key += tuple((k, a.tobytes()) for k, a in small.items())
        if self._context is not None and key == self._key:
            return
        if not self._needs_values:
            try:
                self._context = self._build(arrays, {})
                self._key = key
                return
            except Exception:
                if not small:
                    raise
                self._needs_values = True
                key += tuple((k, a.tobytes()) for k, a in small.items())
        if not small and self._error is not None:
            raise self._error
        self._context = self._build(arrays, small)
        self._key = key

    def run(self, inputs, **kwargs) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            feed = dict(inputs)
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            if len(inputs) != len(self._inputs):
                want = f"{len(self._inputs)} inputs ({self._inputs})"
                raise ValueError(f"the model takes {want}, got {len(inputs)}")
            feed = dict(zip(self._inputs, inputs, strict=True))
        if self._error is not None and _cannot_retry(self._error):
            raise self._error
        arrays = {}
        for name in self._inputs:
            if name not in feed:
                raise ValueError(f"missing input {name!r}")
            arrays[name] = np.asarray(feed[name], order="C")
        self._prepare(arrays)
        import torch  # fed as torch tensors (zero-copy), so bfloat16 bindings work both ways

        engine_feed = {}
        for name in self._bound:
            held, a = _held(arrays[name])
            engine_feed[name] = _bfloat16_to_torch(a) if held == "bfloat16" else torch.from_numpy(a)
        out = self._context.execute(engine_feed)
        results = []
        for name in self._outputs:
            y = _to_numpy(out[name])
            if name in self._onnx_types:
                y = y.astype(_numpy_type(self._onnx_types[name]))
            results.append(y)
        return tuple(results)


def _cannot_retry(error: Exception) -> bool:
    """A parse error that input values cannot fix (an operator, a dtype, an opset)."""
    text = str(error)
    return any(
        s in text
        for s in (
            "not supported by Kiln's ONNX parser",
            "which Kiln cannot hold",
            "opset is",
            "is not a tensor",
        )
    )


def _graph_inputs(model) -> list[str]:
    """The model's graph inputs that are not initializers, in order."""
    import onnx

    proto = (
        model
        if hasattr(model, "graph")
        else onnx.load_from_string(bytes(model))
        if not isinstance(model, (str, os.PathLike))
        else onnx.load(os.fspath(model), load_external_data=False)
    )
    inits = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits]


def _bfloat16_to_torch(a: np.ndarray):
    import torch

    return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)


def _to_numpy(y) -> np.ndarray:
    if hasattr(y, "detach"):  # a torch tensor (the engine returns them when fed one)
        import torch

        y = y.detach().cpu()
        if y.dtype == torch.bfloat16:
            import ml_dtypes

            return y.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return y.numpy()
    return np.asarray(y)


def _device_of(device: str) -> str:
    d = str(device).upper()
    if d.startswith("CUDA"):
        return "cuda"
    if d == "CPU":
        return "cpu"
    raise ValueError(f"device {device!r}: Kiln's ONNX backend runs on 'CPU' (reference) or 'CUDA'")


class KilnBackend(_Backend):
    """onnx.backend.base.Backend for Kiln: prepare() parses and builds, run() executes.

    'CPU' runs the reference backend, 'CUDA' the GPU engine.
    """

    precisions: Sequence[str] = ()

    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return True

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> KilnBackendRep:
        return KilnBackendRep(model, _device_of(device), cls.precisions)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """Runs one NodeProto on `inputs` (arrays, in the node's input order): the node becomes a
        one-node model (the default domain's newest opset Kiln parses) and runs as run_model."""
        import onnx
        from onnx import helper

        arrays = [np.asarray(a) for a in inputs]
        graph_inputs = [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)
            )
            for name, a in zip(node.input, arrays, strict=False)
            if name
        ]
        outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = helper.make_graph([node], "kiln_run_node", graph_inputs, outputs)
        opset = min(onnx.defs.onnx_opset_version(), _C.onnx_max_opset)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return cls.run_model(
            model, [a for name, a in zip(node.input, arrays, strict=False) if name], device
        )

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            d = _device_of(device)
        except ValueError:
            return False
        if d == "cuda":
            return _C.cuda_device_count() > 0
        return True


backend = KilnBackend
