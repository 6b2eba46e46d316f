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

    def add_reduce(
        self,
        x: TensorLike,
        op: str,
        axes: Sequence[int] = (),
        keepdim: bool = False,
        correction: int | None = None,
        name: str = "",
    ) -> Layer:
        """op: "sum", "mean", "max", "min", "prod" or "var" over `axes` (negative count from the
        end; empty = all axes). `correction` (var only, default 1) as in torch.var."""
        attrs = {"op": op, "axes": [int(a) for a in axes], "keepdim": int(keepdim)}
        if correction is not None:
            attrs["correction"] = int(correction)
        return self.add_layer("reduce", [x], attrs, name)

    def add_arg_reduce(
        self, x: TensorLike, op: str, axis: int, keepdim: bool = False, name: str = ""
    ) -> Layer:
        """op: "argmax" or "argmin" along `axis`; int64 indices, the first one on ties."""
        return self.add_layer(
            "arg_reduce", [x], {"op": op, "axis": int(axis), "keepdim": int(keepdim)}, name
        )

    def add_softmax(
        self, x: TensorLike, axis: int = -1, log: bool = False, name: str = ""
    ) -> Layer:
        """softmax (log=True: log_softmax) along `axis`."""
        return self.add_layer("softmax", [x], {"axis": int(axis), "log": int(log)}, name)

    def add_batch_norm(
        self,
        x: TensorLike,
        scale: TensorLike,
        bias: TensorLike,
        mean: TensorLike,
        var: TensorLike,
        eps: float = 1e-5,
        name: str = "",
    ) -> Layer:
        """Inference batch norm of x [N, C, ...] with per-channel scale, bias, mean and var [C]."""
        return self.add_layer("batch_norm", [x, scale, bias, mean, var], {"eps": float(eps)}, name)

    def add_layer_norm(
        self,
        x: TensorLike,
        weight: TensorLike | None = None,
        bias: TensorLike | None = None,
        normalized_ndim: int = 1,
        eps: float = 1e-5,
        name: str = "",
    ) -> Layer:
        """Layer norm over the last `normalized_ndim` dims; a bias needs a weight."""
        return self.add_layer(
            "layer_norm",
            _params(x, weight, bias),
            {"normalized_ndim": int(normalized_ndim), "eps": float(eps)},
            name,
        )

    def add_group_norm(
        self,
        x: TensorLike,
        num_groups: int,
        weight: TensorLike | None = None,
        bias: TensorLike | None = None,
        eps: float = 1e-5,
        name: str = "",
    ) -> Layer:
        """Group norm of x [N, C, ...] with `num_groups` dividing C; weight/bias [C]."""
        return self.add_layer(
            "group_norm",
            _params(x, weight, bias),
            {"num_groups": int(num_groups), "eps": float(eps)},
            name,
        )

    def add_rms_norm(
        self,
        x: TensorLike,
        weight: TensorLike | None = None,
        normalized_ndim: int = 1,
        eps: float = 1e-6,
        name: str = "",
    ) -> Layer:
        """RMS norm over the last `normalized_ndim` dims. eps defaults to 1e-6, not torch's
        finfo(dtype).eps: pass torch's value explicitly to match F.rms_norm(eps=None)."""
        return self.add_layer(
            "rms_norm",
            _params(x, weight),
            {"normalized_ndim": int(normalized_ndim), "eps": float(eps)},
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


def _params(x, *optional):
    """[x, p1, p2, ...] up to the last given optional parameter; a gap before it is an error."""
    given = list(optional)
    while given and given[-1] is None:
        given.pop()
    if any(p is None for p in given):
        raise ValueError("a bias needs a weight: pass a weight of ones")
    return [x, *given]


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
