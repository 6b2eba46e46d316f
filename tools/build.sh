#!/usr/bin/env bash
# Builds Kiln in place (build/ is kept, so rebuilds are incremental) and installs the package
# in editable mode, so `import kiln` and the `kiln` command work from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# pip's own status decides (the filter's would hide a failed build behind the old libraries).
"$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | { grep -v "Running pip as the 'root' user" || true; }
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "build.sh: the build failed (output above)" >&2; exit 1; }
"$PY" -c "import kiln" # fails loudly if the build did not land
