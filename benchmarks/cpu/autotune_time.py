"""How long `convert(autotune=True)` takes on the 2:4-pruned ResNet-50, on this machine.

The model is benchmarks/gpu_tf/bench_sparse24.py's (every conv whose input
channels are a multiple of 32 pruned 2:4). Each round converts it once with
`autotune=True, autotune_whole_model=False` (the per-layer timing is what is
measured) and records the wall time and how many layers reused another
layer's timings. Run from a tree (`PYTHONPATH=<tree>`) to time that tree's
converter:

  TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python benchmarks/cpu/autotune_time.py --json OUT.json
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gpu_tf"))
import bench_sparse24  # noqa: E402  (benchmarks/gpu_tf/bench_sparse24.py: the model)

import escort_tf  # noqa: E402
from escort_tf.measurement import machine_info  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    model = bench_sparse24.resnet50_2_4(args.image_size, args.policy)
    runs = []
    for round_ in range(args.rounds):
        start = time.perf_counter()
        _, report = escort_tf.convert(model, autotune=True, autotune_batch_size=args.batch,
                                      autotune_whole_model=False, return_report=True)
        seconds = time.perf_counter() - start
        runs.append({"round": round_, "seconds": round(seconds, 2),
                     "timed_layers": sum(r.reason.startswith("autotune at") for r in report),
                     "sparse_timings_reused": sum("2:4 filter)" in r.reason for r in report),
                     "dense_timings_reused": sum("dense timed on" in r.reason for r in report)})
        print(json.dumps(runs[-1]), flush=True)
    commit = subprocess.run(["git", "-C", escort_tf.__path__[0], "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report = {"what": __doc__.splitlines()[0], "command": " ".join(["python"] + sys.argv),
              "machine": machine_info(), "commit": commit, "escort_tf": escort_tf.__path__[0],
              "image_size": args.image_size, "batch": args.batch, "policy": args.policy,
              "runs": runs}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
