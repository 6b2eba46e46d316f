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

    def _spatial(self, x_id: int, value) -> list[int]:
        """An int or a sequence of ints, as one int per spatial dim of tensor x_id ([N, C, ...])."""
        rank = len(Tensor(self, x_id).shape) - 2
        if isinstance(value, int):
            return [value] * max(rank, 0)
        return [int(v) for v in value]

    def add_convolution(
        self,
        x: TensorLike,
        weight: TensorLike,
        bias: TensorLike | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        allow_tf32: bool = False,
        name: str = "",
    ) -> Layer:
        """torch's conv1d/2d/3d: x [N, C, *spatial], weight [K, C/groups, *kernel], bias [K].

        stride / padding (symmetric) / dilation: an int for every spatial dim or one per dim.
        allow_tf32: let float32 use TF32 tensor cores on the GPU (default: strict FP32).
        """
        xid = self._id(x)
        inputs = [Tensor(self, xid), weight] + ([bias] if bias is not None else [])
        attrs = {
            "strides": self._spatial(xid, stride),
            "pads": self._spatial(xid, padding),
            "dilations": self._spatial(xid, dilation),
            "groups": int(groups),
            "allow_tf32": int(allow_tf32),
        }
        return self.add_layer("convolution", inputs, attrs, name)

    def add_deconvolution(
        self,
        x: TensorLike,
        weight: TensorLike,
        bias: TensorLike | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        allow_tf32: bool = False,
        name: str = "",
    ) -> Layer:
        """torch's conv_transpose1d/2d/3d: x [N, C, *spatial], weight [C, K/groups, *kernel].

        output_padding must be smaller than the stride.
        """
        xid = self._id(x)
        inputs = [Tensor(self, xid), weight] + ([bias] if bias is not None else [])
        attrs = {
            "strides": self._spatial(xid, stride),
            "pads": self._spatial(xid, padding),
            "output_padding": self._spatial(xid, output_padding),
            "dilations": self._spatial(xid, dilation),
            "groups": int(groups),
            "allow_tf32": int(allow_tf32),
        }
        return self.add_layer("deconvolution", inputs, attrs, name)

    def add_pooling(
        self,
        x: TensorLike,
        type: str,  # noqa: A002
        kernel: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        name: str = "",
    ) -> Layer:
        """torch's max_pool / avg_pool (1d, 2d, 3d); type: "max" or "avg".

        stride defaults to the kernel; dilation applies to max pooling, count_include_pad and
        divisor_override to avg pooling.
        """
        xid = self._id(x)
        attrs = {
            "type": type,
            "kernel": self._spatial(xid, kernel),
            "pads": self._spatial(xid, padding),
            "ceil_mode": int(ceil_mode),
        }
        if stride is not None:
            attrs["strides"] = self._spatial(xid, stride)
        if type == "max" or dilation != 1:  # a dilated avg pooling is refused by the schema
            attrs["dilations"] = self._spatial(xid, dilation)
        if type != "max":
            attrs["count_include_pad"] = int(count_include_pad)
        if divisor_override is not None:
            attrs["divisor_override"] = int(divisor_override)
        return self.add_layer("pooling", [Tensor(self, xid)], attrs, name)

    def add_adaptive_pooling(
        self,
        x: TensorLike,
        type: str,  # noqa: A002
        output_size: int | Sequence[int],
        name: str = "",
    ) -> Layer:
        """torch's adaptive_max_pool / adaptive_avg_pool (1d, 2d, 3d); type: "max" or "avg"."""
        xid = self._id(x)
        attrs = {"type": type, "output_size": self._spatial(xid, output_size)}
        return self.add_layer("adaptive_pooling", [Tensor(self, xid)], attrs, name)

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
