"""kiln.save / kiln.load: a compiled module to a file and back, as a torch archive.

    compiled = kiln.compile(model, [kiln.Input(min_shape=..., opt_shape=..., max_shape=...)])
    kiln.save(compiled, "model.pt2")                                   # an ExportedProgram
    kiln.save(compiled, "model.ts", output_format="torchscript")       # a TorchScript module
    module = kiln.load("model.pt2")                                    # either format

The files are ordinary torch archives: the engines inside are ``torch.classes.kiln.Engine``
objects (their plans pickled as described in runtime/README.md) called through
``torch.ops.kiln.execute_engine``. So after ``import torch, kiln`` (which registers the class and
the op) ``torch.export.load(path).module()`` and ``torch.jit.load(path)`` load them too, and a
LibTorch app linked with ``Kiln::runtime`` loads the TorchScript file with ``torch::jit::load``.
Ops that ran in PyTorch are saved as the ops they are: a custom op must be registered in the
loading process as well.

Formats:
  * ``"exported_program"`` (default): ``torch.export.export`` of the compiled module, then
    ``torch.export.save``. Dynamic dims come from ``inputs`` (kiln.Input ranges), by default the
    inputs the module was compiled for; the loaded module (``.module()``) accepts every size in
    those ranges and returns the original output structure. Name the file ``.pt2``
    (torch.export.load warns about other names, then loads them anyway).
  * ``"torchscript"``: ``torch.jit.script`` of the compiled FX graph (op overloads such as
    ``aten.view.default`` are written as their packets, ``aten.view``, which TorchScript resolves
    by argument types), then ``torch.jit.save``. Scripting keeps symbolic sizes symbolic, so
    dynamic dims stay dynamic in the PyTorch parts too. Should scripting fail, a module whose
    inputs are all static is traced instead (``torch.jit.trace`` with the example inputs: a
    straight-line graph traces exactly at those shapes); a dynamic one raises a KilnError, since a
    trace would fix the sizes the PyTorch parts compute with.

Both formats carry the module's CompileReport as an extra file, ``kiln_report.json``
(``CompileReport.to_dict()``); ``kiln.load`` sets it back as ``module.report``. Files written
without it (by torch.jit.save / torch.export.save, or by older Kilns) load with
``report = None``.

``kiln.load`` tells the formats apart by the archive's entries: an ExportedProgram archive has
``<name>/archive_format`` and ``<name>/models/``; a TorchScript archive ``<name>/constants.pkl``
and ``<name>/code/``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import zipfile
import zlib
from collections.abc import Sequence

import torch
import torch.fx
from torch.utils import _pytree as pytree

from kiln import _C
from kiln._C import KilnError
from kiln.inputs import Input
from kiln.log import log, quiet_torch, torch_noise_filtered

FORMATS = ("exported_program", "torchscript")

# The archive's extra file holding CompileReport.to_dict() as JSON.
REPORT_FILE = "kiln_report.json"
# The output's structure: the library types in it ("module.Class"; kiln.load imports their
# modules first, so a transformers ModelOutput loads without the user importing transformers) and,
# for TorchScript (whose modules return plain containers), the pytree spec that rebuilds it.
OUTPUT_FILE = "kiln_output.json"

# What reading a damaged zip archive raises (besides torch's own errors, wrapped where it loads).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


class KilnFileNotFoundError(KilnError, FileNotFoundError):
    """kiln.load of a path that does not exist: a KilnError, and a FileNotFoundError as open()
    raises."""


def save(
    module,
    path: str | os.PathLike,
    *,
    output_format: str = "exported_program",
    inputs: Sequence | None = None,
    strip_weights: bool = False,
) -> None:
    """Saves a module from kiln.compile to ``path`` as ``output_format``.

    output_format: "exported_program" (torch.export.save) or "torchscript" (torch.jit.save).
    inputs: one kiln.Input or example tensor per positional input (a tensor stands for its static
    shape), for export and for tracing; by default the inputs ``module`` was compiled for.
    strip_weights: the engines are saved without the constants they derive from the model's
    weights (a file about as small as the non-weight state); ``kiln.load(path, weights=...)``
    gives them back (docs/refit.md).
    """
    if output_format not in FORMATS:
        raise ValueError(
            f"kiln.save: output_format must be 'exported_program' or 'torchscript', "
            f"got {output_format!r}"
        )
    from kiln.compiler import CompiledModule

    if isinstance(module, torch.jit.ScriptModule):  # kiln.compile(ir="torchscript")'s result
        if output_format != "torchscript":
            raise ValueError(
                "kiln.save: a TorchScript module (from kiln.compile with ir='torchscript') saves "
                "with output_format='torchscript'"
            )
        torch.jit.save(module, os.fspath(path), _extra_files=_report_file(module))
        return
    if not isinstance(module, CompiledModule):
        raise TypeError(
            f"kiln.save takes the module kiln.compile returned, got {type(module).__name__}"
        )
    specs = _specs(module, inputs)
    device = module.device or torch.device("cpu")
    path = os.fspath(path)
    extra = {**_report_file(module), **_output_file(module._out_spec)}
    from kiln import runtime
    from kiln.progress import step

    engines = runtime.engines(module) if strip_weights else []
    with step(f"saving {os.path.basename(path)}"):
        try:
            for engine in engines:
                engine.set_strip_weights(True)
            if output_format == "exported_program":
                torch.export.save(_export(module, specs, device), path, extra_files=extra)
            else:
                torch.jit.save(_script(module, specs, device), path, _extra_files=extra)
        finally:
            for engine in engines:
                engine.set_strip_weights(False)


def load(
    path: str | os.PathLike,
    *,
    trusted: bool = False,
    allow_minor_version_mismatch: bool = False,
    weights=None,
):
    """Loads a module saved by kiln.save (either format) and returns it, ready to call.

    An ExportedProgram comes back as ``torch.export.load(path).module()``, a TorchScript module as
    ``torch.jit.load(path)``. ``module.report`` is the kiln.compiler.CompileReport kiln.save
    stored, or None for a file without one.

    Safe by default: an ExportedProgram archive whose pickles would call anything but the
    rebuilding of tensors and Kiln engines is refused with a KilnError naming the entry
    (torch.export.load would run it). ``trusted=True`` skips that check for files whose origin
    you trust (docs/security.md). Untrusted, the engines it holds also compile their generated
    GPU kernels again with NVRTC instead of running the cubins stored in their plans (any device
    code could hide there); ``trusted=True`` runs the stored cubins.

    Engines built by another Kiln major.minor version (or against other CUDA, cuBLASLt or cuDNN
    major.minor versions) are refused; ``allow_minor_version_mismatch=True`` accepts those of
    another minor version of the same major (the environment variable
    KILN_ALLOW_MINOR_VERSION_MISMATCH=1 does the same for every load, also in C++ apps).

    weights: for a module saved with ``strip_weights=True`` (or to load other weights into the
    engines): a state dict, an nn.Module, or the path of a ``.safetensors`` file or of a
    ``torch.save``d state dict; every engine is refitted with them (kiln.refitting.refit_engines).
    """
    from kiln import runtime

    path = os.fspath(path)
    fmt = archive_format(path)
    if fmt == "exported_program" and not trusted:
        from kiln.trust import check_archive

        check_archive(path)
    runtime.load_library()  # torch.classes.kiln.Engine and torch.ops.kiln.execute_engine
    output = _read_output_file(path)
    _import_output_types(output.get("types", []), path)
    extra = {REPORT_FILE: ""}  # the loaders fill in what the archive holds ("" when absent)
    try:
        with (
            _minor_version_mismatch_allowed(allow_minor_version_mismatch),
            _C.plan_kernel_trust(trusted),  # the engines are created inside torch's loader
            torch_noise_filtered(),
        ):
            if fmt == "exported_program":
                module = torch.export.load(path, extra_files=extra).module()
            else:
                module = torch.jit.load(path, _extra_files=extra)
    except Exception as error:  # noqa: BLE001 (torch raises many kinds; its message hides the cause)
        raise KilnError(
            f"kiln.load: {path} is {_ARCHIVE_NAMES[fmt]} archive that torch cannot load: "
            f"{_root_cause(error)}"
        ) from error
    try:
        module.report = _read_report(extra[REPORT_FILE])
    except Exception as error:  # noqa: BLE001 (json and the report's fields raise several kinds)
        raise KilnError(
            f"kiln.load: {path}: its Kiln report ({REPORT_FILE}) is damaged "
            f"({type(error).__name__}: {error}); the file was changed after kiln.save wrote it"
        ) from error
    if fmt == "torchscript" and output.get("types") and output.get("spec"):
        report = module.report
        module = StructuredOutputs(module, pytree.treespec_loads(output["spec"]))
        module.report = report
    if weights is not None:
        from kiln.refitting import refit_engines

        refit_engines(module, weights)
    if fmt == "exported_program":
        from kiln.compiler import check_tensor_inputs

        # torch's unlifted module fails obscurely on a numpy input: say what to pass instead.
        module.register_forward_pre_hook(
            lambda _, args: check_tensor_inputs(pytree.tree_leaves(args))
        )
    return module


@contextlib.contextmanager
def _minor_version_mismatch_allowed(allow: bool):
    """The engines of a loading archive are created inside torch's loader, which passes no options:
    the engine reads KILN_ALLOW_MINOR_VERSION_MISMATCH (core/plan.h), set here for the load."""
    name = "KILN_ALLOW_MINOR_VERSION_MISMATCH"
    before = os.environ.get(name)
    if allow:
        os.environ[name] = "1"
    try:
        yield
    finally:
        if allow:
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before


_ARCHIVE_NAMES = {"exported_program": "an ExportedProgram", "torchscript": "a TorchScript"}


def _root_cause(error: BaseException) -> str:
    """The innermost error of a chain, as "Type: message" (torch.export.load wraps every failure
    in "We ran into an error when deserializing the saved file"). A context raised ``from None``
    is not followed: json's JSONDecodeError hides the StopIteration of its scanner so."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            break
        error = inner
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def archive_format(path: str | os.PathLike) -> str:
    """ "exported_program" or "torchscript": which kind of torch archive ``path`` is."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise KilnFileNotFoundError(f"kiln.load: {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise KilnError(
            f"kiln.load: {path} is not a torch archive (not a zip file); kiln.load reads files "
            "written by kiln.save, torch.export.save or torch.jit.save"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [name.split("/", 1)[1] for name in archive.namelist() if "/" in name]
    except _ZIP_ERRORS as error:
        raise KilnError(
            f"kiln.load: {path} is a damaged zip archive ({type(error).__name__}: {error})"
        ) from error
    if "archive_format" in entries or any(e.startswith("models/") for e in entries):
        return "exported_program"
    if "constants.pkl" in entries and any(e.startswith("code/") for e in entries):
        return "torchscript"
    what = "a torch.save file" if "data.pkl" in entries else "a zip file"
    raise KilnError(
        f"kiln.load: {path} is {what}, neither an ExportedProgram (torch.export.save) nor a "
        "TorchScript module (torch.jit.save); save compiled modules with kiln.save"
    )


# ---- output structure -----------------------------------------------------------------------

_PLAIN_MODULES = ("builtins", "collections", "torch.fx.immutable_collections")


def _spec_types(spec) -> list[type]:
    if spec is None or spec.is_leaf():
        return []
    found = [spec.type]
    for child in spec.children():
        found += _spec_types(child)
    return found


def _output_file(out_spec) -> dict[str, str]:
    types = sorted(
        {f"{t.__module__}.{t.__qualname__}" for t in _spec_types(out_spec)}
        - {f"{t.__module__}.{t.__qualname__}" for t in (tuple, list, dict)}
    )
    types = [t for t in types if not t.startswith(_PLAIN_MODULES)]
    if not types:
        return {}
    try:
        spec = pytree.treespec_dumps(out_spec)
    except Exception:  # noqa: BLE001 (a type without serialized_type_name: TorchScript keeps a dict)
        spec = None
    return {OUTPUT_FILE: json.dumps({"types": types, "spec": spec})}


def _read_output_file(path: str) -> dict:
    """The archive's OUTPUT_FILE (read before torch's loader, which needs the types imported)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/extra/" + OUTPUT_FILE)]
            return json.loads(archive.read(names[0])) if names else {}
    except (KeyError, ValueError, *_ZIP_ERRORS) as error:
        raise KilnError(
            f"kiln.load: {path}: its {OUTPUT_FILE} is damaged ({type(error).__name__}: {error})"
        ) from error


