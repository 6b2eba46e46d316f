"""kiln.compile for TorchScript modules (ir="torchscript", or "auto" with a ScriptModule).

The work happens in C++ (torchscript/, the API C++ users call, around the compile driver
driver/compile.h that the export frontend uses too): lowering, shape recording, KGraph
translation, partitioning, engine builds and the graph rewrite. kiln._torch calls it in process:
the ScriptModule and the one kiln._C.CompileOptions go in, the compiled ScriptModule and the
driver's report come out (no file, no option format). The result's engine segments call
``torch.ops.kiln.execute_engine`` on Engine attributes; ``torch.jit.save`` /
``kiln.save(m, path, output_format="torchscript")`` save it, and it loads after ``import kiln`` in
Python or in a C++ app linking Kiln::runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kiln import _C
from kiln.dtypes import deprecated, find_dtype_name
from kiln.inputs import Input
from kiln.report import CompileReport


class CompiledScriptModule(torch.jit.RecursiveScriptModule):
    """What kiln.compile(ir="torchscript") returns: the ScriptModule torch.jit.load gives, with
    ``report`` (a kiln.compiler.CompileReport). ``kiln_report`` is report's deprecated name.

    Only the Python object carries the report: a copy made by torch (copy.copy, torch.jit.freeze)
    or a module loaded with torch.jit.load has none; kiln.save stores it and kiln.load sets it."""

    @property
    def kiln_report(self):
        deprecated("kiln_report", "report")
        return self.report


def compile(module, specs: Sequence[Input], options: _C.CompileOptions, device: torch.device):  # noqa: A001
    """Compiles a ScriptModule (scripted or traced) with `options` (kiln/options.py); returns a
    CompiledScriptModule (a ScriptModule whose ``report`` holds the CompileReport), or the
    CompileReport with options.dry_run."""
    if not isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            "kiln.compile(ir='torchscript') takes a torch.jit.ScriptModule (torch.jit.script or "
            f"torch.jit.trace), got {type(module).__name__}"
        )
    from kiln import runtime

    runtime.load_library()  # the Engine class the compiled module holds, and its fake kernel
    from kiln import _torch

    inputs = []
    for k, s in enumerate(specs):
        dtype = find_dtype_name(s.dtype)
        if dtype is None:
            raise _C.KilnError(
                f"kiln.compile: input {k} has dtype {s.dtype}, which Kiln does not support"
            )
        inputs.append((dtype, list(s.min_shape), list(s.opt_shape), list(s.max_shape)))
    compiled, driver_report = _torch.compile_torchscript(module, inputs, options)
    report = CompileReport.from_driver(driver_report)
    if options.dry_run:
        return report
    compiled = torch.jit._recursive.wrap_cpp_module(compiled)
    compiled.__class__ = CompiledScriptModule  # adds the deprecated kiln_report property only
    compiled.report = report
    return compiled
