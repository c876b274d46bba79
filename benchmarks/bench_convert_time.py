"""How long `escort_tf.convert` takes on this machine (not how fast its result runs).

Times `convert` of a SkimCaffe-pruned model (default ResNet-50), plain, with
`fold_batch_norm=True`, and with autotune (at each of `--batches`) plus
folding, `--reps` rounds in one process, in that order, and writes every
run's seconds, and for autotune what the whole-model check kept, as JSON. On
the CPU a small input (default 32x32) makes model build and tracing, not
arithmetic, dominate; on a GPU use the real size (`--image-size 224`). The
first conversion of a process also pays TensorFlow's start-up on the device,
so compare later rounds. To compare two trees, run it in each (e.g. a
`git worktree` of the older commit) on the same machine:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/bench_convert_time.py --json t.json
    python benchmarks/bench_convert_time.py --json g.json --image-size 224 \\
        --variants autotune_fold --batches 1,8,32 --reps 2     # on a GPU
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import escort_tf  # noqa: E402
from escort_tf import measurement, skimcaffe_models  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_tf"))
import common  # noqa: E402  (benchmarks/gpu_tf: the GPU and CUDA versions)

VARIANTS = {"convert": {}, "convert_fold": {"fold_batch_norm": True},
            "autotune_fold": {"autotune": True, "fold_batch_norm": True}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--batches", default="1", help="autotune batch sizes, comma-separated")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    build, sparsity_of = skimcaffe_models.MODELS[args.model]
    dense, _ = skimcaffe_models.prune_like_skimcaffe(build(args.image_size), sparsity_of)
    autotune_batches = [int(b) for b in args.batches.split(",")]
    runs = []
    for round_index in range(args.reps):
        for name in variants:
            for batch in autotune_batches if VARIANTS[name].get("autotune") else [None]:
                kwargs = dict(VARIANTS[name], return_report=True)
                if batch is not None:
                    kwargs["autotune_batch_size"] = batch
                start = time.perf_counter()
                _, report = escort_tf.convert(dense, **kwargs)
                run = {"round": round_index, "variant": name, "batch": batch,
                       "seconds": round(time.perf_counter() - start, 2),
                       "sparse_layers": sum(row.decision == "sparse" for row in report)}
                if report.model_ms is not None:
                    run["whole_model_ms"] = {k: round(v, 3) for k, v in report.model_ms.items()}
                    run["kept"] = report.model_choice
                runs.append(run)
                print(json.dumps(run), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    seconds = {}
    for run in runs:
        key = run["variant"] + (f"_b{run['batch']}" if run["batch"] is not None else "")
        seconds.setdefault(key, []).append(run["seconds"])
    report = {"model": args.model, "image_size": args.image_size, "commit": commit,
              "machine": (common.machine_info() if tf.config.list_physical_devices("GPU")
                          else measurement.machine_info()),
              "seconds": seconds, "runs": runs, "command": " ".join(sys.argv)}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
