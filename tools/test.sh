#!/usr/bin/env bash
# Fresh machine -> Kiln built -> every test: C++ (GoogleTest via ctest), Python (pytest), the C++
# tests again under ASan+UBSan, a bounded run of every fuzz target (tools/fuzz.sh), lint.
# GPU tests skip, visibly, where no GPU is visible; tools/gpu_check.sh runs them on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash tools/bootstrap.sh
bash tools/build.sh
(cd build && ctest --output-on-failure --timeout 600)
# Subprocesses the tests start import this checkout, whatever checkout `pip install -e` last
# pointed the machine's editable install at.
PYTHONPATH="$PWD/py${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest -rs -q tests/python
# Sanitizers (docs/reliability.md). The C++ suite once more with AddressSanitizer and
# UndefinedBehaviorSanitizer on the host code (build-asan/, only what ctest needs; the CUDA
# objects compile as in build/, so ccache serves them), then each libFuzzer target for a bounded
# time. A sanitizer report, a leak or a fuzz finding fails the run.
sanitize_start=$(date +%s)
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-asan "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DKILN_SANITIZE=ON -DKILN_BUILD_PYTHON=OFF \
  -DKILN_BUILD_RUNTIME=OFF -DKILN_BUILD_EXAMPLES=OFF -DPython3_EXECUTABLE="$(command -v "${PYTHON:-python3}")" >/dev/null
cmake --build build-asan --target kiln_tests
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure --timeout 900 -j "$(nproc)")
echo "test.sh: C++ tests under ASan+UBSan in $(( $(date +%s) - sanitize_start )) s"
bash tools/fuzz.sh run "${KILN_FUZZ_SECONDS:-25}"
bash tools/lint.sh
echo "test.sh: all passed in $(( $(date +%s) - start )) s"
