"""Layer-table benchmark on CPU: `sparse_conv2d` vs `tf.nn.conv2d`, batch 1 and 8.

Writes benchmarks/results/cpu_layers.{json,md,png}. Extra arguments go to
`benchmarks/harness.py`, which takes `escort-tf bench`'s options (e.g. `--quick`,
`--layers resnet50_res3_3x3`):

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/cpu/bench_layers.py

The committed cpu_layers.* came from `... bench_layers.py --densities skimcaffe`;
earlier runs (with the 70% and 90% rows too) are in benchmarks/results/history/.
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
        "--json", str(RESULTS / "cpu_layers.json"),
        "--markdown", str(RESULTS / "cpu_layers.md"),
        "--plot", str(RESULTS / "cpu_layers.png"),
        *sys.argv[1:]]))
