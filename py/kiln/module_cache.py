"""The compiled-module cache: a second kiln.compile of the same model, in a new process, without
exporting, lowering or building anything (docs/refit.md, "The engine cache").

The engine cache (core/engine_cache.h) keys each engine by the network it was converted from,
which takes the export, the decompositions and the conversion to know: seconds on a large model.
This cache, in the same directory, keys a whole compiled module by what decides the traced graph
before any tracing:

- the model's code: for every class of every submodule (and of the objects and functions its
  attributes hold), the class's source file; the versions of the packages they come from, and for
  code outside any versioned package (a project of one's own) the files of that package loaded now;
- the model's configuration: every attribute of every submodule (numbers, strings, containers,
  objects' attributes, functions' code and closures, hooks), parameter and buffer names, shapes,
  dtypes, devices and ties; the values of integer buffers and of tensor attributes (both become
  constants of the graph); not the values of floating-point parameters and buffers (a hit refits);
- the inputs (kiln.Input specs, keyword names), the options, the device and GPU, autocast and grad
  modes, the KILN_* environment, and the versions of Python, torch and Kiln (its library's
  checksum).

A hit rebuilds the compiled module from the entry (its FX graph as data, never code to run; its
engines' plans stripped of weights) and refits it with the model's weights: the engines are those
of the first compile, with this model's weights, as kiln.refit would make them.

What it cannot see: Python state the model's forward reads that no attribute holds (a
module-level variable changed at run time, an environment variable other than KILN_*, a
file read during forward). A model whose traced graph depends on such state must not use it:
``cache_dir=False`` or KILN_MODULE_CACHE=0 turns this cache off (the engine cache stays).
Models this cannot fingerprint (an attribute of a type it does not know how to read) are not
cached here; the log says why at level "verbose".
"""

from __future__ import annotations

import enum
import functools
import hashlib
import importlib.metadata
import inspect
import io
import json
import operator
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.fx
from torch.utils import _pytree as pytree

from kiln import _C
from kiln.inputs import Input
from kiln.log import log

FORMAT = 1
SUFFIX = ".kiln-module"
MAGIC = b"KILNMOD1"  # then the payload's sha256, then the payload (torch.save of plain data)


def _digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


class NotCacheable(Exception):
    """The model (or its compiled module) has something this cache does not fingerprint or
    store; the message says what."""


# ---- the key ----------------------------------------------------------------------------------

_file_hashes: dict[tuple, str] = {}


