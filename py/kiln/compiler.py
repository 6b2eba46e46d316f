"""kiln.compile: a PyTorch module -> a module whose supported parts run in Kiln engines.

The pipeline, top to bottom:
  1. export: torch.export.export (dynamic dims from kiln.Input ranges) and run_decompositions,
     giving an aten-level FX graph;
  2. lower: FX nodes -> KGraph (kiln._C), the torch-free graph the C++ converters read: each
     node's op overload, its arguments by schema name, weights as bytes;
  3. partition (C++): engine segments (every node has a converter that accepts it) and PyTorch
     segments, honouring min_block_size, torch_executed_ops and require_full_compilation;
  4. build: each engine segment -> Network (C++ converters) -> Builder -> plan -> EngineModule;
  5. assemble: a torch.fx.GraphModule calling the engines, with the other nodes as they were.
"""

from __future__ import annotations

import builtins
import inspect
import itertools
import math
import operator
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx
from torch.utils import _pytree as pytree

from kiln import _C
from kiln.inputs import Input
from kiln.log import log
from kiln.network import Builder, BuilderConfig, Network

_DTYPES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.bool: "bool",
    torch.int8: "int8",
}


# float64 has no engine dtype: float64 values, constants and dtype arguments are narrowed to
# float32 inside engines (with a warning); the FX glue casts at engine boundaries so the module's
# own inputs and outputs keep their declared dtypes. int64 is not narrowed: the engine computes
# int64 natively (index arithmetic, gather, embedding, cumsum, arange), so no range proof is
# needed and every value stays exact.
_NARROWED = {torch.float64: torch.float32}

# Ops lowering drops: checks that export already proved (no outputs, no effect on results).
_REMOVED = {torch.ops.aten._assert_tensor_metadata.default}


@dataclass
class Fallback:
    """A node that runs in PyTorch, and why."""

    node: str
    target: str
    reason: str


@dataclass
class CompileReport:
    """What compile did (or, with dry_run, would do) with the graph."""

    num_engines: int
    segments: list[dict] = field(default_factory=list)  # kind, nodes (names), ops
    fallbacks: list[Fallback] = field(default_factory=list)
    text: str = ""

    def __str__(self) -> str:
        return self.text


class CompiledModule(torch.nn.Module):
    """The result of kiln.compile: engines and PyTorch code in one FX GraphModule.

    ``graph_module`` takes the flattened tensor inputs and returns the flattened outputs;
    forward restores the original output structure. ``report`` says how the graph was split.
    ``inputs`` are the kiln.Input specs it was compiled for and ``device`` the device its engines
    run on (kiln.save exports with them by default).
    """

    def __init__(
        self,
        graph_module: torch.fx.GraphModule,
        out_spec,
        report: CompileReport,
        inputs: Sequence[Input] = (),
        device: torch.device | None = None,
    ):
        super().__init__()
        self.graph_module = graph_module
        self._out_spec = out_spec
        self.report = report
        self.inputs = list(inputs)
        self.device = device

    def forward(self, *args):
        flat = pytree.tree_leaves(args)
        return pytree.tree_unflatten(list(self.graph_module(*flat)), self._out_spec)


