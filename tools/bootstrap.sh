#!/usr/bin/env bash
# Installs what building and testing Kiln needs on a fresh machine of the project's kind
# (Debian, python3 + pip, CUDA 13 toolkit present, no GPU). Idempotent: skips what is there.
set -euo pipefail

TORCH_VERSION="${KILN_TORCH_VERSION:-2.11.0}"
PY="${PYTHON:-python3}"

need_pip=()
need_pip_nodeps=()
"$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null ||
  need_pip+=("torch==$TORCH_VERSION")
for mod in numpy pybind11 pytest wheel safetensors; do
  "$PY" -c "import $mod" 2>/dev/null || need_pip+=("$mod")
done
# ruff is pinned: its formatter's output changes between versions.
RUFF_VERSION=0.17.6
"$PY" -m ruff --version 2>/dev/null | grep -q " $RUFF_VERSION" || need_pip+=("ruff==$RUFF_VERSION")
# Model tests (tests/python/test_models.py, bench/models.py): the versions the GPU machine has.
# torchvision without its dependencies, so pip never replaces the pinned torch.
"$PY" -c "import torchvision" 2>/dev/null || need_pip_nodeps=("torchvision==${KILN_TORCHVISION_VERSION:-0.26.0}")
# torchao's pt2e quantization flow (tests/python/test_calibration.py), likewise without deps.
"$PY" -c "import torchao" 2>/dev/null || need_pip_nodeps+=("torchao==${KILN_TORCHAO_VERSION:-0.18.0}")
"$PY" -c "import PIL" 2>/dev/null || need_pip+=("pillow")
"$PY" -c "import matplotlib" 2>/dev/null || need_pip+=("matplotlib")  # bench/run.py's chart
"$PY" -c "import transformers" 2>/dev/null || need_pip+=("transformers==${KILN_TRANSFORMERS_VERSION:-5.17.0}")
# The quantization tests train small models on scikit-learn's bundled digits (no downloads).
"$PY" -c "import sklearn" 2>/dev/null || need_pip+=("scikit-learn")
# The ONNX parser (docs/onnx.md): onnx (its schema, the node tests), ONNX Runtime (the peer) and
# onnxscript (torch.onnx.export's dynamo exporter). tests/python/onnx_node_expected.txt was made
# with this onnx version.
"$PY" -c "import onnx" 2>/dev/null || need_pip+=("onnx==${KILN_ONNX_VERSION:-1.23.2}")
"$PY" -c "import onnxruntime" 2>/dev/null || need_pip+=("onnxruntime")
"$PY" -c "import onnxscript" 2>/dev/null || need_pip+=("onnxscript")
# Progress bars on a terminal (py/kiln/progress.py; without tqdm none are shown).
"$PY" -c "import tqdm" 2>/dev/null || need_pip+=("tqdm")
if [ ${#need_pip_nodeps[@]} -gt 0 ]; then
  echo "bootstrap: pip install --no-deps ${need_pip_nodeps[*]}"
  "$PY" -m pip install -q --no-deps "${need_pip_nodeps[@]}"
fi
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "bootstrap: pip install ${need_pip[*]}"
  "$PY" -m pip install -q "${need_pip[@]}"
fi

need_apt=()
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v ccache >/dev/null || need_apt+=(ccache)
command -v clang-format >/dev/null || need_apt+=(clang-format)
[ -f /usr/include/gtest/gtest.h ] || need_apt+=(libgtest-dev)
# The ONNX parser: protobuf's C++ headers, libprotobuf-lite and protoc.
[ -f /usr/include/google/protobuf/message_lite.h ] || need_apt+=(libprotobuf-dev)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# Fuzzing (tools/fuzz.sh): clang with libFuzzer and the sanitizer runtimes.
command -v clang++ >/dev/null || need_apt+=(clang)
compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a" >/dev/null || need_apt+=(libclang-rt-dev)
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  echo "bootstrap: apt-get install ${need_apt[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null) ||
    echo "bootstrap: apt-get failed; continuing (ccache is optional; tools/fuzz.sh needs clang)"
fi
