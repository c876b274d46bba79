"""The layer table inside TensorFlow on the GPU, and the op's host cost per call.

Layers: each layer of `escort_tf.layer_table` at its SkimCaffe density, NHWC,
fp32, no bias, at batch 1 and 32. One `tf.function` runs `--calls`
convolutions back to back, each with its own filter, on rotating inputs, as
a model's layers follow each other, and is timed until the GPU is done
(nothing is copied back); time per call = that over `--calls`. Side by
side: the op, `tf.nn.conv2d` (cuDNN) with TF32 on (TF's default) and off.
`--kernel-json` merges the standalone kernel's device times from
benchmarks/gpu/bench.py (CUDA-graph replays, no host cost), so the TF
path's overhead reads as a ratio. With a GPU, each variant's GPU kernel
time inside TF (TF profiler, `common.gpu_kernel_us`) is reported too, and
its ratio to the standalone kernel, which the host's speed cannot move.

Host cost: a chain of `--chain` tiny convolutions (1x8x8x8, so the GPU work
is a few microseconds) over five filters of different shapes, in one
`tf.function`, against a chain of `tf.nn.bias_add` (TF's own per-op cost)
and of `tf.nn.conv2d`. With the GPU idle most of the time, wall time per op
is host time; the op's own cost is its time minus bias_add's.

  python benchmarks/gpu_tf/bench_layers.py --json OUT.json [--md OUT.md]
      [--kernel-json benchmarks/gpu bench.py output]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import escort_tf  # noqa: E402
from escort_tf.measurement import geomean  # noqa: E402
from escort_tf.timing import time_side_by_side  # noqa: E402
from escort_tf.layer_table import LAYERS  # noqa: E402


def random_csr(rng, shape, density):
    """A CSR filter with round(density * size) nonzeros at random taps."""
    kernel = np.zeros(int(np.prod(shape)), np.float32)
    nnz = int(round(density * kernel.size))
    kernel[rng.choice(kernel.size, nnz, replace=False)] = rng.standard_normal(nnz)
    return escort_tf.CsrFilter.from_dense(kernel.reshape(shape))


def bench_layer(layer, batch, calls, reps, rng):
    shape = (layer.kernel, layer.kernel, layer.in_channels, layer.out_channels)
    csrs = [random_csr(rng, shape, layer.skimcaffe_density) for _ in range(calls)]
    kernels = [tf.constant(csr.to_dense()) for csr in csrs]
    # Input sets to rotate through, as many as benchmarks/gpu/bench.py uses, so
    # that both read inputs from L2 alike (or not at all).
    in_bytes = 4 * batch * layer.height * layer.width * layer.in_channels
    sets = max(2, min(8, -(-120_000_000 // in_bytes)))
    xs = [tf.constant(rng.standard_normal((batch, layer.height, layer.width, layer.in_channels),
                                          np.float32)) for _ in range(sets)]
    padding = layer.explicit_padding()
    stride = layer.stride

    escort = common.serial_calls(
        lambda x, i: escort_tf.sparse_conv2d(x, csrs[i], strides=stride, padding=padding),
        xs, calls)
    cudnn = common.serial_calls(
        lambda x, i: tf.nn.conv2d(x, kernels[i], stride, [[0, 0], *padding, [0, 0]]), xs, calls)
    times = time_side_by_side({"escort": escort, "cudnn_tf32": cudnn}, reps=reps, warmup=2)
    gpu_us = common.gpu_kernel_us_each({"escort": escort, "cudnn_tf32": cudnn})
    with common.tf32(False):  # not flipped inside the rounds (see bench_models.py)
        times.update(time_side_by_side({"cudnn_fp32": cudnn}, reps=reps, warmup=2))
        gpu_us.update(common.gpu_kernel_us_each({"cudnn_fp32": cudnn}))
    with common.tf32(False):
        error = common.relative_error(
            escort_tf.sparse_conv2d(xs[0], csrs[0], strides=stride, padding=padding),
            tf.nn.conv2d(tf.cast(xs[0], tf.float64), tf.cast(kernels[0], tf.float64), stride,
                         [[0, 0], *padding, [0, 0]]))
    row = {"layer": layer.name, "batch": batch, "density": layer.skimcaffe_density,
           "nnz": csrs[0].nnz, "calls_per_function": calls, "relative_error_vs_float64": error}
    for kind, t in times.items():
        row[f"{kind}_us"] = 1e3 * t["median_ms"] / calls
    for kind in ("cudnn_tf32", "cudnn_fp32"):
        row[f"speedup_vs_{kind}"] = row[f"{kind}_us"] / row["escort_us"]
    for kind, us in gpu_us.items():
        row[f"{kind}_gpu_us"] = us / calls
    if gpu_us:
        row["gpu_time_speedup_vs_cudnn_tf32"] = gpu_us["cudnn_tf32"] / gpu_us["escort"]
    return row


def host_cost(chain_length, reps, rng):
    """Wall time per op of chains of tiny ops (see the module docstring)."""
    shapes = [(1, 1, 8, 8), (3, 3, 8, 8), (5, 5, 8, 8), (3, 1, 8, 8), (1, 3, 8, 8)]
    filters = [random_csr(rng, shape, 0.3) for shape in shapes]
    kernels = [tf.constant(f.to_dense()) for f in filters]
    bias = tf.constant(rng.standard_normal(8), tf.float32)
    x = tf.constant(rng.standard_normal((1, 8, 8, 8)), tf.float32)

    def chain(op):
        @tf.function
        def run(y):
            for i in range(chain_length):
                y = op(y, i % len(shapes))
            return y
        return lambda: run(x).numpy()

    fns = {"escort": chain(lambda y, i: escort_tf.sparse_conv2d(y, filters[i])),
           "cudnn": chain(lambda y, i: tf.nn.conv2d(y, kernels[i], 1, "SAME")),
           "bias_add": chain(lambda y, i: tf.nn.bias_add(y, bias))}
    times = time_side_by_side(fns, reps=reps, warmup=3)
    per_op = {kind: 1e3 * t["median_ms"] / chain_length for kind, t in times.items()}
    return {"chain_length": chain_length, "geometries": len(shapes),
            **{f"{kind}_us_per_op": v for kind, v in per_op.items()},
            "escort_minus_bias_add_us": per_op["escort"] - per_op["bias_add"]}


def merge_kernel_times(rows, kernel_json):
    """Adds the standalone kernel's device time (bench.py, escort_nhwc) to each row."""
    with open(kernel_json) as f:
        cases = json.load(f)["results"]
    for row in rows:
        for case in cases:
            if (case["layer"], case["batch"]) == (row["layer"], row["batch"]) and \
                    abs(case["density"] - row["density"]) < 1e-9:
                kernel_ms = case["ms"].get("escort_nhwc")
                if kernel_ms:
                    row["standalone_kernel_us"] = 1e3 * kernel_ms
                    row["tf_over_standalone"] = row["escort_us"] / row["standalone_kernel_us"]
                    if "escort_gpu_us" in row:
                        row["tf_gpu_time_over_standalone"] = (
                            row["escort_gpu_us"] / row["standalone_kernel_us"])


