#!/usr/bin/env bash
# GPU verification on a lent H100/H200, in stages that each fit one device call:
#   tools/gpu_verify.sh test      build (FASTGUIDE_CUDA=ON, sm_90a) + every CUDA test
#   tools/gpu_verify.sh sanitize  compute-sanitizer memcheck and racecheck over tools/kernel_smoke.py
#   tools/gpu_verify.sh bench     AdaGN and attention benchmarks (JSON)
#   tools/gpu_verify.sh models    the model suite: python -m fastguide.bench --suite gpu (~8 min)
# Each stage builds first if needed. Logs and JSON go to $OUT (default benchmarks/results).
# Reference vectors: $FASTGUIDE_REFERENCE (default .carry/reference, carried with the call).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export FASTGUIDE_REFERENCE=${FASTGUIDE_REFERENCE:-$PWD/.carry/reference}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

build() {
  if $PY -c "import fastguide, sys; sys.exit(0 if fastguide.build_info()['cuda'] else 1)" 2>/dev/null; then return; fi
  echo "== build"
  FASTGUIDE_CUDA=ON CUDAARCHS=${CUDAARCHS:-90a} $PY -m pip install -q --no-build-isolation --no-index . \
    -Cbuild-dir=build/gpu 2>&1 | tail -5
  $PY -c "import fastguide; print(fastguide.build_info())" || exit 1
}

stage_test() {
  echo "== CUDA tests"
  $PY -m pytest -q -m "cuda and not slow" tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -20
}

stage_sanitize() {
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool"
    compute-sanitizer --tool $tool --error-exitcode 7 $PY tools/kernel_smoke.py 2>&1 \
      | tee "$OUT/sanitizer_$tool.log" | tail -8
  done
}

device_name() { $PY -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())"; }

stage_bench() {
  local dev; dev=$(device_name)
  echo "== kernel benchmarks ($dev)"
  $PY benchmarks/bench_adagn.py --out "$OUT/adagn_$dev.json" | tail -14
  $PY benchmarks/bench_attention.py --out "$OUT/attention_$dev.json" | tail -8
}

stage_models() {
  local dev; dev=$(device_name)
  echo "== model benchmarks ($dev)"
  $PY -m fastguide.bench --suite gpu --out "$OUT/models_$dev.json" | tail -20
}

build
case "${1:-test}" in
  test) stage_test ;;
  sanitize) stage_sanitize ;;
  bench) stage_bench ;;
  models) stage_models ;;
  all) stage_test; stage_sanitize; stage_bench; stage_models ;;
  *) echo "usage: $0 test|sanitize|bench|models|all"; exit 2 ;;
esac