def compile(  # noqa: A001 (kiln.compile, as torch_tensorrt.compile)
    module,
    inputs: Sequence,
    *,
    ir: str = "auto",
    enabled_precisions: Iterable = (torch.float32,),
    min_block_size: int = 5,
    torch_executed_ops: Iterable = (),
    require_full_compilation: bool = False,
    workspace_size: int | None = None,
    optimization_level: int | None = None,
    device=None,
    dry_run: bool = False,
    debug: bool = False,
    timing_cache=True,
    tactic_timing: bool | None = None,
    cuda_graphs: bool = True,
):
    """Compiles ``module`` (an nn.Module or a torch.export.ExportedProgram) for ``inputs``.

    inputs: one kiln.Input or example tensor per positional input (dynamic dims: where the
    strict torch.export cannot prove a guard over a range, the export is retried with Dim.DYNAMIC
    hints and the guards are checked over the whole range; a KilnError says where one fails).
    ir: "export" (torch.export),
    "torchscript" (a torch.jit.ScriptModule, compiled by the C++ TorchScript frontend; returns a
    ScriptModule) or "auto" (torchscript for a ScriptModule, else export).
    enabled_precisions: torch dtypes the engines may compute in (float32 always; float16,
    bfloat16). min_block_size: smaller engine segments run in PyTorch. torch_executed_ops: op
    overloads (``torch.ops.aten.gelu.default`` or "aten.gelu.default") that always run in
    PyTorch. require_full_compilation: raise a KilnError listing every node that cannot run in an
    engine instead of running it in PyTorch. workspace_size / optimization_level: builder
    options. device: "cuda" (the default when a GPU is visible) or "cpu" (engines on the CPU
    reference backend). dry_run: partition only and return a CompileReport. debug: log the
    KGraph and the report at level "info".
    timing_cache: the persistent tactic timing cache of CUDA builds: True (the default) uses
    ``$XDG_CACHE_HOME/kiln/timing.cache`` (``~/.cache/kiln/timing.cache``), a path uses that
    file, False/None uses none. tactic_timing: time layers' alternative kernels (default None:
    on unless KILN_TACTIC_TIMING=0).
    cuda_graphs: CUDA engines capture and replay CUDA graphs per input shapes (default True; a
    runtime setting, not saved: loaded modules use the default, and KILN_CUDA_GRAPHS=0 turns
    graphs off process-wide).
    """
    if ir not in ("auto", "export", "torchscript"):
        raise ValueError(f"ir must be 'auto', 'export' or 'torchscript', got {ir!r}")
    device = torch.device(device if device is not None else ("cuda" if _cuda() else "cpu"))
    specs = [i if isinstance(i, Input) else Input.from_tensor(i) for i in inputs]
    if ir == "torchscript" or (ir == "auto" and isinstance(module, torch.jit.ScriptModule)):
        from kiln import torchscript

        return torchscript.compile(
            module,
            specs,
            device=device,
            dry_run=dry_run,
            enabled_precisions=enabled_precisions,
            min_block_size=min_block_size,
            torch_executed_ops=torch_executed_ops,
            require_full_compilation=require_full_compilation,
            workspace_size=workspace_size,
            optimization_level=optimization_level,
        )

    program = _export(module, specs, device)
    lowered = _Lowering(program, specs)
    level = "info" if debug else "verbose"
    log(level, "kiln.compile: KGraph\n" + lowered.graph.summary())

    forced = sorted(_op_name(op) for op in torch_executed_ops)
    partition = _C.partition(
        lowered.graph, int(min_block_size), forced, bool(require_full_compilation)
    )
    report = _report(lowered, partition)
    log(level, "kiln.compile: " + report.text)
    if dry_run:
        return report

    config = dict(
        precisions=[p for p in (_precision(d) for d in enabled_precisions) if p],
        workspace_bytes=workspace_size,
        optimization_level=optimization_level,
        target="cuda" if device.type == "cuda" else "reference",
        tactic_timing=None if tactic_timing is None else bool(tactic_timing),
        timing_cache=_timing_cache_path(timing_cache),
        cuda_graphs=bool(cuda_graphs),
    )
    graph_module = _assemble(lowered, partition, config)
    return CompiledModule(graph_module, program.call_spec.out_spec, report, specs, device)


# ---- 1. export ------------------------------------------------------------------------------


def _cuda() -> bool:
    return torch.cuda.is_available() and _C.cuda_device_count() > 0