def _import_output_types(types: Sequence[str], path: str) -> None:
    """Imports the modules defining the output's library types (registering their pytrees)."""
    import importlib

    for name in types:
        module_name = name.rsplit(".", 1)[0] if isinstance(name, str) else ""
        if not module_name:
            continue
        try:
            importlib.import_module(module_name)
        except ImportError as error:
            package = module_name.split(".")[0]
            raise KilnError(
                f"kiln.load: {path} returns {name} objects; kiln.load imports {module_name} for "
                f"them, which failed ({error}): install {package} (pip install {package})"
            ) from error


class StructuredOutputs(torch.nn.Module):
    """A loaded TorchScript module whose outputs are rebuilt into the compiled model's structure
    (a transformers ModelOutput, say), as the ExportedProgram format returns them. ``.module`` is
    the ScriptModule (what torch.jit.load and C++ apps see: plain containers)."""

    def __init__(self, module, out_spec):
        super().__init__()
        self.module = module
        self._out_spec = out_spec

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        return pytree.tree_unflatten(pytree.tree_leaves(out), self._out_spec)


# ---- report ---------------------------------------------------------------------------------


def _report_file(module) -> dict[str, str]:
    """The extra files holding the module's CompileReport (none when it has no report)."""
    report = getattr(module, "report", None)
    return {REPORT_FILE: json.dumps(report.to_dict())} if report is not None else {}


