#!/usr/bin/env bash
# Copies what the offline GPU machine lacks into .deps/ (git-ignored, carried with the device
# call): GoogleTest's source tree from this machine's Debian package.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps
[ -d .deps/googletest ] || cp -r /usr/src/googletest .deps/googletest
echo "prepared: $(du -sh .deps | cut -f1) in .deps/"
