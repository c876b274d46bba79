"""Kernel-level timing of the 2:4 tensor-core convolution next to cuDNN.

Our kernel runs in its own benchmark binary (cc/kernels/sparse24_conv_gpu_bench.cu:
CUDA events around back-to-back launches); cuDNN runs here through PyTorch,
timed from CUDA-graph replays of back-to-back calls (bench.graph_ms), so that
neither side counts host time. Every layer of benchmarks/layers.py, at
batch 1, 8 and 32, channels-last, no bias:
  escort_24_f16 / escort_24_bf16   ours, 2:4 filter (50% dense)
  escort_24_f16_whole              ours, f16, without split-K (no workspace)
  cudnn_f16 / cudnn_bf16           dense F.conv2d in that precision
  cudnn_tf32                       dense F.conv2d in fp32 with TF32 on

This is for tuning the kernel; the issue's targets are measured inside
TensorFlow (benchmarks/gpu_tf/).

  python3 bench_sparse24.py --json sparse24.json [--batches 1 8 32]
"""

import argparse
import json
import os
import subprocess

import torch
import torch.nn.functional as F

from ab_sparse24 import run_bench
from bench import device_info, geomean, graph_ms, set_tf32
from layers import LAYERS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
torch.backends.cudnn.benchmark = True


def build(build_dir):
    """Builds the kernel's benchmark (and test) into `build_dir`; returns the benchmark."""
    subprocess.run(["bash", "cc/kernels/build_sparse24_gpu.sh", build_dir], cwd=ROOT, check=True)
    return os.path.join(build_dir, "sparse24_conv_gpu_bench")


def ours(binary, layer, batch, dtype, *options):
    return run_bench(binary, batch, layer.height, layer.width, layer.in_channels,
                     layer.out_channels, layer.kernel, layer.stride, layer.padding, dtype,
                     *options) / 1e3


def cudnn(layer, batch, dtype):
    x = torch.randn(batch, layer.in_channels, layer.height, layer.width, device="cuda",
                    dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(layer.out_channels, layer.in_channels, layer.kernel, layer.kernel,
                    device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    return graph_ms([lambda: F.conv2d(x, w, None, layer.stride, layer.padding)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--build-dir", default=os.path.join(HERE, "build", "sparse24"))
    parser.add_argument("--prebuilt", action="store_true",
                        help="use the benchmark already in --build-dir (built elsewhere)")
    args = parser.parse_args()
    build_dir = os.path.abspath(args.build_dir)
    binary = (os.path.join(build_dir, "sparse24_conv_gpu_bench") if args.prebuilt
              else build(build_dir))
    rows = []
    for batch in args.batches:
        for layer in LAYERS:
            ms = {"escort_24_f16": ours(binary, layer, batch, "f16"),
                  "escort_24_f16_whole": ours(binary, layer, batch, "f16", "whole"),
                  "escort_24_bf16": ours(binary, layer, batch, "bf16"),
                  "cudnn_f16": cudnn(layer, batch, torch.float16),
                  "cudnn_bf16": cudnn(layer, batch, torch.bfloat16)}
            set_tf32(True)
            ms["cudnn_tf32"] = cudnn(layer, batch, torch.float32)
            set_tf32(False)
            rows.append({"layer": layer.name, "batch": batch, "ms": ms})
            print(f"{layer.name:20s} b{batch:<3d} " + "  ".join(
                f"{name} {t * 1e3:8.1f}us" for name, t in ms.items()), flush=True)
    summary = {}
    for batch in args.batches:
        sel = [r["ms"] for r in rows if r["batch"] == batch]
        summary[f"batch{batch}"] = {
            "f16_vs_cudnn_f16": geomean([m["cudnn_f16"] / m["escort_24_f16"] for m in sel]),
            "bf16_vs_cudnn_bf16": geomean([m["cudnn_bf16"] / m["escort_24_bf16"] for m in sel]),
            "f16_vs_cudnn_tf32": geomean([m["cudnn_tf32"] / m["escort_24_f16"] for m in sel]),
            "f16_split_k_vs_whole": geomean([m["escort_24_f16_whole"] / m["escort_24_f16"]
                                             for m in sel]),
        }
        print(f"batch {batch}: geomean speedup " + ", ".join(
            f"{k} {v:.2f}x" for k, v in summary[f"batch{batch}"].items()), flush=True)
    with open(args.json, "w") as f:
        json.dump({"device": device_info(), "rows": rows, "geomean_speedup": summary}, f,
                  indent=1)


if __name__ == "__main__":
    main()