def _export(module, specs: list[Input], device: torch.device):
    """torch.export with each kiln.Input's dynamic dims, then run_decompositions.

    First with strict ``torch.export.Dim`` ranges: torch proves that every guard the model's
    code puts on a dynamic size holds over the whole range. Its solver cannot prove some guards
    that do hold (GPT-2 on CUDA: ``s*(8 + s - s % 8) > 1`` from padding the attention mask to a
    multiple of 8) and raises a constraint violation; then the export is retried with
    ``Dim.DYNAMIC(min=..., max=...)`` hints (a warning names the guard). With hints torch
    accepts the guards instead of refusing: it narrows a range, specializes a dim, or keeps the
    guard as a check that only ``program.module()`` runs at call time, and the graph it traced
    is right only where the guards hold; Kiln's engines do not run those checks. So after the
    retry, (1) each requested dynamic dim must still be symbolic with a range covering the
    requested one (torch reports a lower bound of 0 or 1 as 2, as it specializes sizes 0 and 1
    only when an example has them: that counts as covering), and (2) every guard must hold at
    every size in the requested ranges (evaluated exhaustively over the dims it names;
    _check_guards_hold). Otherwise this raises a KilnError naming the input dim, the guard and a
    size where it fails, rather than building an engine that is wrong for part of the range it
    was asked for: narrow the kiln.Input range or make the dim static.
    """
    if isinstance(module, torch.export.ExportedProgram):
        return module.run_decompositions(_decompositions())
    module = module.eval()
    examples = tuple(s.example(device) for s in specs)
    strict_dims = _dynamic_shapes(
        specs, lambda k, d, lo, hi: torch.export.Dim(f"in{k}_d{d}", min=lo, max=hi)
    )
    with torch.no_grad():
        try:
            program = torch.export.export(module, examples, dynamic_shapes=strict_dims)
        except Exception as error:  # noqa: BLE001 (only constraint violations are retried)
            if not _is_constraint_violation(error):
                raise
            guard = _first_violation(error)
            log(
                "warning",
                "kiln.compile: torch.export could not prove a guard on a dynamic dim over its "
                f"range ({guard}); exporting again with Dim.DYNAMIC hints of the same ranges",
            )
            hints = _dynamic_shapes(
                specs, lambda k, d, lo, hi: torch.export.Dim.DYNAMIC(min=lo, max=hi)
            )
            try:
                program = torch.export.export(module, examples, dynamic_shapes=hints)
            except Exception as retry_error:  # noqa: BLE001
                if not _is_constraint_violation(retry_error):
                    raise
                raise _C.KilnError(
                    "kiln.compile: torch.export cannot keep the requested dynamic dims: "
                    f"{_first_violation(retry_error).rstrip('.')}. Make that dim static in the "
                    "kiln.Input, "
                    "or change the code that depends on its value."
                ) from retry_error
            _check_dynamic_kept(program, specs)
            _check_guards_hold(program, module, specs)
    return program.run_decompositions(_decompositions())


# Guards name input sizes as L['<forward argument>'].size()[<dim>].
_GUARD_SIZE = re.compile(r"L\['([^']+)'\]\.size\(\)\[(\d+)\]")
# Most size combinations one guard is evaluated at (each evaluation is about a microsecond).
_MAX_GUARD_POINTS = 1 << 18


class _Sizes:
    """What a guard reads of an input: its sizes, and the strides of a contiguous tensor (the
    layout Kiln's engines take)."""

    def __init__(self, shape: list[int]):
        self.shape = tuple(shape)

    def size(self):
        return self.shape

    def dim(self):
        return len(self.shape)

    def stride(self):
        strides, step = [], 1
        for n in reversed(self.shape):
            strides.append(step)
            step *= max(n, 1)
        return tuple(reversed(strides))

    def storage_offset(self):
        return 0