def markdown(report):
    lines = ["# The layer table in TensorFlow on the GPU", "",
             common.machine_line(report["machine"]), "", f"Command: `{report['command']}`", "",
             "Microseconds per convolution, each `tf.function` running "
             f"{report['calls']} convolutions back to back; the standalone kernel's device time "
             "(CUDA-graph replays, benchmarks/gpu/bench.py, same machine, same lease) beside it.",
             "", "| layer | batch | escort in TF | standalone kernel | TF / standalone | "
             "cuDNN TF32 | cuDNN fp32 | vs TF32 | vs fp32 |", "|---" * 9 + "|"]
    for row in report["layers"]:
        standalone = row.get("standalone_kernel_us")
        lines.append(
            f"| {row['layer']} | {row['batch']} | {row['escort_us']:.1f} | "
            + (f"{standalone:.1f} | {row['tf_over_standalone']:.2f}" if standalone else "- | -")
            + f" | {row['cudnn_tf32_us']:.1f} | {row['cudnn_fp32_us']:.1f} | "
            f"{row['speedup_vs_cudnn_tf32']:.2f}x | {row['speedup_vs_cudnn_fp32']:.2f}x |")
    lines.append("")
    if report["layers"] and "escort_gpu_us" in report["layers"][0]:
        lines += ["GPU kernel time per convolution inside the same `tf.function`s, in "
                  "microseconds (TF profiler): what the layer costs the GPU, whichever of "
                  "host and GPU bounds the wall time above.", "",
                  "| layer | batch | escort | TF GPU time / standalone | cuDNN TF32 | "
                  "cuDNN fp32 | vs TF32 |", "|---" * 7 + "|"]
        lines += [f"| {row['layer']} | {row['batch']} | {row['escort_gpu_us']:.1f} | "
                  + (f"{row['tf_gpu_time_over_standalone']:.2f}"
                     if "tf_gpu_time_over_standalone" in row else "-")
                  + f" | {row['cudnn_tf32_gpu_us']:.1f} | {row['cudnn_fp32_gpu_us']:.1f} | "
                  f"{row['gpu_time_speedup_vs_cudnn_tf32']:.2f}x |" for row in report["layers"]]
        lines.append("")
    for batch, summary in report["geomeans"].items():
        lines.append(f"Batch {batch}, geomean: " + ", ".join(
            f"{key} {value:.2f}" for key, value in summary.items()))
    host = report["host_cost"]
    lines += ["", f"Host cost per op (chains of {host['chain_length']} tiny ops over "
              f"{host['geometries']} filter shapes): escort {host['escort_us_per_op']:.1f} us, "
              f"cuDNN conv2d {host['cudnn_us_per_op']:.1f} us, bias_add "
              f"{host['bias_add_us_per_op']:.1f} us; the op's own cost beyond TF's per-op "
              f"cost: {host['escort_minus_bias_add_us']:.1f} us."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--md")
    parser.add_argument("--kernel-json", help="benchmarks/gpu/bench.py output to merge")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--chain", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="two layers, few repetitions")
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    layers = [layer for layer in LAYERS if not args.layers or layer.name in args.layers.split(",")]
    layers = layers[:2] if args.quick else layers
    reps = 3 if args.quick else args.reps
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for layer in layers:
            rows.append(bench_layer(layer, batch, args.calls, reps, rng))
            print(json.dumps(rows[-1]), flush=True)
    if args.kernel_json:
        merge_kernel_times(rows, args.kernel_json)
    geomeans = {}
    for batch in sorted({row["batch"] for row in rows}):
        batch_rows = [row for row in rows if row["batch"] == batch]
        summary = {key: geomean([row[key] for row in batch_rows])
                   for key in ("speedup_vs_cudnn_tf32", "speedup_vs_cudnn_fp32")}
        for key in ("gpu_time_speedup_vs_cudnn_tf32", "tf_gpu_time_over_standalone"):
            if all(key in row for row in batch_rows):
                summary[key] = geomean([row[key] for row in batch_rows])
        if all("tf_over_standalone" in row for row in batch_rows):
            summary["tf_over_standalone"] = geomean([row["tf_over_standalone"]
                                                     for row in batch_rows])
            summary["worst_tf_over_standalone"] = max(row["tf_over_standalone"]
                                                      for row in batch_rows)
        geomeans[str(batch)] = summary
    report = {"machine": common.machine_info(), "command": " ".join(["python"] + sys.argv),
              "calls": args.calls, "layers": rows, "geomeans": geomeans,
              "host_cost": host_cost(args.chain, reps, rng)}
    common.finish(report, args.json, args.md, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
