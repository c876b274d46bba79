"""Whole-model benchmark on CPU: pruned ResNet-50 and VGG-16, dense vs converted.

Writes benchmarks/results/cpu_models.{json,md}, the current whole-model
result, whatever the configuration (the reports record it: sparsity, autotune,
folding). Extra arguments go to `benchmarks/harness.py --models` (e.g. `--quick`,
`--models resnet50`, `--sparsity 0.7 --autotune`, `--fold-batch-norm`); the
committed cpu_models.* came from

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/cpu/bench_models.py --models resnet50 --fold-batch-norm

Earlier runs and other configurations are in benchmarks/results/history/
under descriptive names (model configuration, host, date); move the current
files there before a rerun replaces them if they are still cited.
"""

import os
import pathlib
import sys

# TFMOT and escort_tf need tf_keras; TF reads this when it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The dense peer is oneDNN; TF enables it by default only on CPUs
# with AVX-512 VNNI/BF16 or AMX (else tf.nn.conv2d runs Eigen's kernel).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import harness  # noqa: E402  (benchmarks/harness.py)

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "results"


if __name__ == "__main__":
    sys.exit(harness.main([
        "--models",
        "--json", str(RESULTS / "cpu_models.json"),
        "--markdown", str(RESULTS / "cpu_models.md"),
        *sys.argv[1:]]))
