"""How long `escort_tf.convert` takes on this machine (not how fast its result runs).

Times `convert` of the SkimCaffe-pruned ResNet-50 at a small input (model
build and tracing, not arithmetic, dominate conversion), plain, with
`fold_batch_norm=True`, and with autotune plus folding, each `--reps` times
in one process, and writes the seconds as JSON. To compare two trees, run it
in each (e.g. a `git worktree` of the older commit) on the same machine:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/cpu/bench_convert_time.py --json t.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import escort_tf  # noqa: E402
from escort_tf import skimcaffe_models  # noqa: E402

VARIANTS = {"convert": {}, "convert_fold": {"fold_batch_norm": True},
            "autotune_fold": {"autotune": True, "fold_batch_norm": True}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args(argv)
    build, sparsity_of = skimcaffe_models.MODELS[args.model]
    dense, _ = skimcaffe_models.prune_like_skimcaffe(build(args.image_size), sparsity_of)
    seconds = {name: [] for name in VARIANTS}
    for _ in range(args.reps):
        for name, kwargs in VARIANTS.items():
            start = time.perf_counter()
            escort_tf.convert(dense, **kwargs)
            seconds[name].append(round(time.perf_counter() - start, 2))
            print(name, seconds[name][-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    report = {"model": args.model, "image_size": args.image_size, "commit": commit,
              "cpus": os.cpu_count(), "seconds": seconds, "command": " ".join(sys.argv)}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
