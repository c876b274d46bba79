"""Ops per model call: what a `tf.function` of the 2:4 ResNet-50 runs, by type.

Where TF's per-op dispatch bounds a model call (every model of
bench_sparse24.py on the H100 hosts so far), the number of ops in the call's
graph is the host's work. This counts them for bench_sparse24's ResNet-50 under
each mixed policy: dense, converted, converted with batch norms folded. Runs
on a CPU (it only traces); no timing.

  python benchmarks/gpu_tf/graph_ops.py --json OUT.json [--md OUT.md]
"""

import argparse
import collections
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sparse24  # noqa: E402

import escort_tf  # noqa: E402

# Graph nodes that do no work per call.
NOT_RUN = {"Placeholder", "Const", "NoOp", "Identity", "VarHandleOp"}


def count_ops(model, image_size):
    fn = tf.function(lambda t: model(t, training=False))
    graph = fn.get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 3], tf.float32)).graph
    types = collections.Counter(op.type for op in graph.get_operations())
    return {"ops": sum(n for t, n in types.items() if t not in NOT_RUN),
            "Cast": types.get("Cast", 0),
            "ReadVariableOp": types.get("ReadVariableOp", 0),
            "escort": sum(n for t, n in types.items() if t.startswith("Escort>"))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--md")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    rows = {}
    for name, policy in bench_sparse24.POLICIES.items():
        dense = bench_sparse24.resnet50_2_4(args.image_size, policy)
        for kind, model in [("dense", dense), ("converted", escort_tf.convert(dense)),
                            ("converted_folded",
                             escort_tf.convert(dense, fold_batch_norm=True))]:
            rows[f"{kind}_{name}"] = count_ops(model, args.image_size)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    report = {"tree": commit, "tensorflow": tf.__version__, "escort_tf": escort_tf.__version__,
              "models": rows}
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    if args.md:
        lines = ["| model | ops per call | Cast | ReadVariableOp | Escort ops |", "|---" * 5 + "|"]
        lines += [f"| {kind} | {r['ops']} | {r['Cast']} | {r['ReadVariableOp']} | {r['escort']} |"
                  for kind, r in rows.items()]
        with open(args.md, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
