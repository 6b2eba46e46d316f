"""The compile options: kiln.compile's keyword arguments -> one kiln._C.CompileOptions.

Both frontends (and torch.compile's "kiln" backend and `kiln compile`, which call kiln.compile)
hand the C++ compile driver this one object (driver/compile_options.h), so every option means
the same on both paths.
"""

from __future__ import annotations

import os

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


def default_engine_cache_dir() -> str:
    """Where kiln.compile keeps built engines by default: $XDG_CACHE_HOME/kiln/engines."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kiln", "engines")


def engine_cache_dir(cache_dir) -> str:
    """True: the default directory (none when KILN_ENGINE_CACHE=0); a path: that directory;
    False/None: none ("")."""
    if cache_dir is True:
        return "" if os.environ.get("KILN_ENGINE_CACHE") == "0" else default_engine_cache_dir()
    if cache_dir is None or cache_dir is False:
        return ""
    return os.fspath(cache_dir)


def op_name(op) -> str:
    """An op overload as the driver names it: "aten.gelu.default" (a string stays as it is)."""
    if isinstance(op, str):
        return op
    if isinstance(op, torch._ops.OpOverload):
        return str(op)
    module = getattr(op, "__module__", None) or ""
    return f"{module}.{getattr(op, '__name__', str(op))}"


def overload_name(op) -> str:
    """The graphs' name of an op overload, "namespace.op.overload", from an OpOverload, an
    OpOverloadPacket (its default overload) or a string ("mylib::myop", "mylib.myop.default")."""
    name = op if isinstance(op, str) else str(op)
    if "::" in name:
        namespace, rest = name.split("::", 1)
        name = f"{namespace}.{rest}"
    return name if name.count(".") >= 2 else name + ".default"


def automatic_torch_ops(options: dict) -> bool:
    """Whether kiln.compile's torch_ops_in_engine asks for automatic torch ops inside engines:
    "auto" (the default), alone or in a list beside the ops it names."""
    listed = options.get("torch_ops_in_engine") or ()
    return listed == "auto" or (not isinstance(listed, str) and "auto" in list(listed))


def compile_options(device: torch.device, options: dict) -> _C.CompileOptions:
    """kiln.compile's keyword arguments (`options`, by their kiln.compile names and with its
    defaults, which kiln.compile documents) as the driver's CompileOptions for `device`."""
    o = _C.CompileOptions()
    o.precisions = precision_names(options["enabled_precisions"])
    o.min_block_size = int(options["min_block_size"])
    o.torch_executed_ops = sorted(op_name(op) for op in options["torch_executed_ops"])
    listed = options.get("torch_ops_in_engine") or ()  # None: none
    listed = [listed] if isinstance(listed, str) else list(listed)
    o.torch_ops_in_engine = sorted(overload_name(op) for op in listed if op != "auto")
    o.require_full_compilation = bool(options["require_full_compilation"])
    o.device = str(device)
    if options["workspace_size"] is not None:
        o.workspace_size = int(options["workspace_size"])
    if options["optimization_level"] is not None:
        o.optimization_level = int(options["optimization_level"])
    o.int8 = bool(options.get("int8", False))
    o.timing_cache_path = timing_cache_path(options["timing_cache"])
    o.engine_cache_dir = engine_cache_dir(options.get("cache_dir", False))
    if options.get("cache_size") is not None:
        o.engine_cache_max_bytes = int(options["cache_size"])
    tactic_timing = options["tactic_timing"]
    o.tactic_timing = None if tactic_timing is None else bool(tactic_timing)
    o.cuda_graphs = bool(options["cuda_graphs"])
    o.dry_run = bool(options["dry_run"])
    return o
