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

    def _shape_layer(self, op: str, x: TensorLike, shape, name: str) -> Layer:
        """reshape / expand with the target shape as a list of ints or as a tracked int tensor."""
        if isinstance(shape, Tensor | Layer):
            return self.add_layer(op, [x, shape], {}, name)
        return self.add_layer(op, [x], {"shape": [int(d) for d in shape]}, name)

    def add_reshape(self, x: TensorLike, shape, name: str = "") -> Layer:
        """torch.reshape. `shape`: ints (one -1 is inferred, 0 is a zero-size dim), or a 1-D
        int32/int64 tensor computed from shapes and constants (shape, slice, concat, integer
        elementwise), so the target may depend on dynamic dims."""
        return self._shape_layer("reshape", x, shape, name)

    def add_transpose(self, x: TensorLike, perm: Sequence[int], name: str = "") -> Layer:
        """torch.permute: output dim d is input dim perm[d] (negatives count from the end)."""
        return self.add_layer("transpose", [x], {"perm": [int(p) for p in perm]}, name)

    def add_flatten(
        self, x: TensorLike, start_dim: int = 0, end_dim: int = -1, name: str = ""
    ) -> Layer:
        """torch.flatten: dims start_dim..end_dim merged into one."""
        return self.add_layer(
            "flatten", [x], {"start_dim": int(start_dim), "end_dim": int(end_dim)}, name
        )

    def add_squeeze(self, x: TensorLike, axes: Sequence[int], name: str = "") -> Layer:
        """Removes the size-1 dims `axes` (a dynamic one is checked when the engine runs)."""
        return self.add_layer("squeeze", [x], {"axes": [int(a) for a in axes]}, name)

    def add_unsqueeze(self, x: TensorLike, axes: Sequence[int], name: str = "") -> Layer:
        """Inserts size-1 dims at `axes`, positions in the output (negative from its end)."""
        return self.add_layer("unsqueeze", [x], {"axes": [int(a) for a in axes]}, name)

    def add_expand(self, x: TensorLike, shape, name: str = "") -> Layer:
        """torch.expand: -1 keeps a dim, new leading dims are allowed, size-1 dims broadcast.
        `shape`: ints or a tracked 1-D int tensor, as for add_reshape."""
        return self._shape_layer("expand", x, shape, name)

    def add_shape(self, x: TensorLike, name: str = "") -> Layer:
        """Shape-of: an int64 [rank] tensor of x's dims, tracked on the host for shape math."""
        return self.add_layer("shape", [x], {}, name)

    def add_concat(self, inputs: Sequence[TensorLike], axis: int = 0, name: str = "") -> Layer:
        """torch.cat along `axis`: 1 to 1024 inputs of one dtype, other dims equal."""
        return self.add_layer("concat", list(inputs), {"axis": int(axis)}, name)

    def add_slice(
        self,
        x: TensorLike,
        axes: Sequence[int],
        starts: Sequence[int],
        ends: Sequence[int],
        steps: Sequence[int] | None = None,
        name: str = "",
    ) -> Layer:
        """x[starts[i]:ends[i]:steps[i]] along axes[i], with Python slice semantics (negative
        indices from the end, out-of-range values clamp; use 2**63 - 1 for "to the end").
        Steps must be >= 1."""
        attrs = {
            "axes": [int(a) for a in axes],
            "starts": [int(s) for s in starts],
            "ends": [int(e) for e in ends],
        }
        if steps is not None:
            attrs["steps"] = [int(s) for s in steps]
        return self.add_layer("slice", [x], attrs, name)

    def add_split(
        self, x: TensorLike, sizes: Sequence[int], axis: int = 0, name: str = ""
    ) -> Layer:
        """torch.split with explicit sizes: output i has sizes[i] along `axis` (layer.outputs)."""
        return self.add_layer(
            "split", [x], {"axis": int(axis), "sizes": [int(s) for s in sizes]}, name
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
