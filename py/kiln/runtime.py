"""Kiln engines inside torch: ``torch.classes.kiln.Engine`` and ``torch.ops.kiln.execute_engine``.

Both come from ``libkiln_runtime.so`` (runtime/), an optional part of Kiln that is built when torch
is present. It is loaded once, on first use (``TorchEngine``, ``EngineModule``, ``load_library``),
and by ``import kiln`` when torch is already imported, so that ``torch.jit.load`` and
``torch.export.load`` of saved modules work after ``import torch, kiln``.

    engine = kiln.runtime.TorchEngine(plan, "cuda")      # plan: kiln.Plan or its bytes; or "cpu"
    module = kiln.runtime.EngineModule(engine)           # forward(*inputs), one arg per input
    y = module(x)                                        # torch tensors in, torch tensors out

``execute_engine`` allocates outputs through torch's caching allocator and enqueues on torch's
current CUDA stream without synchronizing; engines on the CPU take CPU tensors. The fake
implementation here lets ``torch.export`` trace modules that call the op.
"""

from __future__ import annotations

import keyword
import linecache
import threading
import typing
from pathlib import Path

import torch

from kiln.dtypes import backend_name, device_name, device_of_backend, renamed, torch_dtype

LIBRARY_PATH = Path(__file__).with_name("libkiln_runtime.so")

_lock = threading.Lock()
_loaded = False


def is_available() -> bool:
    """True when this Kiln was built with its torch runtime (libkiln_runtime.so)."""
    return LIBRARY_PATH.exists()


def load_library() -> None:
    """Loads libkiln_runtime.so into torch (once); a clear RuntimeError when it is missing."""
    global _loaded
    with _lock:
        if _loaded:
            return
        if not LIBRARY_PATH.exists():
            raise RuntimeError(
                f"Kiln's torch runtime is not installed ({LIBRARY_PATH} is missing): this Kiln was "
                "built without torch. Install torch, then rebuild Kiln (the runtime is built when "
                "torch is found; CMake option KILN_BUILD_RUNTIME)."
            )
        torch.ops.load_library(str(LIBRARY_PATH))
        torch.library.register_fake("kiln::execute_engine")(_fake_execute_engine)
        _loaded = True


def TorchEngine(plan, device: str | None = None, *, backend: str | None = None):  # noqa: N802
    """A ``torch.classes.kiln.Engine`` from a kiln.Plan or plan bytes (the name reads as the
    class it returns).

    device: "cuda" (the default when the plan was built for a GPU and one is visible: the current
    CUDA device), "cuda:N" or "cpu" (the CPU reference backend); a torch.device too.
    ``backend=`` ("reference" for "cpu") is its deprecated name.
    """
    load_library()
    from kiln import _C

    if isinstance(plan, bytes | bytearray | memoryview):
        plan = _C.Plan.deserialize(bytes(plan))
    if backend is not None:
        backend = device_of_backend(backend)
    device = renamed("kiln.runtime.TorchEngine", "backend", "device", backend, device)
    if device is None:
        device = "cuda" if plan.header["sm_arch"] and _C.cuda_device_count() > 0 else "cpu"
    return engine_from_plan(plan, torch.device(device_name(device)))


def engine_from_plan(plan, device: torch.device, *, cuda_graphs: bool = True):
    """A ``torch.classes.kiln.Engine`` made from a kiln.Plan in memory (kiln._torch): nothing is
    serialized or parsed; the engine serializes its plan only when it is pickled (saved)."""
    load_library()
    from kiln import _torch

    index = -1 if device.index is None else device.index
    return _torch.make_engine(plan, backend_name(device.type), index, cuda_graphs)


ENGINE_CLASS = "__torch__.torch.classes.kiln.Engine"


def is_engine(value) -> bool:
    """True for a torch.classes.kiln.Engine object."""
    return isinstance(value, torch.ScriptObject) and value._type().qualified_name() == ENGINE_CLASS


def engines(module) -> list:
    """The torch.classes.kiln.Engine objects a module runs: a module from kiln.compile (either
    frontend), kiln.load, torch.jit.load or torch.export.load(...).module()."""
    load_library()
    from kiln import _torch

    found, seen = [], set()

    def visit(m) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        if isinstance(m, torch.jit.ScriptModule):
            found.extend(_torch.script_engines(m))  # its submodules' engines too
            return
        found.extend(v for v in vars(m).values() if is_engine(v))
        for child in m.children():
            visit(child)

    visit(module)
    return found


def plans(module) -> list:
    """The kiln.Plan of every engine a compiled or loaded module runs (kiln.inspect them, or
    save them with Plan.save)."""
    from kiln import _C

    return [_C.Plan.deserialize(e.serialized_plan().numpy().tobytes()) for e in engines(module)]


class EngineModule(torch.nn.Module):
    """An nn.Module running one Kiln engine through ``torch.ops.kiln.execute_engine``.

    ``engine``: a ``torch.classes.kiln.Engine``, or a plan (kiln.Plan or bytes) made into one on
    ``device`` (as :func:`TorchEngine`; ``backend=`` is its deprecated name).

    ``forward`` takes one tensor per engine input, in the engine's input order, and returns one
    tensor (one output) or a tuple. The module scripts (``torch.jit.script``: its forward is
    generated with one named argument per input), saves with ``torch.jit.save`` and exports with
    ``torch.export``.
    """

    def __init__(self, engine, device: str | None = None, *, backend: str | None = None):
        super().__init__()
        if backend is not None:
            backend = device_of_backend(backend)
        device = renamed("kiln.runtime.EngineModule", "backend", "device", backend, device)
        if not isinstance(engine, torch.ScriptObject):
            engine = TorchEngine(engine, device)
        load_library()
        self.engine = engine
        self.__class__ = _module_class(engine.input_names(), len(engine.output_names()))

    def forward(self, *inputs):
        outputs = torch.ops.kiln.execute_engine(list(inputs), self.engine)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def __reduce_ex__(self, protocol):
        # The generated class cannot be pickled by reference; rebuild from the engine instead.
        return (EngineModule, (self.engine,))


