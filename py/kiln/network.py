"""The native network-building API (TensorRT-familiar names, Pythonic signatures).

Layers are added with ``Network.add_*``; each returns a :class:`Layer`. Wherever a tensor is
expected, a single-output Layer may be passed instead of ``layer.output``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kiln import _C
from kiln.dtypes import as_numpy, dtype_name


class Tensor:
    """A tensor of a Network: an input, a constant (weights) or a layer's output."""

    def __init__(self, network: Network, tensor_id: int):
        self._network = network
        self.id = tensor_id

    @property
    def name(self) -> str:
        return self._network._net.tensor_info(self.id)[0]

    @property
    def dtype(self) -> str:
        return self._network._net.tensor_info(self.id)[1]

    @property
    def shape(self) -> tuple[int, ...]:
        """Dims, with -1 for a dynamic dim."""
        return tuple(self._network._net.tensor_info(self.id)[2])

    @property
    def kind(self) -> str:
        return self._network._net.tensor_info(self.id)[3]

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.dtype}, {list(self.shape)}, {self.kind})"


class Layer:
    """A layer of a Network, with its outputs."""

    def __init__(self, network: Network, name: str, op: str, output_ids: Sequence[int]):
        self.name = name
        self.op = op
        self.outputs = [Tensor(network, i) for i in output_ids]

    @property
    def output(self) -> Tensor:
        if len(self.outputs) != 1:
            raise ValueError(
                f"layer {self.name!r} has {len(self.outputs)} outputs; use .outputs[i]"
            )
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, {self.op})"


TensorLike = Tensor | Layer


