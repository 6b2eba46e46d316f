#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, python3 + torch, CMake and nvcc (no network needed),
# builds Kiln from source with all cores, runs every test (GPU tests must run, not skip), then
# the model acceptance check (tools/model_check.py), the benchmark when there is one, and prints
# a short summary last.
#
# GoogleTest: the system's, or a source tree in $KILN_GTEST_SOURCE_DIR (default .deps/googletest,
# which tools/prepare_gpu_carry.sh fills from this machine's /usr/src/googletest).
#
# Stages: `bash tools/gpu_check.sh [tests] [models] [bench]` runs only those (default: all three),
# so that a device session can split the check over calls of at most 10 minutes. The build, the
# demo and LeNet-5 always run. KILN_PYTEST_ARGS narrows the Python tests (e.g. "-m gpu": only the
# GPU tests, when the CPU ones already ran elsewhere).
set -uo pipefail
cd "$(dirname "$0")/.."
stages="${*:-tests models bench}"
want() { [[ " $stages " == *" $1 "* ]]; }
export KILN_REQUIRE_GPU=1
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
[ -z "${KILN_GTEST_SOURCE_DIR:-}" ] && [ -d .deps/googletest ] && export KILN_GTEST_SOURCE_DIR="$PWD/.deps/googletest"
OUT_DIR="${OUT:-/tmp/kiln_gpu_check}"
# The GPU image's default g++ (/opt/gcc) links libstdc++ statically into shared libraries; a
# Python extension built that way crashes in libstdc++'s locale code once another libstdc++ is in
# the process. Build with the distribution's g++ (the one torch's ABI matches) unless told otherwise.
if [ -x /usr/bin/g++ ]; then
  export CC="${KILN_CC:-/usr/bin/gcc}" CXX="${KILN_CXX:-/usr/bin/g++}" CUDAHOSTCXX="${KILN_CXX:-/usr/bin/g++}"
fi
mkdir -p "$OUT_DIR"
summary=()

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
torch_v=$(python3 -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda)" 2>/dev/null)
summary+=("machine: ${gpu:-no GPU found}; $(nproc) cores; torch ${torch_v:-missing}; $(nvcc --version | tail -1)")

t0=$(date +%s)
if python3 setup.py -q build_ext --inplace >"$OUT_DIR/build.log" 2>&1; then
  summary+=("build: ok in $(( $(date +%s) - t0 )) s (archs ${KILN_CUDA_ARCHS:-90;80})")
else
  tail -40 "$OUT_DIR/build.log"
  echo "GPU CHECK: build FAILED"
  exit 1
fi
if ! readelf -d py/kiln/libkiln_core.so | grep -q 'libstdc++.so'; then
  echo "GPU CHECK: libkiln_core.so does not link libstdc++ dynamically (compiler: ${CXX:-default});"
  echo "           build with a g++ that links libstdc++ as a shared library (set KILN_CXX)."
  exit 1
fi
export PYTHONPATH="$PWD/py${PYTHONPATH:+:$PYTHONPATH}"

ctest_rc=0
pytest_rc=0
if want tests; then
  (cd build && ctest --output-on-failure --timeout 600 >"$OUT_DIR/ctest.log" 2>&1)
  ctest_rc=$?
  summary+=("ctest: $(grep -E 'tests passed|tests failed' "$OUT_DIR/ctest.log" | tail -1) (rc $ctest_rc)")
  grep -E "^fuzz" build/Testing/Temporary/LastTest.log 2>/dev/null | sed 's/^/  /' >"$OUT_DIR/fuzz.txt"

  # In parallel (pytest-xdist, one worker per test file) when the machine has it; the tests that
  # build the C++ examples share build directories, so they run afterwards in one process.
  serial="tests/python/test_cpp_deploy.py tests/python/test_torchscript_cpp.py tests/python/test_model_check.py"
  if python3 -c "import xdist" 2>/dev/null; then
    ignore=$(for f in $serial; do printf -- "--ignore=%s " "$f"; done)
    # shellcheck disable=SC2086
    python3 -m pytest -rfEs -q -n "${KILN_PYTEST_WORKERS:-8}" --dist loadfile $ignore ${KILN_PYTEST_ARGS:-} tests/python >"$OUT_DIR/pytest.log" 2>&1
    pytest_rc=$?
    summary+=("pytest: $(tail -1 "$OUT_DIR/pytest.log") (rc $pytest_rc)")
    # shellcheck disable=SC2086
    python3 -m pytest -rfEs -q ${KILN_PYTEST_ARGS:-} $serial >"$OUT_DIR/pytest_serial.log" 2>&1 || pytest_rc=1
    summary+=("pytest (C++ example tests, serial): $(tail -1 "$OUT_DIR/pytest_serial.log")")
    cat "$OUT_DIR/pytest_serial.log" >>"$OUT_DIR/pytest.log"
  else
    python3 -m pytest -rfEs -q tests/python >"$OUT_DIR/pytest.log" 2>&1
    pytest_rc=$?
    summary+=("pytest: $(tail -1 "$OUT_DIR/pytest.log") (rc $pytest_rc)")
  fi
