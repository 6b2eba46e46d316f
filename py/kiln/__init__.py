"""Kiln: a PyTorch inference compiler with a GPU engine of its own.

This release carries the engine core and its native network-building API:

    import kiln, numpy as np
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 64))
    y = net.add_matmul(x, net.add_constant(np.random.rand(64, 32).astype(np.float32)))
    net.mark_output(net.add_activation(y, "relu"), "y")
    config = kiln.BuilderConfig()
    config.add_optimization_profile({"x": ((1, 64), (8, 64), (32, 64))})
    engine = kiln.Engine(kiln.Builder().build(net, config))
    out = engine.create_execution_context().execute({"x": np.random.rand(4, 64).astype(np.float32)})
"""

import os
import sys

from kiln import _C
from kiln._C import KilnError, Plan
from kiln.engine import Engine, ExecutionContext
from kiln.inspection import Inspection, inspect
from kiln.log import set_log_level, set_log_sink
from kiln.network import Builder, BuilderConfig, Layer, Network, Tensor
from kiln.plugins import converter, load_plugin_library, registered_plugins

__version__ = _C.version()

# CMAKE_PREFIX_PATH entry for find_package(Kiln) in a LibTorch app (Kiln::runtime), like
# torch.utils.cmake_prefix_path: cmake -DCMAKE_PREFIX_PATH="<torch's>;<this>" ...
# Its Kiln/KilnConfig.cmake exists when Kiln was built with its torch runtime.
cmake_prefix_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "share", "cmake")

if "torch" in sys.modules:
    # Register torch.classes.kiln.Engine and torch.ops.kiln.execute_engine now, so that
    # torch.jit.load / torch.export.load of saved Kiln modules work after `import torch, kiln`.
    # Optional: without libkiln_runtime.so (or if it fails to load) kiln.runtime reports why
    # on first use.
    import contextlib

    with contextlib.suppress(Exception):
        from kiln import runtime as _runtime

        if _runtime.is_available():
            _runtime.load_library()

    # kiln::fake_quantize_fp8 / _int8 (calibration's ops), so programs holding them load and run.
    with contextlib.suppress(Exception):
        from kiln import quant_ops as _quant_ops  # noqa: F401 (registers on import)

    # torch.compile(model, backend="kiln"): register the torch._dynamo backend (kiln.dynamo).
    with contextlib.suppress(Exception):
        from kiln import dynamo as _dynamo  # noqa: F401 (registers on import)


def __getattr__(name: str):
    # kiln.compile, kiln.save/load and kiln.Input need torch; import it only when they are used.
    if name == "compile":
        from kiln.compiler import compile

        return compile
    if name in ("save", "load"):
        from kiln import serialize

        return getattr(serialize, name)
    if name == "plans":
        from kiln.runtime import plans

        return plans
    if name == "Input":
        from kiln.inputs import Input

        return Input
    if name == "MutableModule":
        from kiln.mutable import MutableModule

        return MutableModule
    if name == "refit":
        from kiln.refitting import refit

        return refit
    if name == "Calibrator":
        from kiln.calibration import Calibrator

        return Calibrator
    if name == "onnx":  # the ONNX parser and backend (kiln/onnx.py)
        import kiln.onnx

        return kiln.onnx
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")


def cuda_available() -> bool:
    """True when a CUDA GPU is visible to Kiln's engine."""
    return _C.cuda_device_count() > 0


__all__ = [
    "Builder",
    "BuilderConfig",
    "Calibrator",
    "Engine",
    "ExecutionContext",
    "Input",
    "Inspection",
    "KilnError",
    "Layer",
    "MutableModule",
    "Network",
    "Plan",
    "Tensor",
    "cmake_prefix_path",
    "compile",
    "converter",
    "cuda_available",
    "inspect",
    "load",
    "load_plugin_library",
    "plans",
    "refit",
    "registered_plugins",
    "save",
    "set_log_level",
    "set_log_sink",
]
