#!/usr/bin/env bash
# Builds csr_conv_cpu_bench and runs it over every layer of
# benchmarks/layers.py at the layer's SkimCaffe density.
# Usage (from anywhere): cc/kernels/run_cpu_bench.sh [batch ...]   default: 1 8
# ESCORT_CPU_ISA=scalar|avx2|avx512 forces a path; BENCH_BIN sets the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${BENCH_BIN:-${TMPDIR:-/tmp}/csr_conv_cpu_bench}"
g++ -std=c++17 -O3 -I. cc/kernels/csr_conv_cpu_bench.cc \
  cc/kernels/csr_conv_cpu.cc cc/kernels/csr_conv_cpu_x86.cc \
  cc/kernels/csr_validate.cc -lpthread -o "$bin"
batches="${*:-1 8}"
# The layer table stays the single source of shapes: read it, don't copy it.
layers="$(python3 -c '
import sys
sys.path.insert(0, "benchmarks")
from layers import LAYERS
for l in LAYERS:
    print(l.name, l.height, l.width, l.in_channels, l.out_channels,
          l.kernel, l.stride, l.padding, l.skimcaffe_density)
')"
for batch in $batches; do
  while read -r name h w c k r stride pad density; do
    printf '%-20s ' "$name"
    "$bin" "$batch" "$h" "$w" "$c" "$k" "$r" "$r" "$stride" "$pad" "$density"
  done <<< "$layers"
done
