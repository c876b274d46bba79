#!/usr/bin/env bash
# One device call: builds the kernel sources in ab_src/ (VARIANTS) and the
# tree's, runs the standalone test, A/B (ab.py, batches 1 and 32), the
# randomised correctness check, a local sweep around the heuristic's b1
# tiles, and Nsight Compute source-level profiles (PROFILE).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${OUT:-$HERE/out}"; mkdir -p "$OUT"
cd "$HERE"
export PYTHONUNBUFFERED=1
ARCH="-gencode=arch=compute_90,code=sm_90"
VARIANTS="${VARIANTS:-head}"
STEPS="${STEPS:-test ab correct sweep profile}"
has() { [[ " $STEPS " == *" $1 "* ]]; }
t0=$(date +%s)
for v in $VARIANTS; do
  mkdir -p build/$v
  (nvcc -std=c++17 -O3 -I"$ROOT" -lineinfo $ARCH -Xptxas -v -Xcompiler -fPIC -shared \
     ab_src/$v.cu escort_capi.cu -o build/$v/lib.so > build/$v/ptxas.txt 2>&1 \
     || { echo "BUILD FAIL $v"; grep -v "ptxas info" build/$v/ptxas.txt | head -30; }) &
done
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
  bash build.sh "$HERE/build"; } > "$OUT/build.log" 2>&1 || { echo "TREE BUILD FAIL"; grep -v "ptxas info" "$OUT/build.log" | head -40; exit 1; }
wait
for v in $VARIANTS; do grep -E "registers|spill" build/$v/ptxas.txt | paste - - | sed 's/ptxas info    ://g' \
  | awk '{print "'$v'", $0}' >> "$OUT/build.log"; done
grep -E "spill" "$OUT/build.log" | grep -v " 0 bytes spill stores" | head
echo "build $(( $(date +%s) - t0 )) s"
LIBS="head=build/head/lib.so"
for v in $VARIANTS; do [ "$v" != head ] && LIBS="$LIBS $v=build/$v/lib.so"; done
LIBS="$LIBS tree=build/libescort_gpu.so"
# The tree's own checks are run_all.sh's stages of the same names, on the
# library just built.
checks=""
for step in test correct sanitize; do has $step && checks="$checks $step"; done
[ -n "$checks" ] && STAGES="$checks" bash run_all.sh
if has ab; then
  python3 ab.py --json "$OUT/ab.json" --libs $LIBS --batches "${AB_BATCHES:-1,32}" \
    --rounds "${ROUNDS:-3}" 2>&1 | cut -c1-200
  echo "ab done $(( $(date +%s) - t0 )) s"
fi
if has sweep; then
  python3 local_sweep.py --json "$OUT/local_sweep.json" ${SWEEP_ARGS:-} 2>&1 | cut -c1-300
fi
if has profile; then
  # PROFILE: "lib:layer:batch:density ..." (lib: head or tree).
  for c in ${PROFILE:-}; do
    IFS=: read -r lib l b d <<< "$c"
    so=build/libescort_gpu.so; [ "$lib" != tree ] && so=build/$lib/lib.so
    rep=/tmp/prof_${lib}_$l
    ESCORT_GPU_LIB=$so ncu --target-processes all -k regex:CsrConvKernel -s 2 -c 1 --import-source yes \
      --section SpeedOfLight --section SchedulerStats --section WarpStateStats --section LaunchStats \
      --section Occupancy --section InstructionStats --section SourceCounters \
      -o $rep -f python3 profile.py "$l" "$b" "$d" > /dev/null 2>&1
    { echo "==== $lib $l $b $d"; ncu -i $rep.ncu-rep --page details; } >> "$OUT/ncu_details.txt" 2>&1
    { echo "==== $lib $l $b $d"; ncu -i $rep.ncu-rep --page source --csv --print-source cuda 2>&1 \
        || ncu -i $rep.ncu-rep --page source --csv 2>&1; } >> "$OUT/ncu_source.txt"
  done
  grep -E "====|Duration|Executed Instructions  |Warp Cycles Per Issued|Issue Slots Busy|Registers Per" \
    "$OUT/ncu_details.txt" | head -40
fi
echo "total $(( $(date +%s) - t0 )) s"
