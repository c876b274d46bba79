#!/usr/bin/env bash
# Builds the 2:4 kernel's standalone test and benchmark (no framework) into
# OUTDIR: sparse24_conv_gpu_test and sparse24_conv_gpu_bench.
#   build_sparse24_gpu.sh OUTDIR
# The wgmma kernel (sparse24_conv_wgmma.cu) is compiled for sm_90a, the only
# target it has, and runs on Hopper; ESCORT_TF_SPARSE24_WGMMA=0 builds without
# it, so that the mma.sp kernel runs there too (for A/B runs).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:?usage: build_sparse24_gpu.sh OUTDIR}"
mkdir -p "$OUT"
NVCC="${NVCC:-nvcc}"
FLAGS=(-std=c++17 -O3 "-I$ROOT")
if [ "${ESCORT_TF_SPARSE24_WGMMA:-1}" = 1 ]; then
  WGMMA=(-gencode=arch=compute_90a,code=sm_90a -DESCORT_SPARSE24_WGMMA=1)
else
  WGMMA=(-gencode=arch=compute_90,code=sm_90)
fi
cd "$ROOT"
"$NVCC" "${FLAGS[@]}" "${WGMMA[@]}" -Xptxas -v -c cc/kernels/sparse24_conv_wgmma.cu \
  -o "$OUT/sparse24_conv_wgmma.o" 2> "$OUT/ptxas_wgmma.txt"
pids=()
for main in test bench; do
  "$NVCC" "${FLAGS[@]}" -gencode=arch=compute_90,code=sm_90 \
    "cc/kernels/sparse24_conv_gpu_$main.cu" cc/kernels/sparse24_conv_gpu.cu \
    cc/kernels/sparse24_conv.cc cc/kernels/csr_conv_reference.cc cc/kernels/csr_validate.cc \
    "$OUT/sparse24_conv_wgmma.o" -o "$OUT/sparse24_conv_gpu_$main" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