_classes: dict[tuple[tuple[str, ...], int], type] = {}


def _module_class(input_names: list[str], num_outputs: int) -> type:
    """An EngineModule subclass whose forward has one named tensor argument per input.

    TorchScript compiles forward from its source and has no *args, so the source is generated
    and registered with linecache (as torch.fx does for GraphModule code).
    """
    args = _argument_names(input_names)
    key = (tuple(args), num_outputs)
    if key in _classes:
        return _classes[key]
    params = "".join(f", {a}: torch.Tensor" for a in args)
    listed = f"[{', '.join(args)}]" if args else "torch.jit.annotate(typing.List[torch.Tensor], [])"
    if num_outputs == 1:
        ret, value = "torch.Tensor", "outputs[0]"
    else:
        ret = f"typing.Tuple[{', '.join(['torch.Tensor'] * num_outputs)}]"
        value = "(" + "".join(f"outputs[{i}], " for i in range(num_outputs)) + ")"
    source = (
        f"def forward(self{params}) -> {ret}:\n"
        f"    outputs = torch.ops.kiln.execute_engine({listed}, self.engine)\n"
        f"    return {value}\n"
    )
    filename = f"<kiln.runtime.EngineModule {len(_classes)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"torch": torch, "typing": typing}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 (generated above, no user text)
    cls = type("EngineModule", (EngineModule,), {"forward": namespace["forward"]})
    cls.__module__ = __name__
    _classes[key] = cls
    return cls


def _argument_names(input_names: list[str]) -> list[str]:
    """Engine input names as Python identifiers (in0, in1, ... where a name does not fit)."""
    names: list[str] = []
    for i, name in enumerate(input_names):
        ok = name.isidentifier() and not keyword.iskeyword(name) and name not in ("self", "torch")
        ok = ok and name not in names and name not in ("outputs", "typing")
        names.append(name if ok else f"in{i}")
    if len(set(names)) != len(names):
        names = [f"in{i}" for i in range(len(input_names))]
    return names


# ---- fake (meta) implementation for torch.export / FakeTensor tracing ----------------------


def _fake_execute_engine(inputs, engine):
    names = engine.input_names()
    if len(inputs) != len(names):
        raise RuntimeError(
            f"Kiln engine takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}"
        )
    for t, name, want in zip(inputs, names, engine.input_dtypes(), strict=True):
        if t.dtype != torch_dtype(want):
            raise RuntimeError(
                f"Kiln engine input '{name}' has dtype {t.dtype}, the engine expects torch.{want}"
            )
    if engine.device_type() == "cuda":
        device = torch.device("cuda", engine.device_index())
    else:
        device = torch.device("cpu")
    shapes = _output_shapes([list(t.shape) for t in inputs], engine)
    return [
        torch.empty(shape, dtype=torch_dtype(dtype), device=device)
        for shape, dtype in zip(shapes, engine.output_dtypes(), strict=True)
    ]


def _output_shapes(input_shapes: list[list], engine) -> list[list]:
    """Output shapes for fake tracing: the engine's shape inference when the input shapes are
    concrete. With symbolic input dims, each dynamic output dim is matched to the input symbol
    it follows (found by running the inference at two probe sizes); unmatched dims get a fresh
    unbacked size."""
    static = engine.output_dims()
    if all(d >= 0 for dims in static for d in dims):
        return static
    if all(isinstance(d, int) for shape in input_shapes for d in shape):
        return engine.output_shapes(input_shapes)
    ctx = torch.library.get_ctx()

    symbols: dict[str, tuple[torch.SymInt, int, int]] = {}  # expr -> (symint, probe 1, probe 2)
    for shape in input_shapes:
        for d in shape:
            if isinstance(d, torch.SymInt) and str(d.node.expr) not in symbols:
                hint = d.node.hint
                if hint is None:
                    symbols.clear()
                    break
                symbols[str(d.node.expr)] = (d, int(hint), int(hint) + 1 + len(symbols))

    def probe(i: int) -> list[list[int]] | None:
        shapes = [
            [d if isinstance(d, int) else symbols[str(d.node.expr)][i] for d in s]
            for s in input_shapes
        ]
        try:
            return engine.output_shapes(shapes)
        except RuntimeError:
            return None

    first, second = (probe(1), probe(2)) if symbols else (None, None)
    result = []
    for k, dims in enumerate(static):
        out = []
        for j, d in enumerate(dims):
            if d >= 0:
                out.append(d)
                continue
            match = None
            if first is not None and second is not None:
                seen = (first[k][j], second[k][j])
                candidates = [s for s, a, b in symbols.values() if (a, b) == seen]
                match = candidates[0] if len(candidates) == 1 else None
                if match is None and first[k][j] == second[k][j]:
                    match = first[k][j]  # dynamic in the engine, but fixed by these inputs
            out.append(match if match is not None else ctx.new_dynamic_size())
        result.append(out)
    return result
