#!/usr/bin/env bash
# Developer build for several git worktrees on a small machine: builds this checkout in place
# (build/ and py/kiln/*.so), holding a machine-wide lock so that only one build runs at a time,
# with ccache shared across worktrees. Then run tests against this checkout with
#   PYTHONPATH=$PWD/py python3 -m pytest tests/python/...   and   (cd build && ctest)
# KILN_CUDA_ARCHS defaults to 90 here (the GPU machine's arch) to halve nvcc time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(dirname "$PWD")}"
export KILN_CUDA_ARCHS="${KILN_CUDA_ARCHS:-90}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
exec flock /tmp/kiln-build.lock python3 setup.py -q build_ext --inplace
