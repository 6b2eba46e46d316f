"""Stage 1 of kiln.compile's export frontend: torch.export.

``export_program(module, specs, device)``: torch.export.export with each kiln.Input's dynamic
dims (strict ranges first; Dim.DYNAMIC hints with every kept guard checked over the ranges when
torch cannot prove one), then run_decompositions with the default table minus the ops a Kiln
converter takes whole (``aten.scaled_dot_product_attention`` stays one node).
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import itertools
import math
import os
import re
import sys
from collections.abc import Sequence

import torch

from kiln import _C
from kiln.inputs import Input
from kiln.log import log, quiet_torch


@quiet_torch
def export_program(
    module,
    specs: list[Input],
    device: torch.device,
    kwarg_names: Sequence[str] = (),
    examples: Sequence | None = None,
):
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
        return module.run_decompositions(_decompositions()), []
    register_library_pytrees(module)
    # Exported in eval mode (inference: dropout off, batch norm statistics fixed); the caller's
    # module gets its own modes back, submodule by submodule. The flags are set, not eval()
    # called: a pt2e-converted GraphModule (convert_pt2e's output) raises on eval().
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        return _export_eval(module, specs, device, list(kwarg_names))
    except Exception as error:  # noqa: BLE001 (re-raised, data-dependent branches explained)
        if not _is_data_dependent(error):
            raise
        try:
            return _export_speculating(module, specs, device, list(kwarg_names), examples)
        except Exception as retry:  # noqa: BLE001 (the first error explained, this one chained)
            raise DataDependentControlFlow(
                "kiln.compile: torch.export cannot capture the model: its Python code branches "
                f"on tensor values ({_first_line(error)}), and taking each branch as the example "
                f"inputs do failed too ({_first_line(retry)}). Compile it with "
                "torch.compile(model, backend='kiln'), which runs such branches in Python between "
                "the graphs Kiln compiles, or change the branch (torch.cond, or no branch)."
            ) from error
    finally:
        for m, training in modes:
            m.training = training


def _export_eval(
    module,
    specs: list[Input],
    device: torch.device,
    kwarg_names: list[str],
    given: Sequence | None = None,
    tracing=contextlib.nullcontext,
):
    """The last len(kwarg_names) specs are keyword inputs (in that order, after the positional
    ones: the order of the exported program's inputs). Returns the decomposed program and the
    equality guards between input sizes that calls must satisfy (see _check_guards_hold).
    given: the caller's example tensors (None where a spec has none); the others are random.
    tracing(): a context around each torch.export.export call."""
    positional = len(specs) - len(kwarg_names)
    names = _input_names(module, positional) + kwarg_names
    examples = _examples(specs, given, device)
    args, kwargs = examples[:positional], dict(zip(kwarg_names, examples[positional:], strict=True))

    def dynamic(make):
        dims = _dynamic_shapes(specs, make)
        return dict(zip(names, dims, strict=True)) if kwarg_names else dims

    # Input dims torch says must be equal (input_ids and attention_mask share batch and sequence)
    # share one Dim when their kiln.Input ranges agree: (input, dim) -> the (input, dim) it follows.
    ties: dict = {}

    def strict(k, d, lo, hi):
        root = ties.get((k, d), (k, d))
        return shared.setdefault(root, torch.export.Dim(f"in{root[0]}_d{root[1]}", min=lo, max=hi))

    with torch.no_grad():
        while True:
            shared: dict = {}
            try:
                with tracing():
                    program = torch.export.export(
                        module, args, kwargs, dynamic_shapes=dynamic(strict)
                    )
                equal = [(root, dim) for dim, root in ties.items()]
                return program.run_decompositions(_decompositions()), equal
            except Exception as error:  # noqa: BLE001 (only constraint violations are retried)
                if not _is_constraint_violation(error):
                    raise
                new = _suggested_ties(error, specs, ties)
                if new:
                    ties.update(new)
                    continue
                guard = _first_violation(error)
                log(
                    "warning",
                    "kiln.compile: torch.export could not prove a guard on a dynamic dim over its "
                    f"range ({guard}); exporting again with Dim.DYNAMIC hints of the same ranges",
                )
                hints = dynamic(lambda k, d, lo, hi: torch.export.Dim.DYNAMIC(min=lo, max=hi))
                try:
                    with tracing():
                        program = torch.export.export(module, args, kwargs, dynamic_shapes=hints)
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
                tied = [(root, dim) for dim, root in ties.items()]
                equalities = _check_guards_hold(program, names, specs, tied)
                return program.run_decompositions(_decompositions()), equalities


# Reads of a tensor's value into Python that kiln.compile speculates on when they give a bool or
# an int (a float, compared exactly at run time, would rarely hold again).
_READS = {
    torch.Tensor.__bool__: "truth",
    torch.Tensor.item: "value",
    torch.Tensor.__int__: "value",
    torch.Tensor.__index__: "value",
}


class _Record(torch.overrides.TorchFunctionMode):
    """During an eager run: each bool or int the model's code reads from a tensor (its truth,
    .item(), int()), in call order, with the read and the line that asked."""

    def __init__(self):
        super().__init__()
        self.values: list[tuple[str, bool | int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in _READS and isinstance(result, (bool, int)):
            self.values.append((f"{_READS[func]} at {_user_line()}", result))
        return result


def _examples(specs: list[Input], given: Sequence | None, device: torch.device) -> tuple:
    """One example tensor per spec on `device`: the caller's (`given`, None where a spec has
    none) or a random one."""
    given = list(given or []) + [None] * (len(specs) - len(given or []))
    return tuple(
        g.to(device) if isinstance(g, torch.Tensor) else s.example(device)
        for s, g in zip(specs, given, strict=True)
    )


class _Speculate(torch.overrides.TorchFunctionMode):
    """While torch.export traces, a read of a traced tensor's truth or integer value (``if not
    torch.isfinite(x).all():``, ``if mask.any().item():``) gives what the eager run on the same
    inputs read there (_Record's values at the same line, in order: library code that skips
    checks while tracing leaves some eager ones unmatched), and the program keeps a runtime
    assertion that the tensor has that value again (torch._check): a call whose values differ
    fails the assertion, and CompiledModule runs the model in PyTorch then."""

    def __init__(self, recorded: list[tuple[str, bool | int]]):
        super().__init__()
        self.recorded = recorded
        self.rewind()

    def rewind(self):
        self.taken: list[str] = []
        self.left: dict[str, list[bool | int]] = {}
        for where, value in self.recorded:
            self.left.setdefault(where, []).append(value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _READS or not args or not isinstance(args[0], torch._subclasses.FakeTensor):
            return func(*args, **kwargs)  # not a read, or of a real tensor (a constant)
        where = f"{_READS[func]} at {_user_line()}"
        if not self.left.get(where):
            if _READS[func] == "value":  # a float the eager run read: traced as torch does
                return func(*args, **kwargs)
            raise _C.KilnError(
                f"the traced code asked for a tensor's {where} more often than the eager run did"
            )
        value = self.left[where].pop(0)
        # (Inside this handler the mode is off: these calls trace as usual.)
        symbol = args[0].to(torch.int64).reshape(()).item()
        torch._check(symbol == int(value))
        self.taken.append(f"{where.split(' at ', 1)[1]}: {value}")
        return value


def _user_line() -> str:
    """file:line `code` of the model's code that read a tensor's value (the first frame outside
    torch and Kiln)."""
    import traceback

    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path.startswith(_LIBRARY_DIRS) or frame.filename.startswith("<"):
            continue
        return f"{os.path.basename(path)}:{frame.lineno} `{(frame.line or '').strip()}`"
    return "<unknown>"


# The packages whose frames _user_line skips (torch's and Kiln's own code).
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(f)) + os.sep for f in (torch.__file__, __file__)
)


def _export_speculating(module, specs, device, kwarg_names, given):
    """torch.export again, each bool or int read from a traced tensor (a branch's truth,
    .item()) taken as an eager run on the same example inputs read it, and asserted at run time
    (_Speculate). The caller's own example tensors are the inputs where given (random ones may
    take a branch real inputs do not)."""
    positional = len(specs) - len(kwarg_names)
    examples = _examples(specs, given, device)
    record = _Record()
    with torch.no_grad(), record:
        module(*examples[:positional], **dict(zip(kwarg_names, examples[positional:], strict=True)))
    if not record.values:
        raise _C.KilnError("the eager run read no bool or int from a tensor")
    mode = _Speculate(record.values)

    @contextlib.contextmanager
    def tracing():
        mode.rewind()
        with mode:
            yield

    program, equal = _export_eval(module, specs, device, kwarg_names, examples, tracing)
    if not mode.taken:
        raise _C.KilnError("the traced code read no bool or int from a traced tensor")
    taken = list(dict.fromkeys(mode.taken))
    log(
        "warning",
        f"kiln.compile: the model's Python code reads tensor values ({len(mode.taken)} times: "
        "branches on tensor values, or numbers it computes with); the engines follow what the "
        "example inputs read ("
        + "; ".join(taken)
        + "). Each call checks them (a device-to-host copy) and runs the model in PyTorch when "
        "an input reads another value.",
    )
    program.graph_module.meta[SPECULATED] = taken
    return program, equal


# graph_module.meta key of a speculated program: where its branches on tensor values were taken.
SPECULATED = "kiln_speculated_branches"


class DataDependentControlFlow(_C.KilnError):
    """torch.export met Python control flow on tensor values (``if x.isfinite().all():``), which
    one exported graph cannot hold; torch.compile(model, backend="kiln") can."""


def _is_data_dependent(error) -> bool:
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    seen = set()
    while error is not None and id(error) not in seen:  # the error or one it was raised from
        seen.add(id(error))
        if isinstance(error, GuardOnDataDependentSymNode):
            return True
        error = error.__cause__ or error.__context__
    return False


def _first_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


_SUGGESTED_TIE = re.compile(r"^\s*in(\d+)_d(\d+) = in(\d+)_d(\d+)\s*$", re.MULTILINE)


def _suggested_ties(error, specs: list[Input], ties: dict) -> dict:
    """torch's suggested fixes of the form ``in1_d0 = in0_d0`` (two input dims must be equal),
    kept where both dims have the same kiln.Input range: {(input, dim): (input, dim)}."""
    new = {}
    for k, d, k0, d0 in _SUGGESTED_TIE.findall(str(error)):
        dim, root = (int(k), int(d)), (int(k0), int(d0))
        root = ties.get(root, root)
        a, b = specs[dim[0]], specs[root[0]]
        same = (a.min_shape[dim[1]], a.max_shape[dim[1]]) == (
            b.min_shape[root[1]],
            b.max_shape[root[1]],
        )
        if same and dim != root and dim not in ties:
            new[dim] = root
    return new


def register_library_pytrees(module) -> None:
    """Lets torch.export flatten the objects a library's models return: transformers decoders
    return their KV cache (DynamicCache and friends) inside a ModelOutput, which torch.export
    refuses unless the cache classes are registered pytree nodes. transformers ships the
    registration (exporters.exporter_dynamo in 5.x, integrations.executorch before)."""
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return
    try:
        from transformers.exporters.exporter_dynamo import register_cache_pytrees_for_model

        register_cache_pytrees_for_model(module)
    except ImportError:
        from transformers.integrations.executorch import register_dynamic_cache_export_support

        register_dynamic_cache_export_support()


def _input_names(module, positional: int) -> list[str]:
    """The names of the first `positional` parameters of module.forward (guards name inputs by
    them)."""
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return (params + [f"arg{k}" for k in range(len(params), positional)])[:positional]


# Guards name input sizes as L['<forward argument>'].size()[<dim>].
_GUARD_SIZE = re.compile(r"L\['([^']+)'\]\.size\(\)\[(\d+)\]")
# A guard that only says two input sizes are equal (input_ids and attention_mask share a batch
# and a sequence dim).
_GUARD_EQUAL = re.compile(
    r"^\s*\(?\s*(L\['[^']+'\]\.size\(\)\[\d+\])\s*==\s*(L\['[^']+'\]\.size\(\)\[\d+\])\s*\)?\s*$"
)
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


def _check_guards_hold(program, input_names: list[str], specs: list[Input], tied=()) -> list:
    """Raises a KilnError unless every guard torch.export kept for the program (its
    ``_guards_code``: Python expressions over L['<argument>'].size()[d]) holds at every
    combination of sizes, within the kiln.Input ranges, of the input dims the guard names (the
    other dims at their opt sizes). This is the proof the strict export could not do, done by
    enumeration; torch's own ``program.module()`` evaluates the same expressions per call.

    A guard that only equates two input sizes (``L['a'].size()[0] == L['b'].size()[0]``) is a
    precondition of the inputs rather than a branch of the model: it is returned as
    ((input, dim), (input, dim)) pairs (with the `tied` pairs known equal already), which the
    compiled module checks on every call."""
    guards = getattr(program, "_guards_code", None)
    if guards is None:
        raise _C.KilnError(
            "kiln.compile: this torch version's ExportedProgram has no _guards_code, so the "
            "guards of the Dim.DYNAMIC export cannot be checked over the kiln.Input ranges; "
            "narrow the ranges until the strict export succeeds, or make the dims static"
        )
    index = {name: k for k, name in enumerate(input_names)}
    equalities = list(tied)
    for guard in guards:
        m = _GUARD_EQUAL.match(guard)
        if m:
            sides = [_GUARD_SIZE.fullmatch(side).groups() for side in m.groups()]
            if all(name in index for name, _ in sides):
                equalities.append(tuple((index[name], int(d)) for name, d in sides))
    guards = [g for g in guards if not _GUARD_EQUAL.match(g)]
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
        failure = _guard_failure(guard, code, axes, specs, index, equalities)
        if failure is None:
            continue
        # Two dims the guard relates with the same kiln.Input range (input_ids and attention_mask
        # lengths: `ids - mask <= 0`) are meant to be equal: tied, the guard may hold everywhere.
        for (_, ka, da, ra), (_, kb, db, rb) in itertools.combinations(axes, 2):
            tie = ((ka, da), (kb, db))
            if (
                ra == rb
                and _guard_failure(guard, code, axes, specs, index, [*equalities, tie]) is None
            ):
                log(
                    "warning",
                    f"kiln.compile: input {input_names[kb]} dim {db} is taken to equal input "
                    f"{input_names[ka]} dim {da} (they share a range and the export guard {guard} "
                    "holds when they are equal); the compiled module checks it on every call",
                )
                equalities.append(tie)
                break
        else:
            raise _C.KilnError(
                f"kiln.compile: torch.export traced the model under the guard {guard}, which "
                f"fails at {failure} inside the kiln.Input ranges: the model's code branches on "
                "these sizes. Narrow the ranges to where the guard holds, or make the dims "
                "static."
            )
    return equalities


_GUARD_BUILTINS = {"abs": abs, "min": min, "max": max, "int": int, "float": float, "math": math}


def _guard_failure(guard, code, axes, specs, index, equalities) -> str | None:
    """None when the guard holds at every combination of the axes' sizes that the equalities
    allow, else the first failing combination ("a dim 0 = 2, b dim 0 = 3")."""
    for values in itertools.product(*(a[3] for a in axes)):
        shapes = [list(s.opt_shape) for s in specs]
        for (_, k, d, _), v in zip(axes, values, strict=True):
            shapes[k][d] = v
        if not _tie(shapes, equalities, {(k, d) for _, k, d, _ in axes}):
            continue  # sizes the inputs may not have together (an equality guard)
        sizes = {name: _Sizes(shapes[k]) for name, k in index.items()}
        try:
            # torch's own guard code, evaluated as program.module() does, on sizes only.
            holds = eval(code, {"__builtins__": _GUARD_BUILTINS}, {"L": sizes})  # noqa: S307
        except Exception as error:  # noqa: BLE001
            raise _C.KilnError(
                f"kiln.compile: cannot check the export guard {guard}: {error}"
            ) from error
        if not holds:
            return ", ".join(
                f"{n} dim {d} = {v}" for (n, _, d, _), v in zip(axes, values, strict=True)
            )
    return None


def _tie(shapes: list[list[int]], equalities, enumerated: set) -> bool:
    """Makes the sizes an equality guard ties equal (the enumerated one wins); False when two
    enumerated sizes it ties differ."""
    for a, b in equalities:
        (ka, da), (kb, db) = a, b
        if a in enumerated and b in enumerated:
            if shapes[ka][da] != shapes[kb][db]:
                return False
        elif b in enumerated:
            shapes[ka][da] = shapes[kb][db]
        else:
            shapes[kb][db] = shapes[ka][da]
    return True


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
