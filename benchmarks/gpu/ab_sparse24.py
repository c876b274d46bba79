"""Interleaved A/B timing of several builds of the 2:4 kernel on one card.

Each build is a directory holding `sparse24_conv_gpu_bench`, made by
`cc/kernels/build_sparse24_gpu.sh DIR` from one tree (a worktree per
revision). Every layer runs in every build in turns, round after round, so
that clock or card drift between separate runs cannot pass for a speedup;
each time is the binary's own (CUDA events around back-to-back launches),
and the result is the median over rounds. No PyTorch needed.

  python3 ab_sparse24.py --json ab.json --builds base=build/a tree=build/b \\
      [--batches 1 32] [--dtype f16] [--rounds 3] [--shape name=N,H,W,C,K,R,stride,pad ...]

Without --shape the layers are those of layers.py at each of --batches.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from layers import LAYERS  # noqa: E402  (benchmarks/layers.py)


def shapes(args):
    """(name, N, H, W, C, K, R, stride, pad) of every configuration to time."""
    if args.shape:
        out = []
        for spec in args.shape:
            name, dims = spec.split("=", 1)
            out.append((name, *(int(d) for d in dims.split(","))))
        return out
    return [(f"{layer.name}_b{batch}", batch, layer.height, layer.width, layer.in_channels,
             layer.out_channels, layer.kernel, layer.stride, layer.padding)
            for batch in args.batches for layer in LAYERS]


def run_bench(binary, n, h, w, c, k, r, stride, pad, dtype, *options):
    """Microseconds per call that `binary` (a sparse24_conv_gpu_bench) reports
    for an R x R convolution; `options` are its trailing arguments ("whole")."""
    args = (n, h, w, c, k, r, r, stride, pad, dtype, *options)
    result = subprocess.run([binary, *map(str, args)], check=True, capture_output=True,
                            text=True)
    return json.loads(result.stdout)["us"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--builds", nargs="+", required=True,
                        help="name=DIR, the first is the base the others are compared with")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dtype", choices=("f16", "bf16"), default="f16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", action="append",
                        help="name=N,H,W,C,K,R,stride,pad (repeatable; replaces the layer table)")
    args = parser.parse_args()
    builds = {name: os.path.join(path, "sparse24_conv_gpu_bench")
              for name, path in (spec.split("=", 1) for spec in args.builds)}
    base = next(iter(builds))
    rows = []
    for shape in shapes(args):
        us = {name: [] for name in builds}
        for _ in range(args.rounds):
            for name, binary in builds.items():
                us[name].append(run_bench(binary, *shape[1:], args.dtype))
        median = {name: statistics.median(times) for name, times in us.items()}
        rows.append({"shape": shape, "us": us, "median_us": median,
                     "speedup_over_" + base: {name: median[base] / t for name, t in median.items()}})
        print(f"{shape[0]:28s} " + "  ".join(
            f"{name} {t:8.1f}us ({median[base] / t:.3f}x)" for name, t in median.items()),
            flush=True)
    with open(args.json, "w") as f:
        json.dump({"dtype": args.dtype, "rounds": args.rounds, "builds": builds, "rows": rows},
                  f, indent=1)


if __name__ == "__main__":
    main()
