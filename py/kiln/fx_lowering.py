"""Stage 2 of kiln.compile's export frontend: the exported FX graph -> KGraph (kiln._C).

``FxLowering(program, specs)`` builds the torch-free graph the C++ driver reads: each node's op
overload, its arguments by schema name (defaults filled in), weights as bytes, symbolic sizes as
host scalars; it remembers which FX node is which value, so assembly can put the engines back,
and gives the driver the shape range of any value with dynamic dims (``range``).
"""

from __future__ import annotations

import operator
import re

import torch
import torch.fx
from torch.utils import _pytree as pytree

from kiln import _C
from kiln.dtypes import find_dtype_name
from kiln.inputs import Input
from kiln.log import log

# float64 has no engine dtype. By default every node that reads or makes a float64 value (or
# takes a float64 dtype argument) runs in PyTorch (FxLowering.torch_nodes), so float64 results
# stay exact. With truncate_double=True such values, constants and dtype arguments are narrowed
# to float32 inside engines instead (with a warning); the FX glue casts at engine boundaries so
# the module's own inputs and outputs keep their declared dtypes. int64 is not narrowed: the
# engine computes int64 natively (index arithmetic, gather, embedding, cumsum, arange), so no
# range proof is needed and every value stays exact.
NARROWED = {torch.float64: torch.float32}

# Dtype conversions (Tensor.to / .float() / .type as export writes them).
_CASTS = {
    torch.ops.aten._to_copy.default,
    torch.ops.aten.to.dtype,
    torch.ops.aten.to.dtype_layout,
    torch.ops.prims.convert_element_type.default,
}

# Ops lowering drops: checks that export already proved (no outputs, no effect on results).
_REMOVED = {torch.ops.aten._assert_tensor_metadata.default}


