"""Fails when a lower layer of Kiln includes a higher one.

The layers, lowest first, and what each may include besides itself (docs/ARCHITECTURE.md):

    ir            the IR: dtypes, dims, attributes, Network, op schemas
    kernels       reference and CUDA kernels                      <- ir
    core          the engine: builder, passes, plan, engine       <- ir, kernels
    lowering      the KGraph                                       <- ir
    converters    aten op -> layers                                <- ir, lowering
    partitioning  KGraph -> segments                               <- ir, lowering, converters
    driver        the compile driver (libkiln_compiler)            <- all of the above
    onnx_parser   the ONNX parser (libkiln_onnx)                  <- ir, kernels, core
    runtime       torch custom class and op (libkiln_runtime)      <- ir, kernels, core
    torchscript   the TorchScript frontend                         <- all of the above
    py/kiln/csrc  the Python bindings (kiln._C)                    <- all but runtime, torchscript
    py/kiln/csrc/torch_bindings.cpp  kiln._torch                   <- all

Run by tools/lint.sh (CI) and tests/python/test_layers.py. The build checks the same rules for
symbols: kiln_layer_check_ir and kiln_layer_check_kernels link with --no-undefined.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENGINE = {"ir", "kernels", "core"}
COMPILER = {"ir", "kernels", "core", "lowering", "converters", "partitioning", "driver"}
ALLOWED: dict[str, set[str]] = {
    "ir": set(),
    "kernels": {"ir"},
    "core": {"ir", "kernels"},
    "lowering": {"ir"},
    "converters": {"ir", "lowering"},
    "partitioning": {"ir", "lowering", "converters"},
    "driver": COMPILER - {"driver"},
    "onnx_parser": ENGINE,
    "runtime": ENGINE,
    "torchscript": COMPILER | {"runtime"},
    "py/kiln/csrc": COMPILER | {"onnx_parser"},
    # kiln._torch: the bindings that take torch's Python types (the TorchScript frontend).
    "py/kiln/csrc/torch_bindings.cpp": COMPILER | {"onnx_parser", "runtime", "torchscript"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SOURCES = ("*.h", "*.cpp", "*.cu", "*.cuh")


def layer_of(path: str) -> str | None:
    """The layer a repository path (or include path) belongs to, None outside the layers."""
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if path == layer or path.startswith(layer + "/"):
            return layer
    return None


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for layer, allowed in ALLOWED.items():
        base = root / layer
        paths = (
            [base] if base.is_file() else [p for pat in SOURCES for p in sorted(base.rglob(pat))]
        )
        for path in paths:
            rel = path.relative_to(root).as_posix()
            if layer_of(rel) != layer:
                continue  # a file with a rule of its own (torch_bindings.cpp), checked under it
            for included in INCLUDE.findall(path.read_text(errors="replace")):
                target = layer_of(included)
                if target is not None and target != layer and target not in allowed:
                    found.append(f"{rel}: includes {included} ({layer} may not include {target})")
    return found


def main() -> int:
    found = violations()
    for line in found:
        print(line)
    print(f"check_layers: {len(found)} violation(s)" if found else "check_layers: clean")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