class Network:
    """A network definition: inputs, constants, layers and marked outputs."""

    def __init__(self):
        self._net = _C.Network()

    def _id(self, t) -> int:
        """Id of a Tensor or single-output Layer; arrays and torch tensors become constants."""
        if isinstance(t, Layer):
            t = t.output
        if isinstance(t, Tensor):
            if t._network is not self:
                raise TypeError(f"{t!r} belongs to another network")
            return t.id
        if hasattr(t, "__array__") or hasattr(t, "__array_interface__"):
            return self.add_constant(t).id
        raise TypeError(
            f"expected a Tensor, a Layer, a numpy array or a torch tensor, got {type(t).__name__}"
        )

    def add_input(self, name: str, dtype, shape: Sequence[int]) -> Tensor:
        """An input binding; a dim of -1 is dynamic and needs an optimization profile."""
        return Tensor(self, self._net.add_input(name, dtype_name(dtype), list(shape)))

    def add_constant(self, value, name: str = "") -> Tensor:
        """Weights from a numpy array, a torch tensor, or anything numpy can convert."""
        arr, dtype = as_numpy(value)
        return Tensor(
            self,
            self._net.add_constant(name, dtype, list(arr.shape), arr.reshape(-1).view("uint8")),
        )

    def add_layer(
        self, op: str, inputs: Sequence[TensorLike], attrs: Mapping | None = None, name: str = ""
    ) -> Layer:
        """Any registered op by name, with its attributes (see docs/ops.md)."""
        layer_name, outputs = self._net.add_layer(
            op, [self._id(t) for t in inputs], dict(attrs or {}), name
        )
        return Layer(self, layer_name, op, outputs)

    def add_matmul(
        self,
        a: TensorLike,
        b: TensorLike,
        transpose_a: bool = False,
        transpose_b: bool = False,
        name: str = "",
    ) -> Layer:
        return self.add_layer(
            "matmul",
            [a, b],
            {"transpose_a": int(transpose_a), "transpose_b": int(transpose_b)},
            name,
        )

    def add_elementwise(self, a: TensorLike, b: TensorLike, op: str, name: str = "") -> Layer:
        """op: "add", "sub", "mul", "div", "max", "min" or "pow"; NumPy broadcasting."""
        return self.add_layer("elementwise", [a, b], {"op": op}, name)

    def add_activation(self, x: TensorLike, type: str, alpha: float = 0.0, name: str = "") -> Layer:  # noqa: A002
        """type: "relu", "sigmoid", "tanh" or "leaky_relu" (slope `alpha`)."""
        return self.add_layer("activation", [x], {"type": type, "alpha": float(alpha)}, name)

    def add_identity(self, x: TensorLike, name: str = "") -> Layer:
        return self.add_layer("identity", [x], {}, name)

    def add_gather(
        self, data: TensorLike, indices: TensorLike, axis: int = 0, name: str = ""
    ) -> Layer:
        """numpy.take / ONNX Gather: data.shape[:axis] + indices.shape + data.shape[axis+1:].

        indices: int32/int64 of any rank (0-d removes the axis); negative ones count from the end.
        """
        return self.add_layer("gather", [data, indices], {"axis": int(axis)}, name)

    def add_gather_elements(
        self, data: TensorLike, index: TensorLike, axis: int = 0, name: str = ""
    ) -> Layer:
        """torch.gather: out[..., i, ...] = data[..., index[..., i, ...], ...] along `axis`."""
        return self.add_layer("gather_elements", [data, index], {"axis": int(axis)}, name)

    def add_embedding(self, weight: TensorLike, indices: TensorLike, name: str = "") -> Layer:
        """Rows of weight [num, dim] picked by int32/int64 indices: indices.shape + [dim]."""
        return self.add_layer("embedding", [weight, indices], {}, name)

    def add_pad(
        self,
        x: TensorLike,
        pads: Sequence[int],
        mode: str = "constant",
        value: float = 0.0,
        name: str = "",
    ) -> Layer:
        """torch.nn.functional.pad: pads = (last_before, last_after, prev_before, ...).

        mode: "constant" (fill with `value`), "reflect" or "replicate"; negative pads crop.
        """
        return self.add_layer(
            "pad", [x], {"pads": [int(p) for p in pads], "mode": mode, "value": float(value)}, name
        )

    def add_cumsum(
        self,
        x: TensorLike,
        axis: int,
        exclusive: bool = False,
        reverse: bool = False,
        name: str = "",
    ) -> Layer:
        """Running sum along `axis` (ONNX CumSum); the output keeps x's dtype."""
        return self.add_layer(
            "cumsum",
            [x],
            {"axis": int(axis), "exclusive": int(exclusive), "reverse": int(reverse)},
            name,
        )

    def add_topk(
        self,
        x: TensorLike,
        k: int,
        axis: int = -1,
        largest: bool = True,
        sorted: bool = True,  # noqa: A002
        name: str = "",
    ) -> Layer:
        """torch.topk: a layer with two outputs, values (x's dtype) and indices (int64)."""
        return self.add_layer(
            "topk",
            [x],
            {"k": int(k), "axis": int(axis), "largest": int(largest), "sorted": int(sorted)},
            name,
        )

    def mark_output(self, t: TensorLike, name: str = "") -> Tensor:
        """Makes `t` a network output; `name` (optional) becomes its binding name."""
        tid = self._id(t)
        self._net.mark_output(tid, name)
        return Tensor(self, tid)

    @property
    def inputs(self) -> list[Tensor]:
        return [Tensor(self, i) for i in self._net.inputs]

    @property
    def outputs(self) -> list[Tensor]:
        return [Tensor(self, i) for i in self._net.outputs]

    @property
    def layers(self) -> list[tuple]:
        """(name, op, input ids, output ids, attributes) per layer, in order."""
        return self._net.layers()


class BuilderConfig(_C.BuilderConfig):
    """Build options: optimization profiles, workspace limit, optimization level, target.

    target: "auto" (the GPU when one is visible, else the CPU reference backend), "cuda" or
    "reference".
    """

    def __init__(
        self,
        *,
        target: str = "auto",
        workspace_bytes: int | None = None,
        optimization_level: int | None = None,
    ):
        super().__init__()
        self.target = target
        if workspace_bytes is not None:
            self.workspace_bytes = workspace_bytes
        if optimization_level is not None:
            self.optimization_level = optimization_level

    def add_optimization_profile(self, ranges: Mapping[str, Sequence[Sequence[int]]]) -> int:
        """ranges: input name -> (min_shape, opt_shape, max_shape). Returns the profile index."""
        converted = {}
        for name, r in ranges.items():
            if len(r) != 3:
                raise ValueError(f"profile for {name!r} needs (min, opt, max) shapes, got {r!r}")
            converted[name] = tuple(list(s) for s in r)
        return super().add_optimization_profile(converted)


class Builder:
    """Turns a Network and a BuilderConfig into a Plan (see core/builder.cpp for the passes)."""

    def build(self, network: Network, config: BuilderConfig | None = None) -> _C.Plan:
        return _C.Builder().build(network._net, config if config is not None else BuilderConfig())
