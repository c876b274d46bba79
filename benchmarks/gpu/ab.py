"""Interleaved A/B timing of several builds of the escort kernel on one card.

Each build is a libescort_gpu.so (e.g. the tree's and one of variants/ built by
variants.sh); all are loaded into one process and timed in turns, round after
round, on the same inputs, with cuDNN TF32 as the reference, so that clock or
card drift between separate runs cannot pass for a speedup. Device time per call
from CUDA-graph replays (bench.graph_ms); each build runs its own heuristic tile.

  python3 ab.py --json ab.json --libs tree=build/libescort_gpu.so head=build/head/lib.so \\
      [--batches 1,32] [--layers a,b] [--rounds 3]
"""

import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F

import bench
import escort_gpu as eg
from layers import LAYERS


def load(path):
    """A configured ctypes handle for the library at `path`."""
    eg._lib, eg.LIB_PATH = None, path
    handle = eg.lib()
    eg._lib = None
    return handle


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--libs", nargs="+", required=True, help="name=path, the first is the base")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--layers", default="")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    libs = dict(s.split("=", 1) for s in args.libs)
    handles = {name: load(path) for name, path in libs.items()}
    names = list(libs)
    info = bench.device_info()
    gen = torch.Generator().manual_seed(7)
    layers = [l for l in LAYERS if not args.layers or l.name in args.layers.split(",")]
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for layer in layers:
            K, C, R = layer.out_channels, layer.in_channels, layer.kernel
            w = eg.random_filter(K, C, R, R, layer.skimcaffe_density, gen)
            csr = eg.CsrFilter(w)
            n_sets = max(2, min(8, math.ceil(120e6 / (batch * C * layer.height * layer.width * 4))))
            xs = bench.layer_inputs(layer, batch, n_sets, gen)
            xs_nhwc = [x.permute(0, 2, 3, 1).contiguous() for x in xs]
            pad = layer.padding
            geo = eg.Geometry(batch, layer.height, layer.width, C, K, R, R, (layer.stride,) * 2,
                              (1, 1), "EXPLICIT", ((pad, pad), (pad, pad)), True)
            out = torch.empty(geo.output_shape(), device="cuda")
            ref = eg.torch_reference(geo, xs_nhwc[0], w, None, "none")
            row = dict(layer=layer.name, batch=batch, density=layer.skimcaffe_density,
                       nnz=csr.nnz, config={}, rel_error={}, ms={n: [] for n in names + ["cudnn_tf32"]})
            fns = [lambda x=x: eg.conv(geo, x, csr, None, "none", out) for x in xs_nhwc]
            for name in names:
                eg._lib = handles[name]
                row["config"][name] = eg.choose_config(geo, csr.nnz, info["sms"])
                eg.conv(geo, xs_nhwc[0], csr, None, "none", out)
                torch.cuda.synchronize()
                row["rel_error"][name] = ((out.double() - ref).norm() / ref.norm()).item()
            del ref
            tf32 = [lambda x=x: F.conv2d(x, w, None, layer.stride, pad) for x in xs]
            for _ in range(args.rounds):
                for name in names:
                    eg._lib = handles[name]
                    row["ms"][name].append(bench.graph_ms(fns))
                bench.set_tf32(True)
                row["ms"]["cudnn_tf32"].append(bench.graph_ms(tf32))
                bench.set_tf32(False)
            row["median_ms"] = {k: statistics.median(v) for k, v in row["ms"].items()}
            med = row["median_ms"]
            print("%-18s b=%-2d " % (layer.name, batch) + " ".join(
                "%s %.4f" % (k, v) for k, v in med.items()) + " | %s/%s %.3f | tf32/%s %.2f | cfg %s" % (
                    names[0], names[-1], med[names[0]] / med[names[-1]], names[0],
                    med["cudnn_tf32"] / med[names[0]], row["config"][names[0]]), flush=True)
            results.append(row)
            with open(args.json, "w") as f:
                json.dump(dict(device=info, libs=libs, results=results), f, indent=1)
    for batch in sorted({r["batch"] for r in results}):
        rs = [r for r in results if r["batch"] == batch]
        for name in names:
            g = math.exp(sum(math.log(r["median_ms"]["cudnn_tf32"] / r["median_ms"][name])
                             for r in rs) / len(rs))
            print("geomean b%d %s vs cudnn_tf32: %.3f" % (batch, name, g))


if __name__ == "__main__":
    main()