def _file_hash(path: str) -> str:
    """sha256 of a file's content, remembered per (path, size, mtime) for the process."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _file_hashes:
        _file_hashes[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _file_hashes[key]


def _package_version(package: str) -> str | None:
    module = sys.modules.get(package)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


class _Fingerprint:
    """Feeds everything that decides the traced graph into one hash (see the module's doc)."""

    MAX_ITEMS = 500_000  # a configuration larger than this is not walked: not cacheable
    MAX_DEPTH = 12

    def __init__(self):
        self.hash = hashlib.sha256()
        self.items = 0
        self.packages: set[str] = set()
        self.files: set[str] = set()
        self.seen: dict[int, int] = {}  # id -> order of first visit (shared objects, cycles)
        self.alive: list = []  # what `seen` names, kept alive: an id is never reused in a walk

    def put(self, *parts) -> None:
        self.items += 1
        if self.items > self.MAX_ITEMS:
            raise NotCacheable(f"its configuration has more than {self.MAX_ITEMS} values")
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode()
            self.hash.update(len(data).to_bytes(8, "little"))
            self.hash.update(data)

    def code_of(self, obj) -> None:
        """A class's or function's source: its file (and package) becomes part of the key."""
        module = getattr(obj, "__module__", None) or ""
        self.put("code", module, getattr(obj, "__qualname__", ""))
        package = module.split(".")[0]
        if package in ("builtins", "torch", "kiln") or not module:
            return  # covered by the torch and Kiln versions in the key
        self.packages.add(package)
        try:
            path = inspect.getsourcefile(obj) or inspect.getfile(obj)
        except (TypeError, OSError):
            path = None
        if path and os.path.isfile(path):
            self.files.add(path)
            return
        try:  # defined in a notebook cell or an interactive session: its source text
            self.put("source", inspect.getsource(obj))
        except (TypeError, OSError) as error:
            if isinstance(obj, type) and obj.__module__ == "builtins":
                return
            raise NotCacheable(
                f"the source of {module}.{getattr(obj, '__qualname__', obj)} cannot be read"
            ) from error

    def function(self, fn, depth: int) -> None:
        code = getattr(fn, "__code__", None)
        self.code_of(fn)
        if code is not None:
            self.put("co", code.co_code, code.co_names, code.co_varnames)
            self.value(tuple(c for c in code.co_consts if not isinstance(c, types.CodeType)), depth)
            for c in code.co_consts:
                if isinstance(c, types.CodeType):
                    self.put("co", c.co_code, c.co_names)
        self.value(getattr(fn, "__defaults__", None), depth)
        self.value(getattr(fn, "__kwdefaults__", None), depth)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                self.value(cell.cell_contents, depth)
            except ValueError:  # an empty cell
                self.put("empty-cell")

    def tensor(self, t: torch.Tensor, with_values: bool) -> None:
        self.put("tensor", t.dtype, tuple(t.shape), t.device.type, t.requires_grad)
        if with_values:
            data = t.detach().cpu().contiguous()
            if data.dtype.is_floating_point or data.dtype.is_complex:
                data = data.view(torch.uint8) if data.numel() else data
            self.put(data.numpy().tobytes() if data.numel() else b"")

    def value(self, v, depth: int = 0) -> None:
        if depth > self.MAX_DEPTH:
            raise NotCacheable("its attributes nest deeper than the cache reads")
        if v is None or isinstance(v, bool | int | float | complex | str | bytes):
            self.put(type(v).__name__, repr(v))
            return
        if isinstance(v, torch.dtype | torch.device | torch.layout | torch.memory_format):
            self.put(type(v).__name__, v)
            return
        if isinstance(v, torch.Size):
            self.put("size", tuple(v))
            return
        if isinstance(v, torch.Tensor):  # a plain tensor attribute: a constant of the graph
            self.tensor(v, with_values=True)
            return
        if isinstance(v, torch.nn.Module):
            self.put("module", self.seen.get(id(v), "?"))  # walked as a submodule (or not used)
            return
        key = id(v)
        if key in self.seen:
            self.put("ref", self.seen[key])
            return
        self.seen[key] = len(self.seen)
        self.alive.append(v)
        if isinstance(v, tuple | list | set | frozenset):
            items = sorted(v, key=repr) if isinstance(v, set | frozenset) else v
            self.put(type(v).__name__, len(items))
            for item in items:
                self.value(item, depth + 1)
            return
        if isinstance(v, dict):
            self.put(type(v).__name__, len(v))
            for k, item in v.items():
                self.value(k, depth + 1)
                self.value(item, depth + 1)
            return
        if isinstance(v, type):
            self.code_of(v)
            return
        if isinstance(v, types.FunctionType):
            self.function(v, depth + 1)
            return
        if isinstance(v, types.MethodType):
            self.put("method")
            self.function(v.__func__, depth + 1)
            self.value(v.__self__, depth + 1)
            return
        if isinstance(v, types.BuiltinFunctionType | types.ModuleType):
            self.put(type(v).__name__, getattr(v, "__module__", ""), getattr(v, "__name__", ""))
            return
        if isinstance(v, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
            self.put("op", v)
            return
        if hasattr(v, "__dict__") or hasattr(type(v), "__slots__"):
            # An object (a transformers config, a functools.partial, an enum member): its class
            # and its state.
            self.code_of(type(v))
            state = dict(getattr(v, "__dict__", {}))
            for slot in getattr(type(v), "__slots__", ()):
                if isinstance(slot, str) and hasattr(v, slot):
                    state[slot] = getattr(v, slot)
            if isinstance(v, functools.partial):
                state = {"func": v.func, "args": v.args, "keywords": v.keywords}
            elif isinstance(v, enum.Enum):
                state = {"value": v.value}
            self.value(state, depth + 1)
            return
        raise NotCacheable(f"an attribute is a {type(v).__module__}.{type(v).__qualname__}")

    def module_tree(self, model: torch.nn.Module) -> None:
        names: dict[int, str] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.put("submodule", name, names.setdefault(id(m), name))
            self.seen.setdefault(id(m), len(self.seen))
            self.alive.append(m)
        for name, m in model.named_modules():
            for cls in type(m).__mro__:
                if cls in (torch.nn.Module, object):
                    break
                self.code_of(cls)
            for attr, v in sorted(m.__dict__.items()):
                if attr in ("_parameters", "_buffers", "_modules", "training"):
                    continue  # tensors below; submodules walked; exported in eval mode always
                self.put("attr", name, attr)
                self.value(v)
        ties: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.put("parameter", name, ties.setdefault(id(p), name))
            self.tensor(p, with_values=False)
        for name, b in model.named_buffers(remove_duplicate=False):
            self.put("buffer", name, ties.setdefault(id(b), name))
            # Integer buffers are constants of the engines; float ones are weights (refitted).
            self.tensor(b, with_values=not (b.is_floating_point() or b.is_complex()))

    def finish(self) -> str:
        for path in sorted(self.files):
            self.put("file", path, _file_hash(path))
        for package in sorted(self.packages):
            version = _package_version(package)
            if version is not None:
                self.put("package", package, version)
                continue
            # A package without a version (a project's own code): every file of it loaded now.
            for name, module in sorted(sys.modules.items()):
                path = getattr(module, "__file__", None)
                if (name == package or name.startswith(package + ".")) and path:
                    if os.path.isfile(path):
                        self.put("file", path, _file_hash(path))
        return self.hash.hexdigest()


def key(model, specs: Sequence[Input], kwarg_names: Sequence[str], options: dict) -> str:
    """The cache key of compiling `model` for `specs` with kiln.compile's `options` (its keyword
    arguments that decide the result); raises NotCacheable."""
    f = _Fingerprint()
    f.put("kiln module cache", FORMAT, _C.version(), _C.library_checksum(), torch.__version__)
    f.put(sys.version, torch.version.cuda, torch.backends.cudnn.version() if _cudnn() else None)
    device = options["device"]
    f.put("device", device)
    if device.type == "cuda":
        f.put(torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
    for kind in ("cpu", "cuda"):
        f.put("autocast", kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
    f.put("grad", torch.is_grad_enabled())
    f.value(sorted((k, v) for k, v in os.environ.items() if k.startswith("KILN_")))
    f.value({k: v for k, v in sorted(options.items()) if k != "device"})
    for s in specs:
        f.put("input", s.min_shape, s.opt_shape, s.max_shape, s.dtype, s.name)
    f.value(list(kwarg_names))
    f.value(
        (
            torch.nn.modules.module._global_forward_hooks,
            torch.nn.modules.module._global_forward_pre_hooks,
        )
    )
    f.module_tree(model)
    return f.finish()


def _cudnn() -> bool:
    return torch.backends.cudnn.is_available()


# ---- entries: the compiled module as data -------------------------------------------------------

_FUNCTIONS = {"operator.getitem": operator.getitem}


def _encode_arg(a):
    if isinstance(a, torch.fx.Node):
        return {"node": a.name}
    if a is None or isinstance(a, bool | int | float | str):
        return a
    if isinstance(a, tuple | list):
        return {type(a).__name__: [_encode_arg(x) for x in a]}
    if isinstance(a, dict):
        return {"dict": [[k, _encode_arg(v)] for k, v in a.items()]}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).removeprefix("torch.")}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    if isinstance(a, torch.layout | torch.memory_format):
        return {type(a).__name__: str(a).removeprefix("torch.")}
    if isinstance(a, slice):
        return {"slice": [_encode_arg(a.start), _encode_arg(a.stop), _encode_arg(a.step)]}
    raise NotCacheable(f"a node argument is a {type(a).__name__}")


def _decode_arg(a, env: dict):
    if not isinstance(a, dict):
        return a
    ((kind, v),) = a.items()
    if kind == "node":
        return env[v]
    if kind in ("tuple", "list"):
        items = [_decode_arg(x, env) for x in v]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: _decode_arg(x, env) for k, x in v}
    if kind == "slice":
        return slice(*(_decode_arg(x, env) for x in v))
    if kind == "device":
        return torch.device(v)
    if kind in ("dtype", "layout", "memory_format"):
        value = getattr(torch, v)
        if type(value).__name__ != kind:
            raise ValueError(f"{v} is not a torch.{kind}")
        return value
    raise ValueError(f"unknown argument kind {kind!r}")


# The tensor methods a compiled graph calls (assemble.py: float64 values narrowed for engines).
_METHODS = frozenset({"to"})


def _encode_target(node: torch.fx.Node):
    t = node.target
    if node.op == "call_method" and t not in _METHODS:
        raise NotCacheable(f"the compiled graph calls the tensor method {t!r}")
    if node.op != "call_function":
        if not isinstance(t, str):
            raise NotCacheable(f"a {node.op} node's target is a {type(t).__name__}")
        return t
    if isinstance(t, torch._ops.OpOverload):
        return {"op": [t._schema.name, t._overloadname]}
    for name, fn in _FUNCTIONS.items():
        if t is fn:
            return {"function": name}
    raise NotCacheable(f"the compiled graph calls {getattr(t, '__name__', t)}")


def _decode_target(op: str, t):
    if op == "call_method" and t not in _METHODS:
        raise ValueError(f"the entry calls the tensor method {t!r}")
    if op not in (
        "placeholder",
        "get_attr",
        "call_module",
        "call_method",
        "call_function",
        "output",
    ):
        raise ValueError(f"unknown node kind {op!r}")
    if op != "call_function":
        return t
    if "function" in t:
        return _FUNCTIONS[t["function"]]
    qualified, overload = t["op"]
    namespace, name = qualified.split("::")
    packet = getattr(getattr(torch.ops, namespace), name)
    return getattr(packet, overload or "default")


def _entry(compiled) -> dict:
    """The compiled module as plain data (torch.load(weights_only=True) reads it back)."""
    from kiln import runtime
    from kiln.serialize import OUTPUT_FILE, _output_file

    gm = compiled.graph_module
    info = compiled.refit_info
    if info is None or info.blocked:
        raise NotCacheable("it cannot be refitted" + (f" ({info.blocked})" if info else ""))
    nodes = [
        [n.op, n.name, _encode_target(n), _encode_arg(n.args), _encode_arg(n.kwargs)]
        for n in gm.graph.nodes
    ]
    engines, buffers = {}, {}
    for name, m in gm.named_children():
        if not isinstance(m, runtime.EngineModule):
            raise NotCacheable(f"its compiled graph holds a {type(m).__name__}")
        engines[name] = bytes(runtime.plans(m)[0].serialize(strip_weights=True))
    weights = set(info.torch_weights)
    for name, b in gm.named_buffers():
        # A weight PyTorch code reads comes from the model at a hit; a constant is stored.
        buffers[name] = (
            [str(b.dtype).removeprefix("torch."), list(b.shape), str(b.device)]
            if name in weights
            else b.detach().cpu()
        )
    out = _output_file(compiled._out_spec)
    return {
        "format": FORMAT,
        "nodes": nodes,
        "engines": engines,
        "buffers": buffers,
        "param_sources": dict(gm._kiln_param_sources),
        "out_spec": pytree.treespec_dumps(compiled._out_spec),
        "output_types": json.loads(out[OUTPUT_FILE])["types"] if out else [],
        "report": compiled.report.to_dict() if compiled.report is not None else None,
        "inputs": [
            [list(s.min_shape), list(s.opt_shape), list(s.max_shape), str(s.dtype), s.name]
            for s in compiled.inputs
        ],
        "device": str(compiled.device),
        "kwarg_names": list(compiled.kwarg_names),
        "equal_sizes": [[list(a), list(b)] for a, b in compiled.equal_sizes],
        "refit": {"torch_weights": dict(info.torch_weights), "baked": sorted(info.baked)},
    }


def _module_from(entry: dict, model, cuda_graphs: bool):
    """The CompiledModule an entry describes, its engines refitted with `model`'s weights."""
    from kiln import runtime
    from kiln.compiler import CompiledModule, CompileReport
    from kiln.refitting import RefitInfo, refit, state_of, weight_tensor_clone
    from kiln.serialize import _import_output_types

    if entry.get("format") != FORMAT:
        raise ValueError(f"entry format {entry.get('format')}, this Kiln reads {FORMAT}")
    device = torch.device(entry["device"])
    root = torch.nn.Module()
    for name, plan_bytes in entry["engines"].items():
        plan = _C.Plan.deserialize(plan_bytes)
        root.add_module(
            name,
            runtime.EngineModule(runtime.engine_from_plan(plan, device, cuda_graphs=cuda_graphs)),
        )
    for name, b in entry["buffers"].items():
        if isinstance(b, torch.Tensor):
            root.register_buffer(name, b.to(device) if device.type == "cuda" else b)
        else:
            dtype, shape, where = b
            root.register_buffer(
                name, torch.empty(shape, dtype=getattr(torch, dtype), device=where)
            )
    graph = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    for op, name, target, args, kwargs in entry["nodes"]:
        node = graph.create_node(
            op,
            _decode_target(op, target),
            _decode_arg(args, env),
            _decode_arg(kwargs, env),
            name=name,
        )
        env[name] = node
    gm = torch.fx.GraphModule(root, graph, "KilnCompiledGraph")
    gm._kiln_param_sources = dict(entry["param_sources"])
    _import_output_types(entry["output_types"], "the engine cache entry")
    report = entry["report"]
    specs = [
        Input(
            min_shape=lo,
            opt_shape=opt,
            max_shape=hi,
            dtype=getattr(torch, d.removeprefix("torch.")),
            name=n,
        )
        for lo, opt, hi, d, n in entry["inputs"]
    ]
    compiled = CompiledModule(
        gm,
        pytree.treespec_loads(entry["out_spec"]),
        CompileReport.from_dict(report) if report is not None else None,
        specs,
        device,
        entry["kwarg_names"],
        [(tuple(a), tuple(b)) for a, b in entry["equal_sizes"]],
    )
    state = state_of(model)
    compiled.refit_info = RefitInfo(
        frozenset(state),
        dict(entry["refit"]["torch_weights"]),
        {name: weight_tensor_clone(state[name]) for name in entry["refit"]["baked"]},
    )
    refit(compiled, state)
    return compiled


def load(directory: str, cache_key: str, model, cuda_graphs: bool):
    """The compiled module cached under `cache_key`, refitted with `model`'s weights; None on a
    miss. A damaged or foreign entry is removed with a warning (the compile runs as usual)."""
    path = Path(directory) / (cache_key + SUFFIX)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        payload = data[len(MAGIC) + 32 :]
        if data[: len(MAGIC)] != MAGIC or data[len(MAGIC) : len(MAGIC) + 32] != _digest(payload):
            raise ValueError("not a compiled-module entry of this format, or damaged (checksum)")
        entry = torch.load(io.BytesIO(payload), weights_only=True)
        if entry.get("key") != cache_key:
            raise ValueError("it holds another key")
        compiled = _module_from(entry, model, cuda_graphs)
    except Exception as error:  # noqa: BLE001 (a damaged entry fails in many ways: all are a miss)
        log(
            "warning",
            f"kiln.compile: ignoring and removing the cache entry {path}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}; "
            "compiling as usual",
        )
        path.unlink(missing_ok=True)
        return None
    os.utime(path)  # most recently used
    log("info", f"kiln.compile: compiled-module cache hit {path}")
    return compiled


def store(directory: str, cache_key: str, compiled, max_bytes: int) -> None:
    """Stores `compiled` under `cache_key` (written to a temporary file and renamed: readers never
    see half an entry) and trims the directory. A module it cannot store, or a failed write, is
    logged; the compile's result stands."""
    try:
        entry = _entry(compiled)
    except NotCacheable as reason:
        log("verbose", f"kiln.compile: the compiled module is not cached: {reason}")
        return
    entry["key"] = cache_key
    path = Path(directory) / (cache_key + SUFFIX)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{id(entry)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(entry, buffer)
        payload = buffer.getvalue()
        tmp.write_bytes(MAGIC + _digest(payload) + payload)
        os.replace(tmp, path)
        _C.engine_cache_trim(directory, max_bytes)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        log("warning", f"kiln.compile: the compiled module is not cached ({error})")
