#!/usr/bin/env bash
# Builds the layer-1 CUDA kernel for the harness: a shared library with a C
# ABI (ctypes) and the standalone test. No TensorFlow. Usage: build.sh [outdir]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/benchmarks/gpu/build}"
mkdir -p "$OUT"
NVCC="${NVCC:-nvcc}"
# SASS for Hopper (the measured card) plus PTX for anything newer; GPU_ARCH
# overrides (e.g. PTX-only compute_75 runs the pre-sm_80 path on a Hopper).
ARCH="${GPU_ARCH:--gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90}"
FLAGS="-std=c++17 -O3 -I$ROOT -lineinfo $ARCH"
cd "$ROOT"
# The two builds run side by side (each compiles every kernel instance).
$NVCC $FLAGS -Xptxas -v -Xcompiler -fPIC -shared \
  cc/kernels/csr_conv_gpu.cu cc/kernels/csr_conv_gpu_plan.cc \
  benchmarks/gpu/escort_capi.cu \
  -o "$OUT/libescort_gpu.so" 2> "$OUT/ptxas.txt" &
lib=$!
$NVCC $FLAGS cc/kernels/csr_conv_gpu_test.cu cc/kernels/csr_conv_gpu.cu \
  cc/kernels/csr_conv_gpu_plan.cc cc/kernels/csr_conv_reference.cc \
  cc/kernels/csr_validate.cc \
  -o "$OUT/csr_conv_gpu_test"
wait $lib
grep -E "registers|spill" "$OUT/ptxas.txt" | paste - - | sed 's/ptxas info    ://g' | head -20 || true  # PTX-only builds run no ptxas
