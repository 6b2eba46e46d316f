"""torch.compile(model, backend="kiln"): Kiln as a torch._dynamo backend.

Dynamo captures FX graphs from running Python code and hands each to this backend with example
inputs. The backend compiles the graph with :func:`kiln.compile` (export -> KGraph -> partition ->
engines) and returns a callable that runs the engines. Whatever Kiln cannot compile runs as
dynamo captured it: eagerly, with a warning through Kiln's logger, so existing code never breaks.

Options (``torch.compile(model, backend="kiln", options={...})``):
  enabled_precisions (or precisions), min_block_size, torch_executed_ops,
  require_full_compilation, workspace_size, optimization_level, device, debug, timing_cache,
  tactic_timing, cuda_graphs, truncate_double: as kiln.compile.
  max_dynamic_size: the largest size of every dynamic dim (default: 2x the example size).
  fallback (default True): False raises Kiln's error instead of running the graph eagerly.

Graphs that run eagerly (``fallback``): graphs that need autograd (grad mode on and an input or
weight requires grad: the training step), graphs that mutate module state (BatchNorm in training
mode), graphs with inputs on a device Kiln has no engine for, and graphs Kiln fails to compile.

Weights. Kiln bakes weights into its engines as constants, but dynamo passes them to the graph on
every call (with inline_inbuilt_nn_modules, parameters and buffers are graph inputs). The policy
is *refit on change*: per compiled graph the backend records, for each parameter and buffer that
became a constant, the tensor object, its version counter (``t._version``, bumped by every
in-place update: ``p.add_()``, optimizer steps, ``load_state_dict``) and its data pointer. Every
call compares them (a few attribute reads per weight, microseconds for hundreds of weights); on
any difference the engines are refitted from the current weights (kiln.refit: no export, no
conversion, no build) before the call runs, so a changed weight never gives a stale result. A
weight whose shape or dtype changed, or a dynamic size past its range, rebuilds the engines
instead (a full kiln.compile); a changed Python number or baked size builds for the new value
(at most MAX_SIZE_BUILDS more; the last MAX_VARIANTS builds are kept, and a call with values one
of them was made for switches to it). :func:`stats` counts builds and refits. Not seen: writes
through ``p.data`` (``p.data.copy_(w)``), which share the storage but not the version counter;
call :func:`weights_changed` after such writes.

Dynamic shapes. A dim dynamo made dynamic (a SymInt in the graph) becomes a kiln.Input range:
min 1, opt the example size, max ``max_dynamic_size`` (default twice the example size). A call
with a size past the range rebuilds the engines for it (opt and the range around the new size).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import re

import torch
import torch.fx
from torch.utils import _pytree as pytree

from kiln.dtypes import device_name
from kiln.inputs import Input
from kiln.log import log, torch_noise_filtered

NAME = "kiln"

_COMPILE_OPTIONS = (
    "enabled_precisions",
    "min_block_size",
    "torch_executed_ops",
    "torch_ops_in_engine",
    "require_full_compilation",
    "workspace_size",
    "optimization_level",
    "device",
    "debug",
    "timing_cache",
    "cache_dir",
    "cache_size",
    "tactic_timing",
    "cuda_graphs",
    "truncate_double",
)
_OPTIONS = (*_COMPILE_OPTIONS, "precisions", "max_dynamic_size", "fallback")

_generation = 0  # bumped by weights_changed(): every compiled graph refits on its next call
_stats = {"builds": 0, "refits": 0}
_graph_ids = itertools.count(1)  # the log's name for each graph


def weights_changed() -> None:
    """Makes every graph compiled by the "kiln" backend take its weights again (a refit) on its
    next call.

    Needed only after weight writes that bypass the version counter (``p.data.copy_(w)``)."""
    global _generation
    _generation += 1


def stats() -> dict[str, int]:
    """{"builds": full compiles, "refits": weight refits} of the "kiln" backend in this process."""
    return dict(_stats)


def reset_stats() -> None:
    _stats.update(builds=0, refits=0)


def backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None, **_):
    """The torch._dynamo backend: returns a callable with gm's signature."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"kiln backend: unknown options {unknown}; known: {sorted(_OPTIONS)}")
    return _KilnGraph(gm, list(example_inputs), options)