def _read_report(data: str | bytes):
    if not data:
        return None
    from kiln.compiler import CompileReport

    return CompileReport.from_dict(json.loads(data))


# ---- inputs ---------------------------------------------------------------------------------


def _specs(module, inputs: Sequence | None) -> list[Input]:
    if inputs is None:
        if not module.inputs:
            raise ValueError(
                "kiln.save: this module does not know its inputs; pass inputs= (kiln.Input or "
                "example tensors, one per positional input)"
            )
        return list(module.inputs)
    specs = [i if isinstance(i, Input) else Input.from_tensor(i) for i in inputs]
    expected = len([n for n in module.graph_module.graph.nodes if n.op == "placeholder"])
    if len(specs) != expected:
        raise ValueError(f"kiln.save: the module takes {expected} inputs, got {len(specs)}")
    return specs


def _dynamic_shapes(specs: list[Input]):
    dynamic = []
    for k, s in enumerate(specs):
        dims = {
            d: torch.export.Dim(f"in{k}_d{d}", min=s.min_shape[d], max=s.max_shape[d])
            for d in s.dynamic_dims
        }
        dynamic.append(dims or None)
    return tuple(dynamic)


# ---- exported_program -----------------------------------------------------------------------


@quiet_torch
def _export(module, specs: list[Input], device: torch.device):
    examples = tuple(s.example(device) for s in specs)
    with torch.no_grad():
        return torch.export.export(
            # CompiledModule.forward(*args): one dynamic-shapes entry, for the args tuple.
            module,
            examples,
            dynamic_shapes=(_dynamic_shapes(specs),),
            strict=False,
        )


