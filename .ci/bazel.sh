#!/usr/bin/env bash
# CI step for the Bazel build (issue 7): builds //:escort_ops offline and runs
# the op tests against the Bazel-built library instead of setup.py's.
#
# Needs .venv with TensorFlow (e.g. `make venv`). Users run `bazelisk build
# //:escort_ops`; bazelisk cannot download Bazel here, so when `bazel` is
# missing we install Debian's bazel-bootstrap (Bazel 4.2.3, the version
# .bazelversion pins), which needs nothing else from the network.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON_BIN_PATH:-$PWD/.venv/bin/python}"
[ -x "$PY" ] || { echo "$PY not found: create .venv first (make venv)" >&2; exit 1; }

if ! command -v bazel >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q bazel-bootstrap >/dev/null ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q bazel-bootstrap >/dev/null; }
fi

# Debian's /usr/bin/bazel is a wrapper that honours .bazelversion (4.2.3, for
# bazelisk users) by looking for /usr/bin/bazel-4.2.3; its Bazel 4.2.3 is
# installed as /usr/bin/bazel-4.
if [ "$(command -v bazel)" = /usr/bin/bazel ] && [ -x /usr/bin/bazel-4 ] &&
   [ ! -x /usr/bin/bazel-4.2.3 ]; then
  export USE_BAZEL_VERSION=4
fi

# A short idle timeout: the Bazel server should not outlive the CI job long.
bazel --max_idle_secs=300 build --repo_env=PYTHON_BIN_PATH="$PY" //:escort_ops

# The default Bazel build is the CPU flavour (--config=cuda adds the GPU one).
ESCORT_TF_OPS_LIBRARY="$PWD/bazel-bin/_escort_ops.so" ESCORT_TF_EXPECT_CUDA=0 \
  "$PY" -m pytest -q tests/test_ops.py
