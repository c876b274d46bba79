#!/usr/bin/env bash
# Tuning helper (device): builds each variants/*.cu as its own library and
# times it with bench.py on a layer subset, next to the tree's kernel.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${OUT:-$HERE/out}"
ARCH="-gencode=arch=compute_90,code=sm_90"
echo "== tree kernel"
ESCORT_GPU_LIB="$HERE/build/libescort_gpu.so" python3 "$HERE/bench.py" --json "$OUT/variant_tree.json" \
  --quick --escort-only ${VARIANT_ARGS:-} 2>&1 | grep -E "b=|geomean" | cut -c1-400
shopt -s nullglob
for v in "$HERE"/variants/*.cu; do
  name=$(basename "$v" .cu)
  mkdir -p "$HERE/build/$name"
  cp "$v" "$HERE/build/$name/csr_conv_gpu.cu"
  nvcc -std=c++17 -O3 -I"$ROOT" $ARCH -Xcompiler -fPIC -shared "$HERE/build/$name/csr_conv_gpu.cu" \
    "$HERE/escort_capi.cu" -o "$HERE/build/$name/lib.so" || continue
  echo "== variant $name"
  ESCORT_GPU_LIB="$HERE/build/$name/lib.so" python3 "$HERE/bench.py" --json "$OUT/variant_$name.json" \
    --quick --escort-only ${VARIANT_ARGS:-} 2>&1 | grep -E "b=|geomean" | cut -c1-400
done
