#!/usr/bin/env bash
# Fresh machine -> Kiln built -> `kiln demo` (torchvision's resnet18 compiled with kiln.compile,
# checked against eager PyTorch, timed on a GPU, saved in both formats and reloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
bash tools/build.sh
python3 -m kiln demo
