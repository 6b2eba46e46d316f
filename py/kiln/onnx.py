"""ONNX models into Kiln: ``kiln.onnx.parse`` and a backend for onnx's backend test harness.

    net = kiln.onnx.parse("model.onnx")                 # or bytes, or an onnx.ModelProto
    config = kiln.BuilderConfig(device="cuda", precisions=["fp16"])
    config.add_optimization_profile({"input": ([1, 3, 224, 224], [8, 3, 224, 224], [32, 3, 224, 224])})
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

__all__ = ["parse", "supported_operators", "backend", "KilnBackend", "KilnBackendRep"]

# ONNX element types whose binding Kiln holds in another dtype (ParseInfo.converted_bindings).
_NUMPY_OF_ONNX = {
    "float64": np.float64,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
}


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


def parse(model, base_dir: str | os.PathLike | None = None) -> Network:
    """Parses an ONNX model into a :class:`kiln.Network`.

    model: a path (str or os.PathLike), the model's bytes, or an ``onnx.ModelProto``.
    base_dir: where external data files are (default: the model file's folder; for bytes and
    ModelProtos, needed only when the model keeps weights in external files).

    The network's ``onnx_info`` holds the model's opset, producer, parser warnings and the
    bindings whose ONNX type Kiln holds in another dtype (float64 in float32, ...).
    """
    _require_parser()
    base = os.fspath(base_dir) if base_dir is not None else ""
    if isinstance(model, (str, os.PathLike)):
        c_net, info = _C.onnx_parse_file(os.fspath(model), base)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        c_net, info = _C.onnx_parse_bytes(bytes(model), base)
    elif hasattr(model, "SerializeToString"):
        c_net, info = _C.onnx_parse_bytes(model.SerializeToString(), base)
    else:
        raise TypeError(
            f"kiln.onnx.parse takes a path, bytes or an onnx.ModelProto, not {type(model).__name__}"
        )
    net = Network.__new__(Network)
    net._net = c_net
    net.onnx_info = info
    return net


class KilnBackendRep(_BackendRep):
    """A prepared model: one engine built for the inputs' shapes (onnx.backend.base.BackendRep)."""

    def __init__(self, net: Network, device: str, precisions: Sequence[str] = ()):
        from kiln.network import Builder, BuilderConfig

        self._net = net
        self._device = device
        self._inputs = [t.name for t in net.inputs]
        self._outputs = [t.name for t in net.outputs]
        self._onnx_types = {name: onnx_type for name, onnx_type, _ in net.onnx_info["converted_bindings"]}
        self._precisions = list(precisions)
        self._builder = Builder()
        self._config_type = BuilderConfig
        self._context = None
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def _prepare(self, arrays: Mapping[str, np.ndarray]) -> None:
        shapes = {k: tuple(v.shape) for k, v in arrays.items()}
        if self._context is not None and shapes == self._shapes:
            return
        from kiln.engine import Engine

        config = self._config_type(device=self._device, precisions=self._precisions)
        if any(-1 in t.shape for t in self._net.inputs):
            config.add_optimization_profile({k: (list(s), list(s), list(s)) for k, s in shapes.items()})
        plan = self._builder.build(self._net, config)
        self._context = Engine(plan, device=self._device).create_execution_context()
        self._shapes = shapes

    def run(self, inputs, **kwargs) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            feed = dict(inputs)
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            if len(inputs) != len(self._inputs):
                raise ValueError(
                    f"the model takes {len(self._inputs)} inputs ({self._inputs}), got {len(inputs)}"
                )
            feed = dict(zip(self._inputs, inputs))
        arrays = {}
        for t in self._net.inputs:
            if t.name not in feed:
                raise ValueError(f"missing input {t.name!r}")
            a = np.ascontiguousarray(np.asarray(feed[t.name]))
            want = np.dtype(t.dtype) if t.dtype != "bfloat16" else a.dtype
            if t.name in self._onnx_types or a.dtype != want:
                a = a.astype(want)
            arrays[t.name] = a
        self._prepare(arrays)
        out = self._context.execute(arrays)
        results = []
        for name in self._outputs:
            y = np.asarray(out[name])
            if name in self._onnx_types:
                y = y.astype(_NUMPY_OF_ONNX[self._onnx_types[name]])
            results.append(y)
        return tuple(results)


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
        net = parse(model)
        return KilnBackendRep(net, _device_of(device), cls.precisions)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("Kiln runs whole models: use prepare() or run_model()")

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