def _check_guards_hold(program, module, specs: list[Input]) -> None:
    """Raises a KilnError unless every guard torch.export kept for the program (its
    ``_guards_code``: Python expressions over L['<argument>'].size()[d]) holds at every
    combination of sizes, within the kiln.Input ranges, of the input dims the guard names (the
    other dims at their opt sizes). This is the proof the strict export could not do, done by
    enumeration; torch's own ``program.module()`` evaluates the same expressions per call."""
    guards = getattr(program, "_guards_code", None)
    if guards is None:
        raise _C.KilnError(
            "kiln.compile: this torch version's ExportedProgram has no _guards_code, so the "
            "guards of the Dim.DYNAMIC export cannot be checked over the kiln.Input ranges; "
            "narrow the ranges until the strict export succeeds, or make the dims static"
        )
    params = list(inspect.signature(module.forward).parameters)[: len(specs)]
    index = {name: k for k, name in enumerate(params)}
    names = {"abs": abs, "min": min, "max": max, "int": int, "float": float, "math": math}
    for guard in guards:
        axes = []
        for name, d in sorted(set(_GUARD_SIZE.findall(guard))):
            if name not in index or int(d) >= len(specs[index[name]].min_shape):
                raise _C.KilnError(f"kiln.compile: cannot check the export guard {guard}")
            s, d = specs[index[name]], int(d)
            axes.append((name, index[name], d, range(s.min_shape[d], s.max_shape[d] + 1)))
        points = math.prod(len(a[3]) for a in axes)
        if points > _MAX_GUARD_POINTS:
            raise _C.KilnError(
                f"kiln.compile: the export guard {guard} would have to be checked at {points} "
                "size combinations; narrow the kiln.Input ranges"
            )
        code = builtins.compile(guard, "<torch.export guard>", "eval")  # (kiln's is compile)
        for values in itertools.product(*(a[3] for a in axes)):
            shapes = [list(s.opt_shape) for s in specs]
            for (_, k, d, _), v in zip(axes, values, strict=True):
                shapes[k][d] = v
            sizes = {name: _Sizes(shapes[k]) for name, k in index.items()}
            try:
                # torch's own guard code, evaluated as program.module() does, on sizes only.
                holds = eval(code, {"__builtins__": names}, {"L": sizes})  # noqa: S307
            except Exception as error:  # noqa: BLE001
                raise _C.KilnError(
                    f"kiln.compile: cannot check the export guard {guard}: {error}"
                ) from error
            if not holds:
                at = ", ".join(
                    f"{n} dim {d} = {v}" for (n, _, d, _), v in zip(axes, values, strict=True)
                )
                raise _C.KilnError(
                    f"kiln.compile: torch.export traced the model under the guard {guard}, which "
                    f"fails at {at} inside the kiln.Input ranges: the model's code branches on "
                    "these sizes. Narrow the ranges to where the guard holds, or make the dims "
                    "static."
                )


def _dynamic_shapes(specs: list[Input], make) -> tuple:
    """export's dynamic_shapes: per input, {dim: make(input, dim, min, max)} or None."""
    dynamic = []
    for k, s in enumerate(specs):
        dims = {d: make(k, d, s.min_shape[d], s.max_shape[d]) for d in s.dynamic_dims}
        dynamic.append(dims or None)
    return tuple(dynamic)


def _is_constraint_violation(error: BaseException) -> bool:
    from torch.fx.experimental.symbolic_shapes import ConstraintViolationError

    if isinstance(error, ConstraintViolationError):
        return True
    from torch._dynamo.exc import UserError, UserErrorType

    return isinstance(error, UserError) and error.error_type == UserErrorType.CONSTRAINT_VIOLATION


