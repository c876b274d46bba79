"""Times the launch heuristic's tile next to its neighbours on one build.

A tuning aid for the heuristic: per layer (SkimCaffe densities), the chosen
tile and the same tile with other chunk sizes (including one chunk for the
whole input), row parts and preload, in device time (graph replays, as
bench.py). The build is ESCORT_GPU_LIB or build/libescort_gpu.so.

  python3 local_sweep.py --json out.json [--batch 1] [--layers a,b] [--tiles t.json]

--tiles: {layer: [config, ...]}, more tiles to take as centres besides the
heuristic's.
"""

import argparse
import json
import math

import torch

import bench
import escort_gpu as eg
from layers import LAYERS


def neighbours(cfg, C, ccs):
    one_chunk = min(512, 1 << (C - 1).bit_length())
    out = []
    for cc in sorted({cfg[6], one_chunk} | set(ccs)):
        for parts in (1, 2, 4):
            for pre in (0, 1):
                c = list(cfg)
                c[6], c[8], c[10] = cc, pre, parts
                out.append(tuple(c))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", default="")
    ap.add_argument("--tiles", default="")
    ap.add_argument("--ccs", default="64,128", help="chunk sizes tried besides the centre's")
    args = ap.parse_args()
    extra = json.load(open(args.tiles)) if args.tiles else {}
    ccs = [int(v) for v in args.ccs.split(",") if v]
    info = bench.device_info()
    gen = torch.Generator().manual_seed(7)
    rows = []
    for layer in LAYERS:
        if args.layers and layer.name not in args.layers.split(","):
            continue
        K, C, R = layer.out_channels, layer.in_channels, layer.kernel
        w = eg.random_filter(K, C, R, R, layer.skimcaffe_density, gen)
        csr = eg.CsrFilter(w)
        n_sets = max(2, min(8, math.ceil(120e6 / (args.batch * C * layer.height * layer.width * 4))))
        xs = [x.permute(0, 2, 3, 1).contiguous()
              for x in bench.layer_inputs(layer, args.batch, n_sets, gen)]
        pad = layer.padding
        geo = eg.Geometry(args.batch, layer.height, layer.width, C, K, R, R, (layer.stride,) * 2,
                          (1, 1), "EXPLICIT", ((pad, pad), (pad, pad)), True)
        out = torch.empty(geo.output_shape(), device="cuda")
        chosen = eg.choose_config(geo, csr.nnz, info["sms"])
        tried = []
        cands = [chosen]
        for centre in [chosen] + [tuple(c) for c in extra.get(layer.name, [])]:
            cands += [c for c in neighbours(centre, C, ccs) if c not in cands]
        for cfg in cands:
            try:
                eg.conv(geo, xs[0], csr, None, "none", out, cfg)
                torch.cuda.synchronize()
            except RuntimeError:
                continue
            fns = [lambda x=x, cfg=cfg: eg.conv(geo, x, csr, None, "none", out, cfg) for x in xs]
            tried.append((cfg, bench.graph_ms(fns)))
        base = tried[0][1]
        top = sorted(tried, key=lambda t: t[1])[:4]
        rows.append(dict(layer=layer.name, batch=args.batch, chosen=chosen, chosen_ms=base,
                         tried=tried))
        print("%-18s chosen %.4f %s | best %s" % (
            layer.name, base, chosen,
            " ".join("%.4f %s" % (ms, cfg) for cfg, ms in top)), flush=True)
        with open(args.json, "w") as f:
            json.dump(dict(device=info, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
