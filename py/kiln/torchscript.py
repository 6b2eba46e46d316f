"""kiln.compile for TorchScript modules (ir="torchscript", or "auto" with a ScriptModule).

The work happens in C++ (torchscript/, libkiln_torchscript.so, the same API C++ users call):
lowering, shape recording, KGraph translation, partitioning, engine builds and the graph rewrite.
This module is the bridge: it saves the module to a temporary file, calls the op
``torch.ops.kiln.compile_torchscript(in_path, out_path, spec)`` and loads the result with
``torch.jit.load``; no torch object crosses the boundary. The result is a ScriptModule whose
engine segments call ``torch.ops.kiln.execute_engine`` on Engine attributes; ``torch.jit.save`` /
``kiln.save(m, path, output_format="torchscript")`` save it, and it loads after ``import kiln`` in
Python or in a C++ app linking Kiln::runtime.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from kiln._C import KilnError
from kiln.inputs import Input

LIBRARY_PATH = Path(__file__).with_name("libkiln_torchscript.so")

_lock = threading.Lock()
_loaded = False

_DTYPES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.bool: "bool",
    torch.int8: "int8",
}
_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", "tf32": "tf32"}


def load_library() -> None:
    """Loads libkiln_torchscript.so (and the runtime it uses) into torch, once."""
    global _loaded
    with _lock:
        if _loaded:
            return
        if not LIBRARY_PATH.exists():
            raise RuntimeError(
                f"Kiln's TorchScript frontend is not installed ({LIBRARY_PATH} is missing): build "
                "Kiln with torch installed (CMake option KILN_BUILD_RUNTIME)."
            )
        from kiln import runtime

        runtime.load_library()  # first, so that the frontend's NEEDED entry finds this copy
        torch.ops.load_library(str(LIBRARY_PATH))
        _loaded = True


def spec_text(
    specs: Sequence[Input],
    *,
    enabled_precisions: Iterable = (torch.float32,),
    min_block_size: int = 5,
    torch_executed_ops: Iterable = (),
    require_full_compilation: bool = False,
    device: str = "cpu",
    workspace_size: int | None = None,
    optimization_level: int | None = None,
    dry_run: bool = False,
) -> str:
    """The compile spec in the op's line format (torchscript/compile_op.cpp)."""
    lines = []
    for k, s in enumerate(specs):
        if s.dtype not in _DTYPES:
            raise KilnError(
                f"kiln.compile: input {k} has dtype {s.dtype}, which Kiln does not support"
            )
        dims = [
            "x".join(str(d) for d in shape) or "scalar"
            for shape in (s.min_shape, s.opt_shape, s.max_shape)
        ]
        lines.append(f"input {_DTYPES[s.dtype]} {' '.join(dims)}")
    for p in enabled_precisions:
        if p not in _PRECISIONS:
            raise ValueError(
                f"enabled_precisions: {p} is not one of torch.float32/float16/bfloat16, 'tf32'"
            )
        lines.append(f"precision {_PRECISIONS[p]}")
    lines.append(f"min_block_size {int(min_block_size)}")
    for op in torch_executed_ops:
        lines.append(f"torch_executed_op {op if isinstance(op, str) else _op_name(op)}")
    lines.append(f"require_full_compilation {int(bool(require_full_compilation))}")
    lines.append(f"device {device}")
    if workspace_size is not None:
        lines.append(f"workspace_bytes {int(workspace_size)}")
    if optimization_level is not None:
        lines.append(f"optimization_level {int(optimization_level)}")
    lines.append(f"dry_run {int(bool(dry_run))}")
    return "\n".join(lines) + "\n"


def _op_name(op) -> str:
    return str(op) if isinstance(op, torch._ops.OpOverload) else f"{op.__module__}.{op.__name__}"


def compile_file(in_path: str, out_path: str, spec: str):
    """Runs the op on files; returns the CompileReport. Kiln's errors raise KilnError."""
    load_library()
    try:
        report = torch.ops.kiln.compile_torchscript(str(in_path), str(out_path), spec)
    except RuntimeError as error:
        message = str(error)
        if "KilnError: " in message:
            message = message.split("KilnError: ", 1)[1]
            raise KilnError(message.split("\nException raised from")[0]) from None
        raise
    return _report(json.loads(report))


def _report(data: dict):
    from kiln.compiler import CompileReport, Fallback

    return CompileReport(
        num_engines=data["num_engines"],
        segments=data["segments"],
        fallbacks=[Fallback(f["node"], f["target"], f["reason"]) for f in data["fallbacks"]],
        text=data["text"],
    )


def compile(
    module, specs: Sequence[Input], *, device: torch.device, dry_run: bool = False, **options
):  # noqa: A001
    """Compiles a ScriptModule (scripted or traced); returns a ScriptModule (a CompileReport
    with dry_run). ``compiled.kiln_report`` holds the report."""
    if not isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            "kiln.compile(ir='torchscript') takes a torch.jit.ScriptModule (torch.jit.script or "
            f"torch.jit.trace), got {type(module).__name__}"
        )
    spec = spec_text(specs, device=str(device), dry_run=dry_run, **options)
    with tempfile.TemporaryDirectory(prefix="kiln_ts_") as tmp:
        src, dst = os.path.join(tmp, "in.ts"), os.path.join(tmp, "out.ts")
        torch.jit.save(module, src)
        report = compile_file(src, dst, spec)
        if dry_run:
            return report
        compiled = torch.jit.load(dst, map_location=device)
    compiled.kiln_report = report
    return compiled
