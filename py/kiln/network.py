"""The native network-building API (TensorRT-familiar names, Pythonic signatures).

Layers are added with ``Network.add_*``; each returns a :class:`Layer`. Wherever a tensor is
expected, a single-output Layer may be passed instead of ``layer.output``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from kiln import _C
from kiln.dtypes import (
    as_numpy,
    backend_name,
    deprecated,
    device_name,
    device_of_backend,
    dtype_name,
    precision_names,
    renamed,
)


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


def _dtype_attr(dtype) -> str:
    """A dtype attribute value: names pass through unchecked (the engine names the layer when
    one is unknown), numpy and torch dtypes become Kiln's names."""
    return dtype if isinstance(dtype, str) else dtype_name(dtype)


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

    def add_constant(self, value, name: str = "", refittable: bool = False) -> Tensor:
        """Weights from a numpy array, a torch tensor, or anything numpy can convert.

        refittable: the constant is a weight that ``kiln.Engine.refit`` can set later by `name`
        (and every constant the builder derives from it: folded BatchNorms, transposes, FP16
        copies); docs/refit.md."""
        arr, dtype = as_numpy(value)
        if refittable and not name:
            raise ValueError(
                "add_constant(refittable=True) needs a name: refit sets weights by name"
            )
        tensor = self._net.add_constant(name, dtype, list(arr.shape), arr.reshape(-1).view("uint8"))
        if refittable:
            self._net.mark_weight(tensor, name)
        return Tensor(self, tensor)

    def add_layer(
        self, op: str, inputs: Sequence[TensorLike], attrs: Mapping | None = None, name: str = ""
    ) -> Layer:
        """Any registered op by name, with its attributes (see docs/ops.md)."""
        layer_name, outputs = self._net.add_layer(
            op, [self._id(t) for t in inputs], dict(attrs or {}), name
        )
        return Layer(self, layer_name, op, outputs)

    def add_plugin(
        self,
        plugin: str,
        inputs: Sequence[TensorLike],
        fields: Mapping | None = None,
        namespace: str = "",
        name: str = "",
    ) -> Layer:
        """A layer of a registered plugin (kiln.load_plugin_library; docs/plugins.md): `plugin`
        is its name ("erfinv", or "kiln_example::erfinv" with the namespace), `fields` its typed
        fields (defaults filled in by the plugin's declaration)."""
        if "::" in plugin and not namespace:
            namespace, plugin = plugin.rsplit("::", 1)
        layer_name, op, outputs = self._net.add_plugin(
            plugin, [self._id(t) for t in inputs], dict(fields or {}), namespace, name
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
        """torch.matmul: batched, broadcasting; 1-D operands are vectors (their dim is dropped)."""
        return self.add_layer(
            "matmul",
            [a, b],
            {"transpose_a": int(transpose_a), "transpose_b": int(transpose_b)},
            name,
        )

    def add_fully_connected(
        self,
        x: TensorLike,
        weight: TensorLike,
        bias: TensorLike | None = None,
        name: str = "",
        activation: str = "none",
        residual: TensorLike | None = None,
        alpha: float | None = None,
    ) -> Layer:
        """torch.nn.Linear with a fused epilogue:
        activation(x [..., in] @ weight[out, in]^T (+ bias[out])) (+ residual [..., out]).

        activation: "none" or any type of the activation op (its parameter in `alpha`).
        """
        inputs = [x, weight] + ([bias] if bias is not None else [])
        attrs = {}
        if activation != "none":
            attrs["activation"] = activation
        if alpha is not None:
            attrs["alpha"] = float(alpha)
        if residual is not None:
            inputs.append(residual)
            attrs["residual"] = 1
        return self.add_layer("fully_connected", inputs, attrs, name)

    def add_elementwise(self, a: TensorLike, b: TensorLike, op: str, name: str = "") -> Layer:
        """op: "add", "sub", "mul", "div", "max", "min" or "pow"; NumPy broadcasting."""
        return self.add_layer("elementwise", [a, b], {"op": op}, name)

    def add_activation(
        self,
        x: TensorLike,
        type: str,  # noqa: A002
        alpha: float | None = None,
        name: str = "",
    ) -> Layer:
        """type: any activation of docs/ops.md ("relu", "leaky_relu", "elu", "clip", ...).
        alpha: leaky_relu slope, elu alpha, clip min; None keeps the op's default for the type
        (leaky_relu 0.01, elu 1, clip 0)."""
        attrs = {"type": type} if alpha is None else {"type": type, "alpha": float(alpha)}
        return self.add_layer("activation", [x], attrs, name)

    def add_identity(self, x: TensorLike, name: str = "") -> Layer:
        return self.add_layer("identity", [x], {}, name)

    def add_attention(
        self,
        q: TensorLike,
        k: TensorLike,
        v: TensorLike,
        mask: TensorLike | None = None,
        causal: bool = False,
        scale: float | None = None,
        name: str = "",
        layout: str = "bhsd",
    ) -> Layer:
        """Scaled dot-product attention, as torch's ``scaled_dot_product_attention``.

        q [B..., Hq, Sq, D], k [B..., Hkv, Sk, D], v [B..., Hkv, Sk, Dv] (rank >= 3, one floating
        dtype); Hq must be a multiple of Hkv (grouped-query attention). ``mask`` (optional)
        broadcasts to [B..., Hq, Sq, Sk]: bool (True = attend) or q's dtype (added to the scores);
        it cannot be combined with ``causal`` (query i sees keys j <= i). ``scale`` defaults to
        1/sqrt(D). Rows whose keys are all masked give zeros. Output [B..., Hq, Sq, Dv].
        ``layout="bshd"``: rank-4 q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv] and
        output [B, Sq, Hq, Dv] (the mask keeps its [B, Hq, Sq, Sk] meaning).
        """
        attrs = {"causal": int(causal)}
        if scale is not None:
            attrs["scale"] = float(scale)
        if layout != "bhsd":
            attrs["layout"] = layout
        inputs = [q, k, v] if mask is None else [q, k, v, mask]
        return self.add_layer("attention", inputs, attrs, name)

    def add_cast(self, x: TensorLike, to, name: str = "") -> Layer:
        """x converted to dtype `to` (a name, numpy or torch dtype), as torch's ``.to(dtype)``:
        floating -> integer truncates, anything -> bool is ``!= 0``, rounding is to nearest even."""
        return self.add_layer("cast", [x], {"to": _dtype_attr(to)}, name)

    def add_where(self, cond: TensorLike, a: TensorLike, b: TensorLike, name: str = "") -> Layer:
        """``cond ? a : b`` elementwise; cond is bool, a and b share a dtype; NumPy broadcasting."""
        return self.add_layer("where", [cond, a, b], {}, name)

    def add_arange(
        self,
        start: float = 0,
        end: float | TensorLike | None = None,
        step: float = 1,
        dtype="int64",
        name: str = "",
    ) -> Layer:
        """1-D ``start, start + step, ...`` up to (excluding) `end`, like torch.arange.

        `end` is a number, or a 0-d / [1] int32/int64 tensor computed from shapes (its values
        are tracked on the host), so the length can follow a dynamic dim.
        """
        attrs = {"start": start, "step": step, "dtype": _dtype_attr(dtype)}
        if end is None:
            raise ValueError("add_arange needs `end`")
        if isinstance(end, Tensor | Layer):
            return self.add_layer("arange", [end], attrs, name)
        return self.add_layer("arange", [], {**attrs, "end": end}, name)

    def add_fill(
        self, shape: Sequence[int] | TensorLike, value: float = 0.0, dtype="float32", name: str = ""
    ) -> Layer:
        """A tensor of `shape` with every element `value` (zeros / ones / full).

        `shape` is a list of ints, or a 1-D int32/int64 tensor computed from shapes (tracked
        values); its unknown entries become dynamic dims.
        """
        attrs = {"value": value, "dtype": _dtype_attr(dtype)}
        if isinstance(shape, Tensor | Layer):
            return self.add_layer("fill", [shape], attrs, name)
        return self.add_layer("fill", [], {**attrs, "shape": [int(d) for d in shape]}, name)

    def add_resize(
        self,
        x: TensorLike,
        mode: str = "nearest",
        sizes: Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
        align_corners: bool = False,
        name: str = "",
    ) -> Layer:
        """Resizes the spatial dims of x [N, C, spatial...] like F.interpolate.

        mode: "nearest", "nearest_exact" or "linear" (bilinear / trilinear by rank). Give
        `sizes` (output spatial sizes) or `scales` (out = floor(in * scale), coordinates mapped
        with 1/scale, as torch with recompute_scale_factor=False).
        """
        attrs = {"mode": mode, "align_corners": int(align_corners)}
        if sizes is not None:
            attrs["sizes"] = [int(s) for s in sizes]
        if scales is not None:
            attrs["scales"] = [float(s) for s in scales]
        return self.add_layer("resize", [x], attrs, name)

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
        eps: float | None = None,
        name: str = "",
    ) -> Layer:
        """Inference batch norm of x [N, C, ...] with per-channel scale, bias, mean and var [C]."""
        return self.add_layer("batch_norm", [x, scale, bias, mean, var], _eps({}, eps), name)

    def add_layer_norm(
        self,
        x: TensorLike,
        weight: TensorLike | None = None,
        bias: TensorLike | None = None,
        normalized_ndim: int = 1,
        eps: float | None = None,
        name: str = "",
    ) -> Layer:
        """Layer norm over the last `normalized_ndim` dims; a bias needs a weight."""
        return self.add_layer(
            "layer_norm",
            _params(x, weight, bias),
            _eps({"normalized_ndim": int(normalized_ndim)}, eps),
            name,
        )

    def add_group_norm(
        self,
        x: TensorLike,
        num_groups: int,
        weight: TensorLike | None = None,
        bias: TensorLike | None = None,
        eps: float | None = None,
        name: str = "",
    ) -> Layer:
        """Group norm of x [N, C, ...] with `num_groups` dividing C; weight/bias [C]."""
        return self.add_layer(
            "group_norm",
            _params(x, weight, bias),
            _eps({"num_groups": int(num_groups)}, eps),
            name,
        )

    def add_rms_norm(
        self,
        x: TensorLike,
        weight: TensorLike | None = None,
        normalized_ndim: int = 1,
        eps: float | None = None,
        name: str = "",
    ) -> Layer:
        """RMS norm over the last `normalized_ndim` dims. eps None: the op's default (1e-6, not
        torch's finfo(dtype).eps: pass torch's value explicitly to match F.rms_norm(eps=None))."""
        return self.add_layer(
            "rms_norm",
            _params(x, weight),
            _eps({"normalized_ndim": int(normalized_ndim)}, eps),
            name,
        )

    def add_packed_attention(
        self,
        qkv: TensorLike,
        mask: TensorLike | None = None,
        causal: bool = False,
        scale: float | None = None,
        name: str = "",
        layout: str = "bshd",
    ) -> Layer:
        """Attention on a fused QKV projection: qkv [B, S, 3, H, D] holds q, k and v of each token
        one after another (``qkv[:, :, 0]`` is q in [B, S, H, D]). ``mask``, ``causal`` and
        ``scale`` as in :meth:`add_attention`. Output [B, S, H, D]. ``layout="sbhd"``: the tokens
        are sequence-first, qkv [S, B, 3, H, D] and output [S, B, H, D]."""
        attrs = {"causal": int(causal)}
        if scale is not None:
            attrs["scale"] = float(scale)
        if layout != "bshd":
            attrs["layout"] = layout
        inputs = [qkv] if mask is None else [qkv, mask]
        return self.add_layer("packed_attention", inputs, attrs, name)

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
    """Build options: optimization profiles, workspace limit, optimization level, device.

    device: where the engine will run: "auto" (the GPU when one is visible, else the CPU
    reference backend), "cuda" or "cpu".

    precisions: what the engine may use inside, besides FP32: any of "tf32", "fp16", "bf16" (or
    torch.float16 / torch.bfloat16, "float16", "half", "bfloat16"; see kiln.dtypes). Declared
    input and output dtypes never change. FP16 wins over BF16 when both are given.
    ``set_layer_precision(name, "float32")`` pins one layer.

    workspace_size: the most bytes of scratch memory a layer's library calls (cuBLASLt, cuDNN,
    plugins) may use (None: the default, 32 MiB). A float32 fully_connected layer whose chosen
    tactic computes in three TF32 passes may enlarge the engine's workspace to hold its split
    operands (to 46.5 MiB at most; docs/runtime_performance.md).

    tactic_timing: on CUDA, time the implementations ("tactics") of layers whose kernels offer
    several and keep the fastest (default None: on, unless the environment sets
    KILN_TACTIC_TIMING=0; False: heuristic choices, faster builds).
    timing_cache: path of a persistent timing cache that builds read and update (default None:
    no file). A corrupt or foreign file is ignored with a warning and rewritten.

    INT8: "int8" (or torch.int8) in precisions, with ``calibrator=kiln.Calibrator(batches, ...)``
    (batches: tuples in the network's input order, or dicts by input name): the build runs the
    network over the batches on the CPU reference backend, then fake-quantizes the input of every
    convolution and fully_connected layer per tensor and their weights per output channel
    (docs/quantization.md). Without a calibrator the network must hold its own quantize /
    dequantize / fake_quantize layers.

    ``.max_folded_constant_bytes``: a constant subgraph (layers whose inputs are all constants)
    is evaluated at build time and stored in the plan when its outputs take at most this many
    bytes (default 64 MiB); a larger one stays a layer computed at run time.

    Deprecated (one release): ``target=`` / ``.target`` ("reference" for "cpu") and
    ``workspace_bytes=`` / ``.workspace_bytes``.
    """

    def __init__(
        self,
        *,
        device: str | None = None,
        precisions=None,
        workspace_size: int | None = None,
        optimization_level: int | None = None,
        tactic_timing: bool | None = None,
        timing_cache: str | os.PathLike | None = None,
        calibrator=None,
        target: str | None = None,
        workspace_bytes: int | None = None,
    ):
        super().__init__()
        self._calibrator = None
        if target is not None:
            target = device_of_backend(target)
        device = renamed("kiln.BuilderConfig", "target", "device", target, device)
        workspace_size = renamed(
            "kiln.BuilderConfig",
            "workspace_bytes",
            "workspace_size",
            workspace_bytes,
            workspace_size,
        )
        self._set_device(device_name(device or "auto", allow_auto=True, allow_index=False))
        if tactic_timing is not None:
            self.tactic_timing = bool(tactic_timing)
        if timing_cache is not None:
            self.timing_cache_path = os.fspath(timing_cache)
        if precisions is not None:
            self.precisions = precisions
        if workspace_size is not None:
            self.workspace_size = workspace_size
        if optimization_level is not None:
            self.optimization_level = optimization_level
        if calibrator is not None:
            self.calibrator = calibrator

    @property
    def calibrator(self):
        """The kiln.Calibrator of an INT8 build, or None."""
        return None if self._calibrator is None else self._calibrator.calibrator

    @calibrator.setter
    def calibrator(self, calibrator) -> None:
        from kiln.calibration import Calibrator, NetworkCalibrator

        if calibrator is not None and not isinstance(calibrator, Calibrator):
            raise TypeError(
                f"calibrator must be a kiln.Calibrator, got {type(calibrator).__name__}"
            )
        # The Python object must outlive the C++ reference (its methods are the overrides).
        self._calibrator = None if calibrator is None else NetworkCalibrator(calibrator)
        self.int8_calibrator = self._calibrator

    @property
    def device(self) -> str:
        """Where the engine will run: "auto", "cuda" or "cpu"."""
        return device_of_backend(_C.BuilderConfig.target.__get__(self))

    @device.setter
    def device(self, device) -> None:
        self._set_device(device_name(device, allow_auto=True, allow_index=False))

    def _set_device(self, name: str) -> None:
        # The binding takes the engine core's words ("auto", "cuda", "reference").
        _C.BuilderConfig.target.__set__(self, backend_name(name))

    @property
    def target(self) -> str:
        """Deprecated: the device in the old words ("auto", "cuda", "reference")."""
        deprecated("kiln.BuilderConfig.target", "kiln.BuilderConfig.device")
        return _C.BuilderConfig.target.__get__(self)

    @target.setter
    def target(self, target: str) -> None:
        deprecated("kiln.BuilderConfig.target", "kiln.BuilderConfig.device")
        self._set_device(device_name(device_of_backend(target), allow_auto=True, allow_index=False))

    @property
    def workspace_size(self) -> int:
        """The most bytes of scratch memory a layer may use."""
        return _C.BuilderConfig.workspace_bytes.__get__(self)

    @workspace_size.setter
    def workspace_size(self, size: int) -> None:
        _C.BuilderConfig.workspace_bytes.__set__(self, int(size))

    @property
    def workspace_bytes(self) -> int:
        """Deprecated: workspace_size."""
        deprecated("kiln.BuilderConfig.workspace_bytes", "kiln.BuilderConfig.workspace_size")
        return self.workspace_size

    @workspace_bytes.setter
    def workspace_bytes(self, size: int) -> None:
        deprecated("kiln.BuilderConfig.workspace_bytes", "kiln.BuilderConfig.workspace_size")
        self.workspace_size = size

    @property
    def precisions(self) -> list[str]:
        """Canonical names of the precisions the engine may use ("fp32" always first)."""
        return _C.BuilderConfig.precisions.__get__(self)

    @precisions.setter
    def precisions(self, precisions) -> None:
        if isinstance(precisions, str) or not hasattr(precisions, "__iter__"):
            precisions = [precisions]
        precisions = list(precisions)
        int8 = [p for p in precisions if str(p).removeprefix("torch.") == "int8"]
        names = precision_names([p for p in precisions if p not in int8] or ["fp32"])
        _C.BuilderConfig.precisions.__set__(self, names + (["int8"] if int8 else []))

    def set_layer_precision(self, layer, dtype) -> None:
        """Runs `layer` (a Layer or its name) in `dtype` (float32, float16 or bfloat16)."""
        name = layer.name if isinstance(layer, Layer) else layer
        super().set_layer_precision(name, dtype_name(dtype))

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
        from kiln.progress import progress_bars

        with progress_bars():
            return _C.Builder().build(
                network._net, config if config is not None else BuilderConfig()
            )


def _eps(attrs: dict, eps: float | None) -> dict:
    """attrs with `eps` when given; None leaves the op's schema default (docs/ops.md)."""
    return attrs if eps is None else {**attrs, "eps": float(eps)}