def _first_violation(error: BaseException) -> str:
    """The first "- ..." line of torch's constraint-violation message (the guard), else its
    first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("- "):
            return line[2:]
    return lines[0] if lines else type(error).__name__


def _check_dynamic_kept(program, specs: list[Input]) -> None:
    """Raises a KilnError when export specialized a requested dynamic dim or narrowed its range
    (see _export)."""
    user = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    for k, (node, spec) in enumerate(zip(placeholders, specs, strict=True)):
        shape = node.meta["val"].shape
        for d in spec.dynamic_dims:
            lo, hi = spec.min_shape[d], spec.max_shape[d]
            size = shape[d]
            where = f"input {k} ({node.name}) dim {d}"
            if not isinstance(size, torch.SymInt):
                raise _C.KilnError(
                    f"kiln.compile: torch.export specialized {where} to {size}, but the kiln.Input "
                    f"asks for {lo}..{hi}: the model's code fixes this size. Make the dim static "
                    "in the kiln.Input, or change the code that depends on its value."
                )
            vr = program.range_constraints.get(size.node.expr)
            if vr is None:
                continue  # an expression of other symbols: their ranges are checked themselves
            got_lo, got_hi = int(vr.lower), vr.upper
            if got_lo > max(lo, 2) or got_hi < hi:
                raise _C.KilnError(
                    f"kiln.compile: torch.export kept {where} dynamic only over "
                    f"{got_lo}..{got_hi}, but the kiln.Input asks for {lo}..{hi}: the model's code "
                    "branches on this size. Ask for a range inside the one torch kept."
                )


def _decompositions():
    """torch.export's default table, less the ops Kiln converts whole (scaled_dot_product_attention
    becomes one fused attention layer instead of matmul/softmax/matmul)."""
    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if _C.has_converter(str(op)):
            del table[op]
    return table


# ---- 2. lower: FX -> KGraph -----------------------------------------------------------------


class _Lowering:
    """Builds the KGraph of an exported program and remembers which FX node is which value."""

    def __init__(self, program, specs: list[Input]):
        self.program = program
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

        lifted = self._lifted_tensors()
        for node in self.fx.nodes:
            if node.op == "placeholder":
                if node.name in lifted:
                    self.params[node.name] = lifted[node.name]
                    self._constant(node, lifted[node.name])
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

    def _lifted_tensors(self) -> dict[str, torch.Tensor]:
        sig = self.program.graph_signature
        out = {}
        for spec in sig.input_specs:
            if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
                continue
            if spec.target in self.program.state_dict:
                out[spec.arg.name] = self.program.state_dict[spec.target]
            else:
                out[spec.arg.name] = self.program.constants[spec.target]
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

    def _constant(self, node: torch.fx.Node, t: torch.Tensor) -> None:
        t = t.detach().contiguous().cpu()
        if t.dtype in _NARROWED:
            self._dtype(t.dtype, node)
            t = t.to(_NARROWED[t.dtype])
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        v = self.graph.add_constant(node.name, self._dtype(t.dtype, node), list(t.shape), data)
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
        args = [(name, self._arg(a)) for name, a in _named_args(node)]
        self.graph.add_node(node.name, _target_name(node.target), args, outputs, _location(node))
        self.fx_nodes.append(node)

    def _arg(self, a):
        if isinstance(a, torch.fx.Node):
            if a not in self.value_of:
                raise _C.KilnError(f"kiln.compile: argument {a.name} has no tensor or size value")
            return _C.ValueRef(self.value_of[a])
        if isinstance(a, list | tuple):
            return [self._arg(e) for e in a]
        if isinstance(a, torch.dtype):
            return _DTYPES.get(_NARROWED.get(a, a), str(a))
        if a is None or isinstance(a, bool | int | float | str):
            return a
        return str(a)  # device, layout, memory_format: informative only

    def _dtype(self, dtype: torch.dtype, node: torch.fx.Node) -> str:
        if dtype in _NARROWED:
            if not self.narrowed:
                log(
                    "warning",
                    f"kiln.compile: {node.name} is {dtype}; float64 values run as float32 in "
                    "Kiln engines (inputs and outputs keep their dtype at the module boundary)",
                )
            self.narrowed.append(node.name)
            dtype = _NARROWED[dtype]
        return _dtype(dtype, node)


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
    if dtype not in _DTYPES:
        raise _C.KilnError(
            f"kiln.compile: {node.name} has dtype {dtype}, which Kiln does not support"
        )
    return _DTYPES[dtype]


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # "aten.convolution.default"
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__name__', str(target))}"


def _op_name(op) -> str:
    return op if isinstance(op, str) else _target_name(op)


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


# ---- 3. partition report --------------------------------------------------------------------


def _report(lowered: _Lowering, partition: dict) -> CompileReport:
    g = lowered.graph
    segments = [
        {
            "kind": "engine" if s["engine"] else "pytorch",
            "nodes": [g.node_name(n) for n in s["nodes"]],
            "ops": [g.node_target(n) for n in s["nodes"]],
        }
        for s in partition["segments"]
    ]
    fallbacks = [
        Fallback(g.node_name(n), g.node_target(n), reason) for n, reason in partition["fallbacks"]
    ]
    return CompileReport(
        num_engines=sum(s["engine"] for s in partition["segments"]),
        segments=segments,
        fallbacks=fallbacks,
        text=partition["report"],
    )


# ---- 4. build and 5. assemble ---------------------------------------------------------------


def default_timing_cache_path() -> str:
    """Where kiln.compile keeps tactic timings by default: $XDG_CACHE_HOME/kiln/timing.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kiln", "timing.cache")


def _timing_cache_path(timing_cache) -> str | None:
    if timing_cache is True:
        return default_timing_cache_path()
    if timing_cache is None or timing_cache is False:
        return None
    return os.fspath(timing_cache)


def _precision(dtype) -> str | None:
    names = {torch.float32: None, torch.float16: "fp16", torch.bfloat16: "bf16", "tf32": "tf32"}
    if dtype not in names:
        raise ValueError(
            f"enabled_precisions: {dtype} is not one of torch.float32/float16/bfloat16, 'tf32'"
        )
    return names[dtype]