class FxLowering:
    """Builds the KGraph of an exported program and remembers which FX node is which value."""

    def __init__(
        self,
        program,
        specs: list[Input],
        truncate_double: bool = False,
        params: dict[str, torch.Tensor] | None = None,
    ):
        """params: {placeholder name: tensor} replacing lifted parameters (INT8 calibration's
        fake-quantized weights)."""
        self.program = program
        self.truncate_double = truncate_double
        # KGraph node index -> why it must run in PyTorch (float64 without truncate_double).
        self.torch_nodes: dict[int, str] = {}
        self.fx = program.graph_module.graph
        self.graph = _C.KGraph()
        self.value_of: dict[torch.fx.Node, int] = {}  # FX node (getitem for multi-output) -> value
        self.fx_of_value: dict[int, torch.fx.Node] = {}
        self.fx_nodes: list[torch.fx.Node] = []  # KGraph node index -> FX node
        self.exprs: dict[int, list] = {}  # value -> per-dim sympy expr (None for static dims)
        self.params: dict[str, torch.Tensor] = {}  # placeholder name -> lifted parameter/buffer
        self.user_inputs: list[torch.fx.Node] = []
        self.ranges: dict = {}  # sympy symbol -> (min, opt, max)
        self.narrowed: list[str] = []  # names of float64 values computed as float32
        # FX nodes whose value has a dtype engines do not have (uint8, int16, complex64, ...) ->
        # that dtype: they and the nodes reading them run in PyTorch.
        self.foreign: dict[torch.fx.Node, torch.dtype] = {}

        lifted = self._lifted_tensors() | dict(params or {})
        # Refittable weights (kiln.refit): float parameters and buffers, by qualified name; not
        # those replaced by `params` (fake-quantized for INT8/FP8) nor integer buffers.
        self.weights: dict[str, str] = {
            name: fqn
            for name, fqn in weight_names(program).items()
            if name not in (params or {}) and lifted[name].is_floating_point()
        }
        for node in self.fx.nodes:
            if node.op == "placeholder":
                if node.name in lifted:
                    self.params[node.name] = lifted[node.name]
                    self._constant(node, lifted[node.name], self.weights.get(node.name, ""))
                else:
                    self._input(node, specs[len(self.user_inputs)])
                    self.user_inputs.append(node)
            elif node.op == "call_function":
                if node.target in _REMOVED and not node.users:
                    continue
                if node.target is operator.getitem and node.args[0] in self.fx_nodes:
                    continue  # an output of a multi-output node: made with its producer
                self._node(node)
            elif node.op == "output":
                for out in pytree.tree_leaves(node.args[0]):
                    if isinstance(out, torch.fx.Node):
                        self.graph.mark_output(self.value_of[out])
            else:
                raise _C.KilnError(f"kiln.compile: unexpected FX node {node.format_node()}")

    def range(self, v: int) -> tuple[list[int], list[int], list[int]]:
        """(min, opt, max) shape of value v over the kiln.Input ranges: what the driver asks of
        an engine input with dynamic dims."""
        shape = self.fx_of_value[v].meta["val"].shape
        return tuple(
            [
                int(d) if e is None else _evaluate(e, self.ranges, k)
                for d, e in zip(shape, self.exprs[v], strict=True)
            ]
            for k in range(3)
        )

    def _lifted_tensors(self) -> dict[str, torch.Tensor]:
        sig = self.program.graph_signature
        out = lifted_tensors(self.program)
        for spec in sig.output_specs:
            if spec.kind != torch.export.graph_signature.OutputKind.USER_OUTPUT:
                raise _C.KilnError(
                    f"kiln.compile: the model mutates state ({spec.kind.name} of {spec.target})"
                )
        return out

    def _input(self, node: torch.fx.Node, spec: Input) -> None:
        val = node.meta["val"]
        for d, size in enumerate(val.shape):
            if isinstance(size, torch.SymInt):
                self.ranges[size.node.expr] = (
                    spec.min_shape[d],
                    spec.opt_shape[d],
                    spec.max_shape[d],
                )
        dims, exprs = _dims(val.shape)
        v = self.graph.add_input(node.name, self._dtype(val.dtype, node), dims)
        self._bind(node, v, exprs)

    def _constant(self, node: torch.fx.Node, t: torch.Tensor, weight: str = "") -> None:
        if t.dtype in NARROWED:
            self._dtype(t.dtype, node)  # records the narrowing
        t = weight_tensor(t)
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        v = self.graph.add_constant(
            node.name, self._dtype(t.dtype, node), list(t.shape), data, weight
        )
        self._bind(node, v, [None] * t.dim())

    def _bind(self, node: torch.fx.Node, v: int, exprs) -> None:
        self.value_of[node] = v
        self.fx_of_value[v] = node
        self.exprs[v] = exprs

    def _value(self, node: torch.fx.Node, val) -> int:
        scalar = {torch.SymBool: "bool", bool: "bool", torch.SymInt: "int64", int: "int64"}
        scalar |= {torch.SymFloat: "float32", float: "float32"}
        if type(val) in scalar:  # a symbolic (or specialized) size, flag or float: host scalar
            v = self.graph.add_value(node.name, scalar[type(val)], [], True)
            self._bind(node, v, [])
            return v
        if isinstance(val, torch.Tensor):
            dims, exprs = _dims(val.shape)
            v = self.graph.add_value(node.name, self._dtype(val.dtype, node), dims, False)
            self._bind(node, v, exprs)
            return v
        return -1

    def _node(self, node: torch.fx.Node) -> None:
        val = node.meta.get("val")
        outputs = []
        if isinstance(val, list | tuple):
            users = {u.args[1]: u for u in node.users if u.target is operator.getitem}
            for k, item in enumerate(val):
                outputs.append(self._value(users[k], item) if k in users else -1)
        elif val is not None:
            v = self._value(node, val)
            outputs.append(v)
        named = _same_device_cast(node, _named_args(node))
        if not self.truncate_double and _touches_float64(node, named):
            self.torch_nodes[len(self.fx_nodes)] = (
                "it computes in float64, which Kiln engines do not (they would compute in "
                "float32); compile with truncate_double=True to run it in float32"
            )
        elif (reason := _layout_dependent(node)) is not None:
            self.torch_nodes[len(self.fx_nodes)] = reason
        elif (reason := self._foreign_reason(node, named)) is not None:
            self.torch_nodes[len(self.fx_nodes)] = reason
        args = [(name, self._arg(a)) for name, a in named]
        self.graph.add_node(node.name, target_name(node.target), args, outputs, _location(node))
        self.fx_nodes.append(node)

    def _arg(self, a):
        if isinstance(a, torch.fx.Node):
            if a not in self.value_of:
                raise _C.KilnError(f"kiln.compile: argument {a.name} has no tensor or size value")
            return _C.ValueRef(self.value_of[a])
        if isinstance(a, list | tuple):
            return [self._arg(e) for e in a]
        if isinstance(a, torch.dtype):
            return find_dtype_name(NARROWED.get(a, a)) or str(a)
        if a is None or isinstance(a, bool | int | float | str):
            return a
        return str(a)  # device, layout, memory_format: informative only

    def _foreign_reason(self, node: torch.fx.Node, named) -> str | None:
        """Why a node that makes or reads a tensor of a dtype engines do not have runs in
        PyTorch, or None."""
        if node in self.foreign:
            return f"it makes a {self.foreign[node]} tensor, a dtype Kiln engines do not have"
        read = [a for a in pytree.tree_leaves([v for _, v in named]) if a in self.foreign]
        if read:
            dtype = self.foreign[read[0]]
            return f"it reads {read[0].name}, a {dtype} tensor (not an engine dtype)"
        return None

    def _dtype(self, dtype: torch.dtype, node: torch.fx.Node) -> str:
        if find_dtype_name(dtype) is None and dtype not in NARROWED:
            # Engines never see it: the node and its readers run in PyTorch (_foreign_reason).
            # The KGraph value gets a dtype of the same element size, for its constant bytes.
            stand_in = {1: "int8", 2: "float16", 4: "int32", 8: "int64"}.get(dtype.itemsize)
            if stand_in is not None:
                self.foreign[node] = dtype
                return stand_in
        if dtype in NARROWED:
            if not self.narrowed and self.truncate_double:
                log(
                    "warning",
                    f"kiln.compile: {node.name} is {dtype}; float64 values run as float32 in "
                    "Kiln engines (inputs and outputs keep their dtype at the module boundary)",
                )
            self.narrowed.append(node.name)
            dtype = NARROWED[dtype]
        return _dtype(dtype, node)


