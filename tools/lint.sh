#!/usr/bin/env bash
# Formatting and lint: clang-format (C++/CUDA, .clang-format) and ruff (Python, pyproject.toml).
# `tools/lint.sh --fix` rewrites files instead of checking them.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t cpp < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${cpp[@]}"
  python3 -m ruff format .
  python3 -m ruff check --fix .
else
  clang-format --dry-run -Werror "${cpp[@]}"
  python3 -m ruff format --check .
  python3 -m ruff check .
fi
python3 tools/check_layers.py
echo "lint: clean"
