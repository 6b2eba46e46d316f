#!/usr/bin/env bash
# Fresh machine -> Kiln built -> `kiln demo` (a network built with the native API, run on every
# available backend and checked against numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
bash tools/build.sh
python3 -m kiln demo
