"""Where a model call's time goes: TF profiler time per op type, dense vs converted.

Prunes and converts a model of `escort_tf.skimcaffe_models.MODELS` as the model
benchmark does, then profiles `reps` `tf.function` calls of each variant with
the TF profiler and sums the host events of each op type (inter-op threads
run ops side by side, so the sums can exceed the wall time):

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/cpu/profile_ops.py \\
        --model resnet50 --batch 8 \\
        --markdown benchmarks/results/history/cpu_profile_resnet50_b8_avx2-epyc_2026-12-02.md

(that is how the committed profile was written, on the AVX2-only EPYC host;
name a new one by its host and date).
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # the dense peer of bench_models.py

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from escort_tf import fold, skimcaffe_models  # noqa: E402
from escort_tf.measurement import machine_info  # noqa: E402
from escort_tf.model_timing import prune_and_convert  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import harness  # noqa: E402  (benchmarks/harness.py)
from gpu_tf import common as gpu_tf_common  # noqa: E402  (its profile recording and parsing)


def op_times_ms(call, x, reps):
    """(wall ms per call, {op type: ms per call}) of `reps` profiled calls."""
    for _ in range(2):  # trace and warm up outside the profile
        call(x).numpy()
    with gpu_tf_common.recording() as spaces:
        start = time.perf_counter()
        for _ in range(reps):
            call(x).numpy()
        wall_ms = 1e3 * (time.perf_counter() - start) / reps
    return wall_ms, {op: ps / 1e9 / reps
                     for op, ps in gpu_tf_common.host_op_ps_by_type(spaces[0]).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(skimcaffe_models.MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--top", type=int, default=8, help="op types listed per variant")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--markdown", metavar="PATH")
    args = parser.parse_args()

    dense, sparse, _ = prune_and_convert(args.model, args.image_size)
    variants = {"dense": dense, "converted": sparse,
                "converted, fold_batch_norm=True": fold.fold_batch_norm(sparse)[0]}
    x = tf.constant(np.random.default_rng(0).standard_normal(
        (args.batch, args.image_size, args.image_size, 3)).astype(np.float32))
    report = {"machine": machine_info(), "model": args.model, "batch": args.batch,
              "reps": args.reps, "variants": {}}
    lines = [f"# Op time per model call: {args.model}, batch {args.batch}", "",
             f"{harness.machine_line(report['machine'])} TF profiler, {args.reps} calls "
             "per variant; ms per call summed over each op type's host events.", "",
             "| variant | wall ms | op type | ms | share of wall |", "|---|---|---|---|---|"]
    for name, model in variants.items():
        wall, per_type = op_times_ms(tf.function(lambda t, m=model: m(t, training=False)),
                                     x, args.reps)
        report["variants"][name] = {"wall_ms": wall, "op_ms": per_type}
        first = [name, f"{wall:.1f}"]
        for op, ms in sorted(per_type.items(), key=lambda kv: -kv[1])[:args.top]:
            lines.append("| " + " | ".join(first + [op, f"{ms:.1f}", f"{ms / wall:.0%}"]) + " |")
            first = ["", ""]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        pathlib.Path(args.markdown).write_text(markdown)


if __name__ == "__main__":
    main()