def weight_tensor(t: torch.Tensor) -> torch.Tensor:
    """A lifted tensor as an engine constant holds it: detached, contiguous, on the CPU, float64
    narrowed to float32 (kiln.refit prepares new values the same way)."""
    t = t.detach().contiguous().cpu()
    return t.to(NARROWED[t.dtype]) if t.dtype in NARROWED else t


def weight_names(program) -> dict[str, str]:
    """{placeholder name: qualified name} of an exported program's parameters and buffers."""
    kinds = (
        torch.export.graph_signature.InputKind.PARAMETER,
        torch.export.graph_signature.InputKind.BUFFER,
    )
    return {
        spec.arg.name: spec.target
        for spec in program.graph_signature.input_specs
        if spec.kind in kinds and spec.target in program.state_dict
    }


def lifted_tensors(program) -> dict[str, torch.Tensor]:
    """{placeholder name: tensor} of an exported program's parameters, buffers and constants."""
    out = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            continue
        if spec.target in program.state_dict:
            out[spec.arg.name] = program.state_dict[spec.target]
        else:
            out[spec.arg.name] = program.constants[spec.target]
    return out


def _touches_float64(node: torch.fx.Node, named_args) -> bool:
    """Whether `node` reads or makes a float64 tensor, or takes float64 as a dtype argument. A
    cast from float64 to another dtype does not count: rounding once gives the same result in an
    engine as in PyTorch."""
    val = node.meta.get("val")
    if node.target in _CASTS and getattr(val, "dtype", torch.float64) not in NARROWED:
        return False

    def is_double(v) -> bool:
        if isinstance(v, torch.fx.Node):
            v = v.meta.get("val")
        if isinstance(v, list | tuple):
            return any(is_double(e) for e in v)
        return (
            v in NARROWED if isinstance(v, torch.dtype) else getattr(v, "dtype", None) in NARROWED
        )

    return is_double(val) or any(is_double(a) for _, a in named_args)


