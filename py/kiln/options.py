"""The compile options: kiln.compile's keyword arguments -> one kiln._C.CompileOptions.

Both frontends (and torch.compile's "kiln" backend and `kiln compile`, which call kiln.compile)
hand the C++ compile driver this one object (driver/compile_options.h), so every option means
the same on both paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from kiln import _C
from kiln.dtypes import precision_names


def default_timing_cache_path() -> str:
    """Where kiln.compile keeps tactic timings by default: $XDG_CACHE_HOME/kiln/timing.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kiln", "timing.cache")


def timing_cache_path(timing_cache) -> str:
    """True: the default path; a path: that file; False/None: none ("")."""
    if timing_cache is True:
        return default_timing_cache_path()
    if timing_cache is None or timing_cache is False:
        return ""
    return os.fspath(timing_cache)


def op_name(op) -> str:
    """An op overload as the driver names it: "aten.gelu.default" (a string stays as it is)."""
    if isinstance(op, str):
        return op
    if isinstance(op, torch._ops.OpOverload):
        return str(op)
    module = getattr(op, "__module__", None) or ""
    return f"{module}.{getattr(op, '__name__', str(op))}"


def compile_options(
    *,
    device: torch.device,
    enabled_precisions: Iterable = (torch.float32,),
    min_block_size: int = 5,
    torch_executed_ops: Iterable = (),
    require_full_compilation: bool = False,
    workspace_size: int | None = None,
    optimization_level: int | None = None,
    timing_cache=True,
    tactic_timing: bool | None = None,
    cuda_graphs: bool = True,
    dry_run: bool = False,
) -> _C.CompileOptions:
    """kiln.compile's options as the driver's CompileOptions (kiln.compile documents each)."""
    o = _C.CompileOptions()
    o.precisions = precision_names(enabled_precisions)
    o.min_block_size = int(min_block_size)
    o.torch_executed_ops = sorted(op_name(op) for op in torch_executed_ops)
    o.require_full_compilation = bool(require_full_compilation)
    o.device = str(device)
    if workspace_size is not None:
        o.workspace_size = int(workspace_size)
    if optimization_level is not None:
        o.optimization_level = int(optimization_level)
    o.timing_cache_path = timing_cache_path(timing_cache)
    o.tactic_timing = None if tactic_timing is None else bool(tactic_timing)
    o.cuda_graphs = bool(cuda_graphs)
    o.dry_run = bool(dry_run)
    return o
