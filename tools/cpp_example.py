"""Builds one of the C++ example apps (examples/<name>) against this checkout's Kiln package,
the way a LibTorch user would (find_package(Kiln)): for the tests and tools that run them.

    from cpp_example import build_example
    exe_dir = build_example("cpp")   # build/examples_cpp, holding kiln_infer

Configures once (again when torch's or Kiln's CMake prefix path changed), then builds
incrementally, under the machine-wide build lock so that only one build runs at a time. A failing
step raises RuntimeError with the tail of its output.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_LOCK = "/tmp/kiln-build.lock"


def build_example(name: str) -> Path:
    """examples/<name> built in build/examples_<name>; returns that directory."""
    import torch

    import kiln

    config = Path(kiln.cmake_prefix_path) / "Kiln" / "KilnConfig.cmake"
    if not config.exists():
        raise RuntimeError(f"{config} is missing: rebuild Kiln (tools/dev_build.sh)")
    source, build = ROOT / "examples" / name, ROOT / "build" / f"examples_{name}"
    prefix_path = f"{torch.utils.cmake_prefix_path};{kiln.cmake_prefix_path}"
    build.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = build / "CMakeCache.txt"
        wanted = f"CMAKE_PREFIX_PATH:UNINITIALIZED={prefix_path}"
        if not cache.exists() or wanted not in cache.read_text().splitlines():
            shutil.rmtree(build, ignore_errors=True)
            cmd = ["cmake", "-S", str(source), "-B", str(build)]
            cmd += [f"-DCMAKE_PREFIX_PATH={prefix_path}", "-DCMAKE_BUILD_TYPE=Release"]
            if shutil.which("ninja"):
                cmd += ["-G", "Ninja"]
            if shutil.which("ccache"):
                cmd += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
            _run(cmd, f"configuring examples/{name}")
        _run(["cmake", "--build", str(build)], f"building examples/{name}")
    return build


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
