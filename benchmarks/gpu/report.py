"""Markdown table of a bench.json: per-layer times, ratios, roofline floors.

  python3 report.py bench.json > gpu_layers_h200.md

Floors per layer (METHOD.md's two numbers, from the ceilings measured in the
same run): bytes = input + output + CSR filter read/written once over the
measured copy bandwidth; flops = useful sparse FMAs x 2 over the fp32 FFMA
peak (132 SMs x 128 lanes x 2 x 1.98 GHz = 66.9 TFLOP/s); and the kernel's
own structural ceiling, one 32-lane shared-memory load per FMA at one load
per cycle per SM (132 x 32 x 1.98 GHz = 8.4 T FMA/s = 16.7 TFLOP/s).
"""

import json
import math
import sys

FP32_PEAK = 132 * 128 * 2 * 1.98e9
LDS_CEIL = 132 * 32 * 2 * 1.98e9
METHODS = ["cudnn_fp32", "cudnn_tf32", "cudnn_bf16_cl", "im2col_cublas", "im2col_cusparse"]


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def floors(r, bw):
    from layers import LAYERS
    layer = next(l for l in LAYERS if l.name == r["layer"])
    n = r["batch"]
    bytes_ = 4 * (n * layer.height * layer.width * layer.in_channels
                  + n * r["P"] * r["Q"] * layer.out_channels) + 8 * r["nnz"] + 4 * (layer.out_channels + 1)
    return bytes_ / bw * 1e3, r["sparse_flops"] / FP32_PEAK * 1e3, r["sparse_flops"] / LDS_CEIL * 1e3


def main(path):
    sys.path.insert(0, __file__.rsplit("/", 2)[0])
    d = json.load(open(path))
    dev, ceil = d["device"], d["ceilings"]
    bw = ceil["copy_GBps"] * 1e9
    print("# Escort CSR direct convolution on the GPU: measured results\n")
    print("%s, driver %s, CUDA %s (torch %s), cuDNN %s; fp32; all methods in one process, "
          "rotated inputs. Times are device time per call: the median over CUDA-graph replays "
          "of 16+ back-to-back calls (host launch cost excluded, as in a framework that "
          "enqueues ahead). The `_events` rows time each call alone between two CUDA events, "
          "which also counts the host's launch path (Python, ctypes or torch dispatch): "
          "the previous method, kept for comparison. Measured ceilings: copy %.0f GB/s, SGEMM %.1f TFLOP/s, "
          "TF32 GEMM %.0f TFLOP/s, bf16 GEMM %.0f TFLOP/s.\n" % (
              dev["gpu"], dev.get("driver"), dev["cuda"], dev["torch"], dev["cudnn"],
              ceil["copy_GBps"], ceil["sgemm_fp32_TFLOPS"], ceil["gemm_tf32_TFLOPS"],
              ceil["gemm_bf16_TFLOPS"]))
    print("`escort` = our kernel, NHWC, tile picked by the launch heuristic (one launch). Ratios are "
          "baseline time / escort time (>1: escort faster). Floors: `mem` = bytes once over copy "
          "bandwidth, `fp32` = useful FMAs over the FFMA peak, `lds` = useful FMAs at one shared "
          "load each (the kernel's structural ceiling, 16.7 TFLOP/s). `TF/s` = useful sparse "
          "TFLOP/s achieved.\n")
    print("## Geomeans (escort NHWC vs each baseline)\n")
    print("| case | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for key, g in d["summary"].items():
        print("| %s | %s |" % (key, " | ".join("%.2fx" % g[m] for m in METHODS)))
    uncaptured = sorted({m for r in d["results"] for m in r.get("not_captured", [])})
    if uncaptured:
        print("\nNot capturable in a CUDA graph, timed with events instead: %s."
              % ", ".join(uncaptured))
    for batch in sorted({r["batch"] for r in d["results"]}):
        for label in ("skimcaffe", 0.30, 0.10):
            rs = [r for r in d["results"] if r["batch"] == batch and (
                r["density_label"] == "skimcaffe" if label == "skimcaffe" else
                (r["density_label"] == "uniform" and abs(r["density"] - label) < 1e-9))]
            if not rs:
                continue
            print("\n## batch %d, %s\n" % (batch, "SkimCaffe densities" if label == "skimcaffe"
                                             else "density %.2f" % label))
            print("| layer | density | escort ms | nchw ms | TF/s | floors mem/fp32/lds ms | "
                  + " | ".join(METHODS) + " | tile (pt,kw,warps,nb,th,tw,cc,pc,pre,split,parts) |")
            print("|---|---|---|---|---|---|" + "---|" * len(METHODS) + "---|")
            for r in rs:
                t = r["ms"]["escort_nhwc"]
                fm, ff, fl = floors(r, bw)
                print("| %s | %.3f | %.4f | %.4f | %.1f | %.4f / %.4f / %.4f | %s | %s |" % (
                    r["layer"], r["density"], t, r["ms"]["escort_nchw"],
                    r["sparse_flops"] / t / 1e9, fm, ff, fl,
                    " | ".join("%.2fx (%.4f)" % (r["speedup_nhwc"][m], r["ms"][m]) for m in METHODS),
                    ",".join(map(str, r["config"]))))


if __name__ == "__main__":
    main(sys.argv[1])