def _build_engine(lowered: _Lowering, segment: dict, config: dict):
    from kiln import runtime

    net = Network.__new__(Network)
    net._net = _C.convert_segment(lowered.graph, segment)
    options = dict(config)
    cuda_graphs = options.pop("cuda_graphs", True)
    builder_config = BuilderConfig(**options)
    ranges = {}
    for v in segment["inputs"]:
        exprs = lowered.exprs[v]
        if any(e is not None for e in exprs):
            shape = lowered.fx_of_value[v].meta["val"].shape
            ranges[lowered.graph.value_name(v)] = tuple(
                [
                    int(d) if e is None else _evaluate(e, lowered.ranges, k)
                    for d, e in zip(shape, exprs, strict=True)
                ]
                for k in range(3)
            )
    if ranges:
        builder_config.add_optimization_profile(ranges)
    plan = Builder().build(net, builder_config)
    module = runtime.EngineModule(plan, config["target"])
    if not cuda_graphs:
        module.engine.set_cuda_graphs(False)
    return module


def _evaluate(expr, ranges: dict, k: int) -> int:
    """A symbolic dim at the min (k=0), opt (1) or max (2) of the input ranges."""
    free = expr.free_symbols - set(ranges)
    if free:
        raise _C.KilnError(
            f"kiln.compile: dim {expr} depends on sizes with no input range ({free})"
        )
    return int(expr.subs({s: r[k] for s, r in ranges.items()}))


def _narrow(graph: torch.fx.Graph, node: torch.fx.Node, fx_node: torch.fx.Node) -> torch.fx.Node:
    """A float64 value handed to an engine, as the float32 the engine was built for."""
    dtype = getattr(fx_node.meta.get("val"), "dtype", None)
    if dtype not in _NARROWED:
        return node
    return graph.call_method("to", (node, _NARROWED[dtype]))


def _widen(graph: torch.fx.Graph, out: torch.fx.Node, fx_node: torch.fx.Node) -> torch.fx.Node:
    """An engine output back in the dtype PyTorch code expects (float32 -> float64)."""
    dtype = getattr(fx_node.meta.get("val"), "dtype", None)
    if dtype not in _NARROWED:
        return out
    return graph.call_method("to", (out, dtype))


def _assemble(lowered: _Lowering, partition: dict, config: dict) -> torch.fx.GraphModule:
    root = torch.nn.Module()
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in lowered.user_inputs:
        env[node] = graph.placeholder(node.name)
    placeholders = {n.name: n for n in lowered.fx.nodes if n.op == "placeholder"}

    def lookup(a: torch.fx.Node) -> torch.fx.Node:
        if a not in env and a.name in lowered.params:  # a weight PyTorch code reads
            attr = f"_kiln_param_{len(root._buffers)}"
            root.register_buffer(attr, lowered.params[a.name].detach())
            env[placeholders[a.name]] = graph.get_attr(attr)
        return env[a]

    engines = 0
    for segment in partition["segments"]:
        if not segment["engine"]:
            for index in segment["nodes"]:
                node = lowered.fx_nodes[index]
                env[node] = graph.node_copy(node, lookup)
                for user in node.users:
                    if user.target is operator.getitem:
                        env[user] = graph.node_copy(user, lookup)
            continue
        name = f"_kiln_engine_{engines}"
        engines += 1
        root.add_module(name, _build_engine(lowered, segment, config))
        call = graph.call_module(
            name,
            tuple(
                _narrow(graph, env[lowered.fx_of_value[v]], lowered.fx_of_value[v])
                for v in segment["inputs"]
            ),
        )
        outputs = segment["outputs"]
        for j, v in enumerate(outputs):
            fx_node = lowered.fx_of_value[v]
            out = call if len(outputs) == 1 else graph.call_function(operator.getitem, (call, j))
            env[fx_node] = _widen(graph, out, fx_node)

    output = next(n for n in lowered.fx.nodes if n.op == "output")
    flat = [
        lookup(a) if isinstance(a, torch.fx.Node) else a for a in pytree.tree_leaves(output.args[0])
    ]
    graph.output(tuple(flat))
    return torch.fx.GraphModule(root, graph, "KilnCompiledGraph")
