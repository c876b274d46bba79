"""Whole-model benchmark on CPU: pruned ResNet-50 and VGG-16, dense vs converted.

Writes benchmarks/results/cpu_models.{json,md}. Extra arguments go to
`escort-tf bench --models` (e.g. `--quick`, `--models resnet50`):

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/cpu/bench_models.py
"""

import os
import pathlib
import sys

# TFMOT and escort_tf need tf_keras; TF reads this when it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from escort_tf import benchmark  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "results"

if __name__ == "__main__":
    sys.exit(benchmark.main([
        "--models",
        "--json", str(RESULTS / "cpu_models.json"),
        "--markdown", str(RESULTS / "cpu_models.md"),
        *sys.argv[1:]]))
