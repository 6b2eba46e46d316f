#!/usr/bin/env bash
# Fresh machine -> Kiln built -> every test: C++ (GoogleTest via ctest), Python (pytest), lint.
# GPU tests skip, visibly, where no GPU is visible; tools/gpu_check.sh runs them on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash tools/bootstrap.sh
bash tools/build.sh
(cd build && ctest --output-on-failure --timeout 600)
python3 -m pytest -rs -q tests/python
bash tools/lint.sh
echo "test.sh: all passed in $(( $(date +%s) - start )) s"