def _same_device_cast(node: torch.fx.Node, named):
    """A _to_copy / to() whose result is on its input's device moves nothing: its device argument
    becomes None, so the engine sees a cast (or an identity) that never splits an engine."""
    if node.target not in _CASTS or not node.args:
        return named
    src, out = getattr(node.args[0], "meta", {}).get("val"), node.meta.get("val")
    if not (isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor)):
        return named
    if src.device != out.device or out.layout != torch.strided:
        return named
    return [(k, None if k in ("device", "layout", "pin_memory") else v) for k, v in named]


def _layout_dependent(node: torch.fx.Node) -> str | None:
    """Why a node that reads torch's memory layout must run in PyTorch, or None. as_strided reads
    its input's storage: the engine's row-major tensor is that storage only when the input is
    contiguous with storage offset 0."""
    if node.target is not torch.ops.aten.as_strided.default:
        return None
    src = getattr(node.args[0], "meta", {}).get("val")
    if isinstance(src, torch.Tensor) and src.is_contiguous() and src.storage_offset() == 0:
        return None
    return (
        "as_strided of a non-contiguous tensor (or one with a storage offset) reads torch's "
        "memory layout, which engine tensors do not have"
    )


def _dims(shape) -> tuple[list[int], list]:
    dims, exprs = [], []
    for d in shape:
        if isinstance(d, torch.SymInt):
            dims.append(-1)
            exprs.append(d.node.expr)
        else:
            dims.append(int(d))
            exprs.append(None)
    return dims, exprs


def _dtype(dtype: torch.dtype, node: torch.fx.Node) -> str:
    name = find_dtype_name(dtype)
    if name is None:
        raise _C.KilnError(
            f"kiln.compile: {node.name} has dtype {dtype}, which Kiln does not support"
        )
    return name


def target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # "aten.convolution.default"
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__name__', str(target))}"


def _named_args(node: torch.fx.Node) -> list[tuple[str, object]]:
    """Arguments by schema name; defaults filled in, so converters never guess."""
    if isinstance(node.target, torch._ops.OpOverload):
        named = []
        for k, arg in enumerate(node.target._schema.arguments):
            if k < len(node.args) and not arg.kwarg_only:
                named.append((arg.name, node.args[k]))
            elif arg.name in node.kwargs:
                named.append((arg.name, node.kwargs[arg.name]))
            elif arg.has_default_value():
                named.append((arg.name, arg.default_value))
            else:
                named.append((arg.name, None))
        return named
    if node.target in (operator.add, operator.sub, operator.mul, operator.floordiv):
        return [("a", node.args[0]), ("b", node.args[1])]
    return [(f"arg{k}", a) for k, a in enumerate(node.args)] + list(node.kwargs.items())


def _location(node: torch.fx.Node) -> str:
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', trace)
    if not frames:
        return ""
    # The innermost frame of model code, rather than torch.nn internals (linear.py).
    own = [f for f in frames if "/site-packages/torch/" not in f[0]]
    path, line, fn = (own or frames)[-1]
    return f"{path}:{line} in {fn}"


def _evaluate(expr, ranges: dict, k: int) -> int:
    """A symbolic dim at the min (k=0), opt (1) or max (2) of the input ranges."""
    free = expr.free_symbols - set(ranges)
    if free:
        raise _C.KilnError(
            f"kiln.compile: dim {expr} depends on sizes with no input range ({free})"
        )
    return int(expr.subs({s: r[k] for s, r in ranges.items()}))