# Builds of one dynamo graph for further values of a size or a number its engines were built for
# one value of (a size input no tensor input has, a dim export or Kiln could not keep dynamic, a
# Python number dynamo passes as a tensor): beyond this many, the graph runs eagerly.
MAX_SIZE_BUILDS = 3
# Builds of one graph kept at once: a graph called with values of several builds in turn (a
# detector's remove_small_boxes, one code path with min_size 1e-3 for proposals and 1e-2 for
# detections) switches between them instead of building again each call.
MAX_VARIANTS = 4
# Each kept build holds its own copy of the weights it baked: a graph keeps fewer builds when
# their weights together would pass this (always the one in use).
MAX_KEPT_WEIGHT_BYTES = 256 << 20
# What one build is: its engines and what they were built for.
_BUILD_STATE = (
    "compiled",
    "user",
    "dynamic",
    "baked_scalars",
    "baked_sizes",
    "baked",
    "generation",
)
# Exports of one build, each after making the dynamic dims static that the last one rejected.
MAX_EXPORT_TRIES = 4


class _KilnGraph:
    """One dynamo graph: its engines, the weights they baked in, and the eager fallback."""

    def __init__(self, gm: torch.fx.GraphModule, examples: list, options: dict):
        self.gm = gm
        self.options = options
        self.fallback = bool(options.get("fallback", True))
        self.placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.weights = [i for i, n in enumerate(self.placeholders) if _is_weight(n, examples[i])]
        # Python numbers dynamo passes as 0-dim tensors (dynamic=True makes BatchNorm's eps one):
        # baked like weights, checked by value.
        self.scalars = [i for i, n in enumerate(self.placeholders) if _is_scalar(n)]
        self.compiled = None  # kiln CompiledModule, or None while running eagerly
        self.baked_scalars, self.baked_sizes = {}, {}
        self.size_builds = 0  # builds for another value of a size or number built for one (capped)
        self.variants = []  # the kept builds (_BUILD_STATE), the one in use first
        self.id = next(_graph_ids)  # names the graph in the log: a rebuild logs the same id
        # Built on the first call, outside dynamo's tracing (torch.export inside a dynamo backend
        # leaks guards into the frame being compiled), with that call's real tensors.
        reason = _eager_reason(examples)
        self.pending = not reason
        if reason:
            log("info", f"kiln backend: graph runs in PyTorch: {reason}")

    # ---- call ---------------------------------------------------------------------------------

    def __call__(self, *args):
        if self.pending:
            self.pending = False
            self._build(list(args))
        if self.compiled is None:
            return self.gm(*args)
        stale = self._stale(args)
        if stale in ("rebuild", "size") and self._switch(args):
            stale = self._stale(args)  # another kept build was made for these values
        if stale == "weights" and not self._refit(args):
            stale = "rebuild"
        if stale == "rebuild":  # a wider range, or new weights: the build in use is superseded
            self.variants = self.variants[1:]
        if stale == "size":  # a baked size or number took another value: a build per value, capped
            self.size_builds += 1
            if self.size_builds > MAX_SIZE_BUILDS:
                self._give_up(
                    f"a size or number it was built for one value of took more than "
                    f"{MAX_SIZE_BUILDS + 1} values (each needs its own build)"
                )
                return self.gm(*args)
            stale = "rebuild"
        if stale == "rebuild":
            self._build(list(args))
            if self.compiled is None:
                return self.gm(*args)
        try:
            with _autocast_off():  # forward: no hook can be on this module of ours
                return self.compiled.forward(*[args[i] for i in self.user])
        except Exception as e:  # noqa: BLE001 (never break the caller's code)
            if not self.fallback:
                raise
            self._give_up(f"the engines failed at run time: {e}")
            return self.gm(*args)

    def _stale(self, args) -> str | None:
        """None: the engines are current; "weights": only weight values changed (a refit
        updates them); "rebuild": a dynamic size left its range; "size": a number or a size the
        engines were built for one value of (a Python number dynamo passes as a tensor, a size
        input no tensor has, a dim export needed static) took another."""
        for i, value in self.baked_scalars.items():
            if args[i].item() != value:
                return "size"
        for i, value in self.baked_sizes.items():
            if int(args[i]) != value:
                return "size"
        for i, d, lo, hi in self.dynamic:
            if not lo <= args[i].shape[d] <= hi:
                return "size" if lo == hi else "rebuild"  # lo == hi: built for one size
        if self.generation != _generation:
            return "weights"
        for i, (t, version, ptr) in self.baked.items():
            a = args[i]
            if a is not t or a._version != version or a.data_ptr() != ptr:
                return "weights"
        return None

    def _refit(self, args) -> bool:
        """Takes the current weight values into the engines without rebuilding them; False when
        refit cannot (a weight changed shape or dtype, say): the caller rebuilds."""
        from kiln.refitting import refit

        try:
            refit(self.compiled, {f"kiln_weight_{i}": args[i] for i in self.weights})
        except Exception as e:  # noqa: BLE001 (a rebuild follows)
            log("info", f"kiln backend: rebuilding instead of refitting: {e}")
            return False
        self._remember_weights(args)
        self.variants[0].update(baked=self.baked, generation=self.generation)
        _stats["refits"] += 1
        return True

    def _switch(self, args) -> bool:
        """Makes a kept build that was made for these values the one in use (its weights may
        still need a refit); False, changing nothing, when none was."""
        current = self._state()
        for k, variant in enumerate(self.variants[1:], start=1):
            self._load(variant)
            if self._stale(args) in (None, "weights"):
                self.variants.insert(0, self.variants.pop(k))
                return True
        self._load(current)
        return False

    def _state(self) -> dict:
        return {name: getattr(self, name, None) for name in _BUILD_STATE}

    def _load(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def _keep(self, args) -> None:
        """Keeps the build just made, first; the least recently used beyond MAX_VARIANTS, or
        beyond MAX_KEPT_WEIGHT_BYTES of baked weights, goes."""
        weight_bytes = sum(args[i].nbytes for i in self.weights)
        room = MAX_KEPT_WEIGHT_BYTES // weight_bytes if weight_bytes else MAX_VARIANTS
        self.variants = [v for v in self.variants if v["compiled"] is not self.compiled]
        self.variants.insert(0, self._state())
        del self.variants[max(1, min(MAX_VARIANTS, room)) :]

    def _remember_weights(self, args) -> None:
        self.baked = {i: (args[i], args[i]._version, args[i].data_ptr()) for i in self.weights}
        self.generation = _generation

    def _export_and_build(self, args, device, gm, autocast, static: set) -> None:
        """torch.export of the graph, then kiln.compile. Every dynamic dim not in `static` is
        dynamic first; a dim whose guards need a narrower set of values than 1..max (an even
        size, say) is then made static for this build, named by export's error, and export runs
        again."""
        from kiln.compiler import compile as kiln_compile

        opts = self.options
        static = set(static)
        for _ in range(MAX_EXPORT_TRIES):
            specs, examples, export_dims, syms = self._export_inputs(args, device, static)
            module = _GraphModule(
                gm, len(args), self.user, self.weights, syms, self.baked_sizes, args, autocast
            )
            try:
                with torch.no_grad(), _autocast_off(), torch_noise_filtered():
                    program = torch.export.export(
                        module, tuple(examples), dynamic_shapes=tuple(export_dims)
                    )
                break
            except Exception as e:  # noqa: BLE001 (a constraint violation names its dims)
                names = set(re.findall(r"\bkiln_(s\d+)\b", str(e))) - static
                if "Constraints violated" not in str(e) or not names:
                    raise
                static |= names
        else:
            raise RuntimeError(f"export kept rejecting dynamic dims after {MAX_EXPORT_TRIES} tries")
        with torch.no_grad(), _autocast_off(), torch_noise_filtered():
            precisions = opts.get("enabled_precisions", opts.get("precisions", (torch.float32,)))
            kwargs = {k: opts[k] for k in _COMPILE_OPTIONS if k in opts and k != "device"}
            kwargs["enabled_precisions"] = precisions  # every spelling kiln.dtypes knows
            self.compiled = kiln_compile(program, specs, device=device, **kwargs)

    def _export_inputs(self, args: list, device, static: set):
        """For this call's tensors: kiln Input specs, export examples, export's dynamic_shapes
        (one export Dim per symbol: inputs that share a size share the Dim; the symbols in
        `static` stay at this call's size) and the size inputs read from tensor dims. Sets
        self.dynamic (the ranges a later call must stay in) and self.baked_sizes (size inputs
        that are no tensor's size: constants of this build)."""
        opts = self.options
        dims, specs, examples, export_dims, self.dynamic = {}, [], [], [], []
        for i in self.user:
            t = args[i]
            fake = _meta(self.placeholders[i])
            lo, opt, hi, shapes = list(t.shape), list(t.shape), list(t.shape), {}
            for d, s in enumerate(getattr(fake, "shape", ())):
                if not isinstance(s, torch.SymInt) or s.node.expr.is_number:
                    continue  # static, or specialized by a guard
                if not s.node.expr.is_symbol:
                    raise TypeError(f"input {self.placeholders[i].name} has a size {s}")
                size = int(t.shape[d])
                name = str(s.node.expr)
                if name in static:  # its guards need this build to be for this size
                    self.dynamic.append((i, d, size, size))
                    continue
                top = int(opts.get("max_dynamic_size") or 2 * max(size, 1))
                lo[d], hi[d] = 1, max(top, size, 2)
                if name not in dims:
                    dims[name] = (torch.export.Dim(f"kiln_{name}", min=lo[d], max=hi[d]), i, d)
                shapes[d] = dims[name][0]
                self.dynamic.append((i, d, lo[d], hi[d]))
            spec = Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=t.dtype)
            specs.append(spec)
            small = any(t.shape[d] < 2 for d in shapes)  # export specializes a traced 0/1 size
            examples.append((spec.example(device) if small else t.detach()).to(device))
            export_dims.append(shapes or None)
        syms = {}  # SymInt placeholder -> (user input position, dim) it is read from
        self.baked_sizes = {}  # SymInt placeholder no tensor input has -> its value, a constant
        for i in range(len(self.placeholders)):
            meta = _meta(self.placeholders[i])
            if not isinstance(meta, torch.SymInt):
                continue
            name = str(meta.node.expr)
            if name in dims:
                syms[i] = (self.user.index(dims[name][1]), dims[name][2])
            else:  # static for this build, or a count computed in PyTorch (a detector's boxes)
                self.baked_sizes[i] = int(args[i])
        return specs, examples, export_dims, syms

    # ---- build --------------------------------------------------------------------------------

    def _build(self, args: list) -> None:
        try:
            self._compile(args)
        except Exception as e:  # noqa: BLE001
            if not self.fallback:
                raise
            self._give_up(f"Kiln could not compile it: {type(e).__name__}: {e}")

    def _give_up(self, reason: str) -> None:
        self.compiled = None
        self.variants = []
        log("warning", f"kiln backend: graph runs in PyTorch (eager): {reason}")

    def _compile(self, args: list) -> None:
        opts = self.options
        weights = set(self.weights) | set(self.scalars)
        sym_inputs = [
            i for i, n in enumerate(self.placeholders) if isinstance(_meta(n), torch.SymInt)
        ]
        self.user = [i for i in range(len(args)) if i not in weights and i not in sym_inputs]
        for i in self.user:
            if not isinstance(args[i], torch.Tensor):
                raise TypeError(f"input {self.placeholders[i].name} is not a tensor")
        device = torch.device(device_name(opts.get("device") or _device(args)))

        autocast = {
            dev: torch.get_autocast_dtype(dev)
            for dev in ("cpu", "cuda")
            if torch.is_autocast_enabled(dev)
        }
        gm = _bake_scalars(self.gm, {i: args[i].item() for i in self.scalars})
        try:
            self._export_and_build(args, device, gm, autocast, set())
        except Exception as e:  # noqa: BLE001 (one more try, built for this call's sizes)
            names = {str(s.node.expr) for s in _symbols(self.placeholders, self.user)}
            if not names:
                raise
            log("info", f"kiln backend: building for this call's sizes only: {e}")
            self._export_and_build(args, device, gm, autocast, names)
        self._remember_weights(args)
        self.baked_scalars = {i: args[i].item() for i in self.scalars}
        self._keep(args)
        _stats["builds"] += 1
        log(
            "info",
            f"kiln backend: compiled a dynamo graph (graph {self.id}): {self.compiled.report}",
        )