fi

python3 -m kiln demo >"$OUT_DIR/demo.log" 2>&1
demo_rc=$?

# LeNet-5 from a PyTorch state_dict, native API in Python and C++, on the GPU (rtol/atol 1e-4).
lenet_rc=0
{ python3 examples/lenet5/lenet5_torch.py "$OUT_DIR/lenet5" &&
  python3 examples/lenet5/lenet5.py "$OUT_DIR/lenet5" cuda &&
  build/examples/kiln_lenet5 "$OUT_DIR/lenet5" cuda; } >"$OUT_DIR/lenet5.log" 2>&1 || lenet_rc=1
while read -r line; do summary+=("  $line"); done < <(grep -E "^lenet5" "$OUT_DIR/lenet5.log")
[ $lenet_rc -ne 0 ] && cat "$OUT_DIR/lenet5.log"

# Every zoo model, FP32 and FP16: kiln.compile (1 engine, 0 fallbacks), accuracy vs eager,
# save/load in both formats, the C++ app. Rows that would start after $KILN_MODEL_CHECK_DEADLINE
# seconds (default 400: all 16 rows took ~330 s on an H100) are skipped.
model_check_rc=0
if want models; then
  python3 tools/model_check.py --deadline "${KILN_MODEL_CHECK_DEADLINE:-400}" --out "$OUT_DIR" >"$OUT_DIR/model_check.log" 2>&1 || model_check_rc=$?
  summary+=("model_check: $(grep -E '^model_check:' "$OUT_DIR/model_check.log" | tail -1) (rc $model_check_rc)")
  while read -r line; do summary+=("  $line"); done < <(grep -E '^\|' "$OUT_DIR/model_check.log")
fi

bench_rc=0
if want bench && [ -f bench/run.py ]; then
  # KILN_BENCH_ARGS: other rows or options (e.g. "--models bert --batches 32 --skip-peers").
  # The plans (weights included, too big to fetch back) stay outside $OUT_DIR; their per-layer
  # profile goes into profile.log.
  plans=/tmp/kiln_bench_plans
  # shellcheck disable=SC2086
  python3 bench/run.py ${KILN_BENCH_ARGS:-} --plans "$plans" --out "$OUT_DIR" >"$OUT_DIR/bench.log" 2>&1
  bench_rc=$?
  summary+=("bench: rc $bench_rc (table in bench.log)")
  if ls "$plans"/*.plan >/dev/null 2>&1; then
    python3 tools/profile_plans.py "$plans"/*.plan --top "${KILN_PROFILE_TOP:-6}" >"$OUT_DIR/profile.log" 2>&1
    for f in "$plans"/*.plan; do python3 -m kiln inspect "$f" >"$OUT_DIR/inspect_$(basename "$f" .plan).txt" 2>&1; done
  fi
fi

[ $ctest_rc -ne 0 ] && grep -E "Failed|FAILED|Error" "$OUT_DIR/ctest.log" | head -30
[ $pytest_rc -ne 0 ] && { grep -E "^(FAILED|ERROR)" "$OUT_DIR/pytest.log" | cut -c1-220 | head -120; tail -3 "$OUT_DIR/pytest.log"; }
echo
echo "== kiln demo =="
cat "$OUT_DIR/demo.log"
[ $model_check_rc -ne 0 ] && { echo "== model_check (last lines) =="; grep -vE '^\|' "$OUT_DIR/model_check.log" | tail -20; }
[ -f "$OUT_DIR/profile.log" ] && { echo "== per-layer profile of the saved plans =="; cat "$OUT_DIR/profile.log"; }
[ -f "$OUT_DIR/bench.log" ] && { echo "== bench =="; tail -30 "$OUT_DIR/bench.log"; }
echo
echo "== GPU check summary (stages: $stages) =="
printf '%s\n' "${summary[@]}"
cat "$OUT_DIR/fuzz.txt" 2>/dev/null
if [ $ctest_rc -eq 0 ] && [ $pytest_rc -eq 0 ] && [ $demo_rc -eq 0 ] && [ $lenet_rc -eq 0 ] && [ $model_check_rc -eq 0 ] && [ $bench_rc -eq 0 ]; then
  echo "GPU CHECK: PASS"
else
  echo "GPU CHECK: FAIL"
  exit 1
fi
