#!/bin/sh
# Runs pytest from the runfiles tree (where escort_tf/ and tests/ are), making
# escort_tf load the op library Bazel built: bazel_pytest.sh PYTHON SO TEST...
set -eu
python="$1"
library="$2"
shift 2
ESCORT_TF_OPS_LIBRARY="$PWD/$library" exec "$python" -m pytest -q -p no:cacheprovider "$@"