class _GraphModule(torch.nn.Module):
    """The dynamo graph as an nn.Module for torch.export: user tensors are forward arguments;
    weights are buffers (so export lifts them and Kiln bakes them); size inputs are read from the
    tensors; the autocast state of the call is entered explicitly (export turns it into casts)."""

    def __init__(self, gm, num_args, user, weights, syms, sizes, args, autocast):
        super().__init__()
        self.gm = gm
        self.num_args = num_args
        self.user = user
        self.syms = syms
        self.sizes = sizes
        self.autocast = autocast
        self.weight_names = {}
        for i in weights:
            name = f"kiln_weight_{i}"
            self.register_buffer(name, args[i].detach())
            self.weight_names[i] = name
        # torch.export needs named positional parameters, not *args.
        names = [f"x{k}" for k in range(len(user))]
        sig = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
        )
        self.forward = _with_signature(self._forward, sig)

    def _forward(self, *user):
        args = [None] * self.num_args
        for i, name in self.weight_names.items():
            args[i] = getattr(self, name)
        for k, i in enumerate(self.user):
            args[i] = user[k]
        for i, (k, d) in self.syms.items():
            args[i] = user[k].shape[d]
        for i, value in self.sizes.items():
            args[i] = value
        with contextlib.ExitStack() as stack:
            for dev, dtype in self.autocast.items():
                stack.enter_context(torch.autocast(dev, dtype=dtype))
            return self.gm(*args)


