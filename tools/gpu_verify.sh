#!/usr/bin/env bash
# GPU verification on a lent H100/H200, in ONE device call of at most 9 minutes, build included:
#   tools/gpu_verify.sh all          build, test, sanitize, bench, models
#   tools/gpu_verify.sh STAGE ...    any of those stages (build always runs first)
#
# Every stage runs even when an earlier one failed; each stage's exit status counts, and the
# script exits 1 when any stage failed (124 marks a stage stopped by its time budget). A summary
# of stage, status and seconds ends the output.
#   build     always an incremental `pip install` of this tree (never skipped: never stale)
#   test      every CUDA test (pytest -m cuda)
#   sanitize  compute-sanitizer memcheck, racecheck, initcheck and synccheck over
#             tools/kernel_smoke.py, the four tools in parallel; each tool's status counts
#   bench     AdaGN and attention kernel benchmarks (JSON), then the dispatch table they imply
#   models    python -m fastguide.bench --suite gpu with --time-budget = what is left
# Stage budgets in seconds (hard timeouts, also capped by what is left of TOTAL_S=540):
#   build 200, test 110, sanitize 90, bench 60, models the rest minus 15.
# Logs and JSON go to $OUT (default benchmarks/results). Reference vectors: tests/reference (in
# the repository, so nothing needs carrying), or $FASTGUIDE_REFERENCE.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-540}
START=$SECONDS
declare -A BUDGET=([build]=200 [test]=110 [sanitize]=90 [bench]=60)
NAMES=() CODES=() TIMES=()

stage_build() {
  set -o pipefail
  FASTGUIDE_CUDA=ON CUDAARCHS=${CUDAARCHS:-90a} $PY -m pip install -q --no-build-isolation --no-index \
    --no-deps . -Cbuild-dir=build/gpu 2>&1 | tail -20
  [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  (cd /tmp && $PY -c "import fastguide, sys; i = fastguide.build_info(); print(i); sys.exit(0 if i['cuda'] else 1)")
}

stage_test() {
  set -o pipefail
  $PY -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
  return "${PIPESTATUS[0]}"
}

stage_sanitize() {
  set -o pipefail
  # No caching allocator: every tensor is its own allocation, so memcheck sees any access past
  # a tensor and initcheck any read of an element nothing wrote.
  local tool pids=() rc=0 tools=(memcheck racecheck initcheck synccheck)
  for tool in "${tools[@]}"; do
    local quick=--quick
    [ "$tool" = memcheck ] && quick=
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 7 \
      $PY tools/kernel_smoke.py $quick > "$OUT/sanitizer_$tool.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!tools[@]}"; do
    wait "${pids[$i]}"
    local s=$?
    echo "compute-sanitizer ${tools[$i]}: exit $s; $(grep -E 'ERROR SUMMARY|failures' "$OUT/sanitizer_${tools[$i]}.log" | tr '\n' ' ')"
    [ $s -eq 0 ] || rc=1
  done
  return $rc
}

device_name() { $PY -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())"; }

stage_bench() {
  set -o pipefail
  local dev rc=0
  dev=$(device_name)
  $PY benchmarks/bench_adagn.py --out "$OUT/adagn_$dev.json" | tail -40 || rc=1
  $PY benchmarks/bench_attention.py --out "$OUT/attention_$dev.json" | tail -8 || rc=1
  echo "-- the dispatch table these measurements imply (commit with: python -m fastguide.dispatch fill ... --write)"
  $PY -m fastguide.dispatch fill "$OUT/adagn_$dev.json" "$OUT/attention_$dev.json" || rc=1
  return $rc
}

stage_models() {
  set -o pipefail
  local dev
  dev=$(device_name)
  $PY -m fastguide.bench --suite gpu --time-budget "$MODELS_BUDGET" --out "$OUT/models_$dev.json" --overwrite | tail -20
  return "${PIPESTATUS[0]}"
}
export -f stage_build stage_test stage_sanitize stage_bench stage_models device_name

run_stage() {
  local name=$1 left=$((TOTAL_S - (SECONDS - START))) budget
  budget=${BUDGET[$name]:-$((left - 15))}
  ((budget > left)) && budget=$left
  if ((budget < 10)); then
    echo "== $name: skipped, ${left}s left of ${TOTAL_S}s"
    NAMES+=("$name") CODES+=(124) TIMES+=(0)
    return
  fi
  export MODELS_BUDGET=$((budget - 10))
  echo "== $name (budget ${budget}s, ${left}s left)"
  local t0=$SECONDS
  timeout --kill-after=5 "$budget" bash -c "stage_$name"
  local rc=$?
  ((rc == 124)) && echo "== $name: stopped by its ${budget}s budget"
  NAMES+=("$name") CODES+=($rc) TIMES+=($((SECONDS - t0)))
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(test)
[ "${stages[0]}" = all ] && stages=(test sanitize bench models)
for s in "${stages[@]}"; do
  case "$s" in
    test|sanitize|bench|models) ;;
    build) continue ;;
    *) echo "usage: $0 all | [build|test|sanitize|bench|models]..."; exit 2 ;;
  esac
done

run_stage build
build_rc=${CODES[0]}
for s in "${stages[@]}"; do
  [ "$s" = build ] && continue
  if [ "$build_rc" -ne 0 ]; then
    NAMES+=("$s") CODES+=(1) TIMES+=(0)  # nothing to test without a build
    continue
  fi
  run_stage "$s"
done

echo "== summary ($((SECONDS - START))s of ${TOTAL_S}s)"
failed=0
for i in "${!NAMES[@]}"; do
  status=ok
  [ "${CODES[$i]}" -ne 0 ] && status="FAIL (${CODES[$i]})" && failed=1
  printf "  %-9s %-10s %4ss\n" "${NAMES[$i]}" "$status" "${TIMES[$i]}"
done
exit $failed
