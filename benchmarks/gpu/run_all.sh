#!/usr/bin/env bash
# One device call: build, standalone test, randomised correctness vs torch
# fp64, compute-sanitizer (memcheck + racecheck) on a small subset, benchmark,
# plot. Everything lands in $OUT (at most 8 files come back):
#   build.log correctness.json sanitizer.txt bench.json bench.log plot.png
# Env: STAGES (default "build test correct sanitize bench plot"; also
#      "variants" = variants.sh, "profile" = Nsight Compute into ncu.txt),
#      BENCH_ARGS (extra bench.py flags, e.g. --sweep), CASES (correctness
#      cases), PROFILE_CASES ("layer:batch:density ...").
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
STAGES="${STAGES:-build test correct sanitize bench plot}"
BUILD="$HERE/build"
export PYTHONUNBUFFERED=1 ESCORT_GPU_LIB="$BUILD/libescort_gpu.so"
cd "$HERE"
has() { [[ " $STAGES " == *" $1 "* ]]; }
rc=0
if has build; then
  { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
    nvcc --version | tail -2; bash build.sh "$BUILD"; } > "$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
  tail -12 "$OUT/build.log"
fi
if has test; then
  "$BUILD/csr_conv_gpu_test" 200 3 2>&1 | tail -15 | tee -a "$OUT/build.log" || rc=1
fi
if has correct; then
  python3 correctness.py --cases "${CASES:-340}" --json "$OUT/correctness.json" 2>&1 | tail -8 || rc=1
fi
if has sanitize; then
  { for tool in memcheck racecheck; do
      echo "== compute-sanitizer --tool $tool csr_conv_gpu_test 16 5"
      compute-sanitizer --tool $tool --error-exitcode 3 "$BUILD/csr_conv_gpu_test" 16 5 2>&1 | tail -6
      echo "exit status: ${PIPESTATUS[0]}"
    done
    echo "== compute-sanitizer --tool memcheck correctness.py --small --cases 12"
    compute-sanitizer --tool memcheck --error-exitcode 3 python3 correctness.py --small --cases 12 --seed 9 2>&1 | tail -4
    echo "exit status: ${PIPESTATUS[0]}"
  } > "$OUT/sanitizer.txt" 2>&1
  cat "$OUT/sanitizer.txt"
fi
if has variants; then
  bash variants.sh 2>&1 | tee "$OUT/variants.log"
fi
if has profile; then
  # Nsight Compute on the tree kernel for the cases named in PROFILE_CASES
  # ("layer:batch:density" separated by spaces).
  for c in ${PROFILE_CASES:-vgg16_conv3_2:32:0.1}; do
    IFS=: read -r l b d <<< "$c"
    echo "==== ncu $l batch $b density $d"
    ncu --target-processes all -k regex:CsrConvKernel -s 2 -c 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section SchedulerStats --section WarpStateStats --section Occupancy --section LaunchStats \
      --section InstructionStats --section SourceCounters \
      python3 profile.py "$l" "$b" "$d" 2>&1
  done > "$OUT/ncu.txt"
  grep -E "====|Duration|Throughput|Issue Slots|Stall|Warp Cycles|Achieved Occupancy|Bank|Registers|Block Limit" "$OUT/ncu.txt" | head -80
fi
if has bench; then
  python3 bench.py --json "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | grep -E "geomean|device|ceilings|Error|error" || rc=1
fi
if has plot && [ -f "$OUT/bench.json" ]; then
  python3 plot.py "$OUT/bench.json" "$OUT/plot.png" 2>&1 | tail -3
fi
exit $rc
