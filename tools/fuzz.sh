#!/usr/bin/env bash
# libFuzzer targets (fuzz/) with AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   tools/fuzz.sh build                     build the targets into build-fuzz/ (clang++)
#   tools/fuzz.sh run SECONDS [TARGET...]   build, write the seed corpus, then fuzz each target
#                                           (default: all) for SECONDS, one after another
#
# Before fuzzing, each target reruns the inputs in fuzz/regressions/TARGET/ (each once broke it and
# is named after what it broke). Each target keeps its corpus in build-fuzz/corpus/TARGET (grown across runs) and writes what it
# finds to build-fuzz/findings/TARGET/ (crash-*, leak-*, timeout-*, oom-*: rerun one with
# `build-fuzz/fuzz_TARGET FILE`). Per target it prints executions, coverage (cov: and ft: of
# libFuzzer's final status line) and findings; the exit status is 1 when any target found
# something. FUZZ_RUNS=N also stops each target after N executions; FUZZ_PROCS=N runs N fuzzer
# processes per target (executions summed; FUZZ_RUNS and coverage are per process); FUZZ_JOBS=N
# builds with N jobs; FUZZ_TIMEOUT=S makes a hang an input running S seconds (default 25; raise it
# when other work competes for the cores, since the clock is wall time). Fuzzers run under
# `nice -n 19`; compilation takes /tmp/kiln_build.lock (as other builds on a shared machine do).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build-fuzz
TARGETS=(plan safetensors pointwise_program network)
# The ONNX parser's target when its binary was built (protobuf and onnx present).
LOCK="${KILN_BUILD_LOCK:-/tmp/kiln_build.lock}"

locked() {
  if command -v flock >/dev/null; then flock "$LOCK" "$@"; else "$@"; fi
}

build() {
  local cxx="${CXX_FUZZ:-$(command -v clang++ || true)}"
  [ -n "$cxx" ] || { echo "fuzz.sh: clang++ not found (tools/bootstrap.sh installs it)" >&2; exit 2; }
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    locked cmake -S fuzz -B "$BUILD" "${gen[@]}" -DCMAKE_CXX_COMPILER="$cxx" \
      -DPython3_EXECUTABLE="$(command -v "${PYTHON:-python3}")" >/dev/null
  fi
  mkdir -p "$BUILD/logs"
  if ! locked cmake --build "$BUILD" --parallel "${FUZZ_JOBS:-$(nproc)}" >"$BUILD/logs/build.log" 2>&1; then
    tail -40 "$BUILD/logs/build.log" >&2
    echo "fuzz.sh: build failed (log $BUILD/logs/build.log)" >&2
    exit 2
  fi
}

# The inputs that once broke a target (fuzz/regressions/TARGET/, each named after what it broke)
# must now run cleanly.
regressions() {
  local t="$1" files
  files=(fuzz/regressions/"$t"/*)
  [ -e "${files[0]}" ] || return 0
  "$BUILD/fuzz_$t" "${files[@]}" >"$BUILD/logs/$t.regressions.log" 2>&1
}

# The value of `key` in libFuzzer's last status line ("#N DONE cov: 1234 ft: 5678 corp: ...").
status_field() { grep -E '^#[0-9]+' "$1" | tail -1 | sed -nE "s/.* $2: ([0-9]+).*/\1/p"; }

run() {
  local seconds="$1"
  shift
  local targets=("$@")
  [ ${#targets[@]} -gt 0 ] || targets=("${TARGETS[@]}")
  build
  [ -x "$BUILD/fuzz_onnx" ] && [ ${#targets[@]} -eq ${#TARGETS[@]} ] && targets+=(onnx)
  rm -rf "$BUILD/seeds"
  "$BUILD/fuzz_make_seeds" "$BUILD/seeds"
  if [ -x "$BUILD/fuzz_onnx" ]; then
    # ONNX seeds: the onnx package's node-test models (one small model per operator variant).
    "${PYTHON:-python3}" - "$BUILD/seeds/onnx" <<'PY' 2>/dev/null
import sys, os, warnings
warnings.simplefilter("ignore")
from onnx.backend.test.loader import load_model_tests
os.makedirs(sys.argv[1], exist_ok=True)
for case in load_model_tests(kind="node"):
    with open(os.path.join(sys.argv[1], case.name), "wb") as f:
        f.write(case.model.SerializeToString())
PY
  fi
  local failed=0
  printf '%-18s %12s %8s %8s %9s %8s\n' target executions cov ft findings seconds
  for t in "${targets[@]}"; do
    local corpus="$BUILD/corpus/$t" findings="$BUILD/findings/$t" log="$BUILD/logs/$t.log"
    mkdir -p "$corpus" "$findings" "$BUILD/logs"
    local before after dict=() runs=() start rc=0
    before=$(find "$findings" -type f | wc -l)
    [ -f "$BUILD/seeds/$t.dict" ] && dict=(-dict="$BUILD/seeds/$t.dict")
    [ -n "${FUZZ_RUNS:-}" ] && runs=(-runs="$FUZZ_RUNS")
    start=$(date +%s)
    if ! regressions "$t"; then
      echo "fuzz.sh: $t fails on a regression input again (log $BUILD/logs/$t.regressions.log)" >&2
      failed=1
    fi
    # -timeout: one input running longer is a finding (a hang); -rss_limit_mb also bounds a
    # single allocation (-malloc_limit_mb defaults to it), so a size that makes Kiln allocate
    # gigabytes is a finding. -use_value_profile: comparisons against magic numbers and sizes.
    # FUZZ_PROCS copies share the corpus directory (each adds what it finds); their logs are
    # $log.N, then concatenated into $log.
    local procs="${FUZZ_PROCS:-1}" pids=() i
    for ((i = 0; i < procs; i++)); do
      ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}" \
        UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
        nice -n 19 "$BUILD/fuzz_$t" "$corpus" "$BUILD/seeds/$t" "${dict[@]}" "${runs[@]}" \
        -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-25}" -rss_limit_mb=2048 -use_value_profile=1 \
        -print_final_stats=1 -artifact_prefix="$findings/" >"$log.$i" 2>&1 &
      pids+=($!)
    done
    for i in "${!pids[@]}"; do wait "${pids[$i]}" || rc=$?; done
    cat "$log".[0-9]* >"$log"
    after=$(find "$findings" -type f | wc -l)
    local found=$((after - before))
    [ "$rc" -ne 0 ] && [ "$found" -eq 0 ] && found=1  # e.g. a crash libFuzzer could not save
    local execs=0 n
    for ((i = 0; i < procs; i++)); do
      n=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log.$i" | tail -1)
      execs=$((execs + ${n:-0}))
    done
    rm -f "$log".[0-9]*
    printf '%-18s %12s %8s %8s %9s %8s\n' "$t" "$execs" "$(status_field "$log" cov)" \
      "$(status_field "$log" ft)" "$found" "$(($(date +%s) - start))"
    if [ "$found" -ne 0 ]; then
      failed=1
      echo "fuzz.sh: $t found something (exit $rc); log $log, inputs in $findings/:" >&2
      grep -E 'ERROR|runtime error|SUMMARY|Test unit written' "$log" | head -20 >&2 || true
    fi
  done
  return $failed
}

case "${1:-}" in
  build) build ;;
  run)
    [ $# -ge 2 ] || { echo "usage: tools/fuzz.sh run SECONDS [TARGET...]" >&2; exit 2; }
    shift
    run "$@"
    ;;
  *)
    echo "usage: tools/fuzz.sh build | run SECONDS [TARGET...]" >&2
    exit 2
    ;;
esac
