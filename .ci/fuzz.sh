#!/usr/bin/env bash
# Builds cc/kernels/csr_conv_fuzz.cc with libFuzzer + ASan + UBSan and runs a
# bounded slice. Exits nonzero on any crash, sanitizer report, timeout or
# mismatch; the reproducer is left in $FUZZ_DIR/artifacts/.
#
#   FUZZ_SECONDS  fuzzing time (default 45: with the ~10 s build, CI stays <= 60 s)
#   FUZZ_RUNS     stop after this many inputs instead (default: unbounded)
#   FUZZ_SEED     libFuzzer seed (default 1: the CI slice is reproducible)
#   FUZZ_DIR      build/corpus/artifact folder (default build/fuzz)
# Reproduce a crash: build/fuzz/csr_conv_fuzz build/fuzz/artifacts/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-45}
FUZZ_RUNS=${FUZZ_RUNS:--1}
FUZZ_SEED=${FUZZ_SEED:-1}
FUZZ_DIR=${FUZZ_DIR:-build/fuzz}

# libFuzzer ships with clang's runtime package on Debian; CI images lack both.
find_clang() {
  for cxx in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$cxx" >/dev/null 2>&1; then echo "$cxx"; return 0; fi
  done
  return 1
}
CXX_FUZZ=$(find_clang || true)
if [[ -z "$CXX_FUZZ" ]] || ! "$CXX_FUZZ" -print-file-name=libclang_rt.fuzzer-x86_64.a | grep -q /; then
  echo "fuzz.sh: installing clang and its runtime (libFuzzer) from Debian" >&2
  SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
  CXX_FUZZ=$(find_clang)
  version=$("$CXX_FUZZ" -dumpversion | cut -d. -f1)
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libclang-rt-${version}-dev" >/dev/null
fi

# The kernel sources are the ones the op builds (cc/sources.bzl is Python).
mapfile -t SOURCES < <(python3 -c '
ns = {}
exec(open("cc/sources.bzl").read(), ns)
print("\n".join(ns["KERNEL_SRCS"]))')
# The SIMD kernels may live in a file not yet listed there; link it if so.
if [[ -f cc/kernels/csr_conv_cpu_x86.cc ]] && [[ ! " ${SOURCES[*]} " =~ " cc/kernels/csr_conv_cpu_x86.cc " ]]; then
  SOURCES+=(cc/kernels/csr_conv_cpu_x86.cc)
fi

mkdir -p "$FUZZ_DIR/corpus" "$FUZZ_DIR/artifacts"
"$CXX_FUZZ" -std=c++17 -O1 -g -I. \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -fno-omit-frame-pointer \
  -o "$FUZZ_DIR/csr_conv_fuzz" cc/kernels/csr_conv_fuzz.cc "${SOURCES[@]}"

# -timeout: one input running over 10 s is a hang. -rss_limit_mb: a leak or
# an unchecked allocation size. The corpus persists between local runs.
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
"$FUZZ_DIR/csr_conv_fuzz" "$FUZZ_DIR/corpus" \
  -seed="$FUZZ_SEED" -max_total_time="$FUZZ_SECONDS" -runs="$FUZZ_RUNS" \
  -max_len=512 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$FUZZ_DIR/artifacts/"