def _bake_scalars(gm: torch.fx.GraphModule, values: dict) -> torch.fx.GraphModule:
    """A copy of gm where `scalar.item()` of the scalar inputs at these positions are constants
    (export would treat them as data-dependent values)."""
    if not values:
        return gm
    graph = copy.deepcopy(gm.graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for i, value in values.items():
        for use in list(placeholders[i].users):
            if use.op == "call_method" and use.target == "item":
                for user in list(use.users):
                    user.args = pytree.tree_map(
                        lambda a, u=use, v=value: v if a is u else a, user.args
                    )
                    user.kwargs = pytree.tree_map(
                        lambda a, u=use, v=value: v if a is u else a, user.kwargs
                    )
                graph.erase_node(use)
    return torch.fx.GraphModule(gm, graph)


def _with_signature(fn, sig):
    def forward(*args):
        return fn(*args)

    forward.__signature__ = sig
    return forward


# ---- helpers ----------------------------------------------------------------------------------


def _symbols(placeholders, user) -> list:
    """The symbolic sizes (plain symbols) of the user tensor inputs' fake values."""
    found = []
    for i in user:
        for size in getattr(_meta(placeholders[i]), "shape", ()):
            if isinstance(size, torch.SymInt) and size.node.expr.is_symbol:
                found.append(size)
    return found


def _meta(node: torch.fx.Node):
    return node.meta.get("example_value", node.meta.get("val"))


def _is_weight(node: torch.fx.Node, example) -> bool:
    """A parameter or buffer of a module (baked into the engines), not a per-call input."""
    if not isinstance(example, torch.Tensor):
        return False
    if isinstance(example, torch.nn.Parameter):
        return True
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = getattr(source, "name", "")
    name = name() if callable(name) else str(name)
    return "._buffers[" in name or "._parameters[" in name


def _is_scalar(node: torch.fx.Node) -> bool:
    return bool(getattr(node.meta.get("grapharg"), "pass_arg_as_tensor", False))


def _eager_reason(examples) -> str:
    tensors = [e for e in examples if isinstance(e, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "it needs autograd (grad mode is on and an input requires grad)"
    devices = {t.device.type for t in tensors}
    if "cuda" in devices:
        from kiln import _C

        if _C.cuda_device_count() == 0:
            return "its tensors are on CUDA, and Kiln was built without CUDA or sees no GPU"
    if devices - {"cpu", "cuda"}:
        return f"its tensors are on {sorted(devices)}, and Kiln has engines for cpu and cuda"
    return ""


def _device(args) -> str:
    return "cuda" if any(isinstance(a, torch.Tensor) and a.is_cuda for a in args) else "cpu"


_NOTHING = contextlib.nullcontext()


def _autocast_off():
    """A context with autocast off where the caller has it on (nothing to enter otherwise: this
    runs on every call of every graph)."""
    on = [dev for dev in ("cpu", "cuda") if torch.is_autocast_enabled(dev)]
    if not on:
        return _NOTHING
    stack = contextlib.ExitStack()
    for dev in on:
        stack.enter_context(torch.autocast(dev, enabled=False))
    return stack


def register() -> None:
    """Registers the backend under "kiln" with torch._dynamo (idempotent).

    Where an installed Kiln declares the ``torch_dynamo_backends`` entry point, torch loads the
    backend from it on first use (and registers it then), so this leaves the name to it."""
    from torch._dynamo.backends import registry

    if NAME in registry._COMPILER_FNS:
        return
    with contextlib.suppress(Exception):
        registry._discover_entrypoint_backends()
    if registry._BACKENDS.get(NAME) is not None:
        return
    registry.register_backend(backend, name=NAME)


register()
