#!/usr/bin/env bash
# Runs the GPU test suite or the in-TF GPU benchmarks on a GPU machine that
# has no TensorFlow and no package index. TensorFlow arrives as a tar of the
# wheels (tensorflow 2.21, tf-keras, TFMOT, their pure-Python dependencies and
# the CUDA 12 runtime wheel) plus an install.sh that installs them into
# /tmp/site and maps TF's CUDA 12 library names onto the machine's CUDA
# libraries, split into parts /tmp/x/p00, p01, ... (one carried per call; a call
# carries the tree too, 64 MiB in all, so with this tree at ~7 MB the 58 MiB parts
# of make-parts.sh need re-splitting, in their folder:
# cat p?? > all && rm p?? && split -b 50m -d -a 2 all p && rm all).
# Usage, from the repository root:
#   run_on_device.sh setup   # join, unpack and install those, build the op, check the GPU
#   run_on_device.sh test    # tests/gpu, then the whole suite
#   run_on_device.sh models [args]  # bench_models.py
#   run_on_device.sh layers [args]  # bench.py (standalone kernel) + bench_layers.py
#   run_on_device.sh sparse24 [args]  # the 2:4 kernel's own test, bench_sparse24.py
# Logs and results go to $OUT (or ./gpu_tf_out). The op library is the one in
# escort_tf/ when it was built elsewhere and carried, else it is built here.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_tf_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

env_ready() {
  # shellcheck disable=SC1091
  . /tmp/gpu-tf-env.sh
  export PYTHONPATH="$PWD:$PYTHONPATH"
}

case "${1:?usage: run_on_device.sh setup|test|models|layers|sparse24}" in
  setup)
    mkdir -p /tmp/pl
    cat /tmp/x/p?? | tar -x -C /tmp/pl
    bash /tmp/pl/install.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
    env_ready
    if [ ! -f escort_tf/_escort_ops.so ]; then
      ESCORT_TF_CUDA=1 ESCORT_TF_CUDA_ARCHS=90 python3 -m pip install -q --no-build-isolation \
        --no-deps -e . > "$OUT/build.log" 2>&1
    fi
    python3 -c "import tensorflow as tf, escort_tf; print('TF', tf.__version__, \
tf.config.list_physical_devices('GPU'), 'escort_tf', escort_tf.__version__)"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
    ;;
  test)
    env_ready
    shift
    # Both sets run even when the first fails; the exit status says whether either did.
    rc=0
    python3 -m pytest -q -p no:cacheprovider tests/gpu "$@" 2>&1 | tee "$OUT/pytest_gpu.log" \
      | tail -25 || rc=1
    python3 -m pytest -q -p no:cacheprovider -n 8 tests --ignore=tests/gpu "$@" 2>&1 \
      | tee "$OUT/pytest_all.log" | tail -25 || rc=1
    exit $rc
    ;;
  models)
    env_ready
    shift
    python3 benchmarks/gpu_tf/bench_models.py --json "$OUT/gpu_tf_models.json" \
      --md "$OUT/gpu_tf_models.md" "$@" 2>&1 | tee "$OUT/models.log" | grep -v "^I0000\|^W0000"
    ;;
  layers)
    env_ready
    shift
    # The standalone kernel first, through the PyTorch harness (no TF in that
    # process): its own test, then its device times. ESCORT_KERNEL_BUILD names
    # a folder where benchmarks/gpu/build.sh already built it (carried, to
    # spare the device the compile), else it is built here.
    kernel_build="$(realpath -m "${ESCORT_KERNEL_BUILD:-/tmp/kernel_build}")"
    ([ -f "$kernel_build/libescort_gpu.so" ] && [ -f "$kernel_build/csr_conv_gpu_test" ] \
      || (cd benchmarks/gpu && bash build.sh "$kernel_build" > "$OUT/kernel.log" 2>&1)) \
      && "$kernel_build/csr_conv_gpu_test" 60 2 >> "$OUT/kernel.log" 2>&1 \
      && (cd benchmarks/gpu && env -u LD_LIBRARY_PATH -u PYTHONPATH \
        ESCORT_GPU_LIB="$kernel_build/libescort_gpu.so" \
        python3 bench.py --json "$OUT/kernel.json" --escort-only --skim-only --batches 1,32 \
        >> "$OUT/kernel.log" 2>&1) \
      || echo "standalone kernel run failed: see kernel.log"
    tail -4 "$OUT/kernel.log"
    kernel_json=()
    [ -f "$OUT/kernel.json" ] && kernel_json=(--kernel-json "$OUT/kernel.json")
    python3 benchmarks/gpu_tf/bench_layers.py --json "$OUT/gpu_tf_layers.json" \
      --md "$OUT/gpu_tf_layers.md" "${kernel_json[@]}" "$@" 2>&1 | tee "$OUT/layers.log" \
      | grep -v "^I0000\|^W0000" | tail -30
    ;;
  sparse24)
    env_ready
    shift
    bash cc/kernels/build_sparse24_gpu.sh /tmp/sparse24_build \
      && /tmp/sparse24_build/sparse24_conv_gpu_test 100 5 2>&1 \
      | tee "$OUT/sparse24_kernel_test.log" | tail -3
    python3 benchmarks/gpu_tf/bench_sparse24.py --json "$OUT/gpu_tf_sparse24.json" \
      --md "$OUT/gpu_tf_sparse24.md" "$@" 2>&1 | tee "$OUT/sparse24.log" \
      | grep -v "^I0000\|^W0000" | tail -40
    ;;
  *) echo "unknown step $1" >&2; exit 2 ;;
esac