# ---- torchscript ----------------------------------------------------------------------------


@quiet_torch
def _script(module, specs: list[Input], device: torch.device):
    graph_module = _scriptable(module.graph_module, module._out_spec)
    try:
        return torch.jit.script(graph_module)
    except Exception as error:  # noqa: BLE001 (TorchScript raises many kinds)
        if any(s.dynamic_dims for s in specs):
            raise KilnError(
                "kiln.save(output_format='torchscript'): TorchScript cannot compile this graph, "
                "and tracing would fix the dynamic sizes its PyTorch parts use; save it with "
                f"output_format='exported_program'. TorchScript said: {error}"
            ) from error
        log("warning", f"kiln.save: torch.jit.script failed ({error}); tracing instead")
        examples = tuple(s.example(device) for s in specs)
        with torch.no_grad():
            return torch.jit.trace(graph_module, examples, check_trace=False)


def _scriptable(graph_module: torch.fx.GraphModule, out_spec) -> torch.fx.GraphModule:
    """A copy of the compiled graph that torch.jit.script reads: op overloads become their
    packets, and the output has the original structure (not the flat tuple)."""
    gm = torch.fx.GraphModule(graph_module, copy.deepcopy(graph_module.graph), "KilnScripted")
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            node.target = node.target.overloadpacket
        elif node.op == "output" and out_spec is not None:
            node.args = (pytree.tree_unflatten(list(node.args[0]), out_spec),)
    gm.recompile()
    return gm
