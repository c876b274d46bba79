"""Whole-model benchmark on CPU: pruned ResNet-50 and VGG-16, dense vs converted.

Writes benchmarks/results/cpu_models.{json,md}. Extra arguments go to
`escort-tf bench --models` (e.g. `--quick`, `--models resnet50`):

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/cpu/bench_models.py

`--sparsity X`, `--autotune` and `--fold-batch-norm` also name the results, so
each configuration keeps its own files; the 70%-sparsity autotune run writes
benchmarks/results/cpu_models_70_autotune.{json,md}:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/cpu/bench_models.py --sparsity 0.7 --autotune
"""

import argparse
import os
import pathlib
import sys

# TFMOT and escort_tf need tf_keras; TF reads this when it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The dense peer is oneDNN; TF enables it by default only on CPUs
# with AVX-512 VNNI/BF16 or AMX (else tf.nn.conv2d runs Eigen's kernel).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from escort_tf import benchmark  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "results"


def results_stem(argv):
    """The results' file name without extension: cpu_models[_<percent>][_autotune][_fold].

    Only peeks at the two options; `escort-tf bench` parses and validates all
    of them (an invalid --sparsity still fails there with its own message).
    """
    # Strings, not floats: a bad value must reach escort-tf bench, not fail here.
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--sparsity", default=None)
    peek.add_argument("--autotune", action="store_true")
    peek.add_argument("--fold-batch-norm", action="store_true")
    known, _ = peek.parse_known_args(argv)
    stem = "cpu_models"
    try:
        stem += f"_{100 * float(known.sparsity):g}"
    except (TypeError, ValueError):  # not given, or not a number
        pass
    return (stem + ("_autotune" if known.autotune else "")
            + ("_fold" if known.fold_batch_norm else ""))


if __name__ == "__main__":
    stem = results_stem(sys.argv[1:])
    sys.exit(benchmark.main([
        "--models",
        "--json", str(RESULTS / f"{stem}.json"),
        "--markdown", str(RESULTS / f"{stem}.md"),
        *sys.argv[1:]]))
