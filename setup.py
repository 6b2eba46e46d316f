"""Builds Kiln through CMake against the installed torch/Python and packages py/kiln.

`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`) configures
CMake in build/ (kept between runs, so rebuilds are incremental; ninja and ccache are used when
present) and copies the built libraries next to the Python sources, with Kiln's CMake package
(share/cmake/Kiln, for find_package(Kiln) in LibTorch apps) when the torch runtime was built.

Environment: KILN_CUDA_ARCHS (default "90;80"), KILN_BUILD_TYPE (default Release),
KILN_BUILD_DIR (default build/), CMAKE_BUILD_PARALLEL_LEVEL (default: all cores).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def check_libstdcxx_is_shared(lib: Path) -> None:
    """Refuses a build whose compiler linked libstdc++ statically into the shared libraries.

    Some toolchains (a g++ configured with a static libstdc++, as on some GPU images) do so; the
    extension then has its own copy of libstdc++ next to torch's, and crashes in libstdc++'s
    locale code at import or on the first formatted message. Build with the distribution's g++
    (the one torch's ABI matches) instead.
    """
    readelf = shutil.which("readelf")
    if readelf is None:
        return  # binutils missing: nothing to check with (the compiler's own linker came with it)
    needed = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True).stdout
    if "libstdc++.so" not in needed:
        cxx = os.environ.get("CXX", "the default c++")
        raise RuntimeError(
            f"{lib.name} does not link libstdc++ as a shared library (compiler: {cxx}); a Kiln "
            "built this way crashes once torch's libstdc++ is in the same process. Build with a "
            "g++ that links it dynamically, e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++ "
            "CUDAHOSTCXX=/usr/bin/g++, and remove the build directory "
            f"({lib.parent.parent}) first."
        )


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        build_dir = Path(os.environ.get("KILN_BUILD_DIR", ROOT / "build"))
        build_dir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("KILN_BUILD_TYPE", "Release")
        if not (build_dir / "CMakeCache.txt").exists():
            cmd = [
                "cmake",
                "-S",
                str(ROOT),
                "-B",
                str(build_dir),
                f"-DCMAKE_BUILD_TYPE={build_type}",
                f"-DPython3_EXECUTABLE={sys.executable}",
            ]
            if shutil.which("ninja"):
                cmd += ["-G", "Ninja"]
            subprocess.check_call(cmd)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.check_call(["cmake", "--build", str(build_dir), "--parallel", jobs])
        check_libstdcxx_is_shared(build_dir / "core" / "libkiln_core.so")
        for ext in self.extensions:
            dest = Path(self.get_ext_fullpath(ext.name)).parent
            for target in (dest, ROOT / "py" / "kiln"):
                target.mkdir(parents=True, exist_ok=True)
                libs = [
                    build_dir / "core" / "libkiln_core.so",
                    build_dir / "driver" / "libkiln_compiler.so",
                    *build_dir.glob("onnx_parser/libkiln_onnx.so"),  # absent without protobuf
                    *build_dir.glob("runtime/libkiln_runtime.so"),  # absent without torch
                    *build_dir.glob("torchscript/libkiln_torchscript.so"),
                    *build_dir.glob("py/_C*.so"),
                    *build_dir.glob("py/_torch.*.so"),  # absent without torch
                ]
                for lib in libs:
                    if (target / lib.name).resolve() != lib.resolve():
                        _replace(lib, target / lib.name)
                # the TorchScript C++ API headers, for Kiln::torchscript; the plugin API's
                headers = ["core/plugin.h", "ir/attributes.h", "ir/dims.h", "ir/dtype.h"]
                if (build_dir / "torchscript").exists():
                    headers += ["torchscript/compile.h", "driver/compile_options.h"]
                for header in headers:
                    (target / "include" / header).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / header, target / "include" / header)
                # find_package(Kiln) for LibTorch apps (kiln.cmake_prefix_path), with the runtime
                package = target / "share" / "cmake" / "Kiln"
                configs = sorted((build_dir / "cmake-package" / "python").glob("*.cmake"))
                if configs:
                    package.mkdir(parents=True, exist_ok=True)
                    for config in configs:
                        shutil.copy2(config, package / config.name)
                else:
                    shutil.rmtree(package, ignore_errors=True)


def _replace(src: Path, dst: Path) -> None:
    """Copies src over dst through a temporary file and a rename: a process that has the old
    library loaded keeps reading it whole (a copy in place would change its bytes under it)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


setup(
    name="kiln",
    version="0.1.0",
    description="PyTorch inference compiler with its own GPU engine",
    package_dir={"": "py"},
    packages=find_packages("py"),
    ext_modules=[CMakeExtension("kiln._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["numpy"],
    entry_points={
        "console_scripts": ["kiln=kiln.cli:main"],
        # torch.compile(model, backend="kiln") without importing kiln first (kiln/dynamo.py)
        "torch_dynamo_backends": ["kiln = kiln.dynamo:backend"],
    },
    zip_safe=False,
)
