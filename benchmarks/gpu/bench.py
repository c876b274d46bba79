"""Side-by-side timing of the escort CUDA kernel and the dense/lowered baselines.

One process, CUDA-event medians over rotated input sets, on every layer of
benchmarks/layers.py at batch 1 and 32 and at each layer's SkimCaffe density
plus the uniform densities. Methods:
  escort_nhwc / escort_nchw  our kernel (fp32, no bias: same work as the baselines)
  cudnn_fp32                 F.conv2d, TF32 off
  cudnn_tf32                 F.conv2d, TF32 on (TensorFlow's default on Ampere+)
  cudnn_bf16_cl              F.conv2d in bf16, channels-last
  im2col_cublas              F.unfold + SGEMM (TF32 off)
  im2col_cusparse            F.unfold + CSR SpMM (cuSPARSE through torch.sparse)

  python3 bench.py --json bench.json [--sweep sweep.json] [--quick]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

import escort_gpu as eg
from layers import LAYERS, UNIFORM_DENSITIES

torch.backends.cudnn.benchmark = True


def median_ms(fns, iters, warmup=3):
    """Median of per-call CUDA-event times, cycling through `fns` (one per input set)."""
    for i in range(warmup):
        fns[i % len(fns)]()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fns[i % len(fns)]()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def graph_ms(fns, replays=15, min_calls=16):
    """Median device time per call from CUDA-graph replays of back-to-back calls.

    A single call timed with events also counts the host time between
    recording the start event and the launch (Python, ctypes, torch dispatch):
    at batch 1 that is most of the 30-50 us measured that way, for every
    method alike. A graph replay launches all its calls without the host in
    between, as a framework that enqueues ahead does (METHOD.md: "for many small
    launches, capture a graph and time its replays"). Returns None when a
    method cannot be captured.
    """
    calls = len(fns) * math.ceil(min_calls / len(fns))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # torch's recipe: warm up on a side stream
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for i in range(calls):
                fns[i % len(fns)]()
    except RuntimeError:
        torch.cuda.synchronize()
        return None
    graph.replay()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for start, end in zip(starts, ends):
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    del graph
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / calls


def adaptive_iters(fn, budget_ms=150.0, lo=10, hi=200):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = (time.perf_counter() - t0) * 1e3
    return int(max(lo, min(hi, budget_ms / max(est, 1e-3))))


def set_tf32(on):
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def device_info():
    p = torch.cuda.get_device_properties(0)
    info = dict(gpu=p.name, sms=p.multi_processor_count, torch=torch.__version__,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.sm,"
                            "power.limit,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30).stdout.strip()
        d, maxclk, clk, pl, mem = [s.strip() for s in q.split(",")]
        info.update(driver=d, sm_clock_max=maxclk, sm_clock_now=clk, power_limit=pl, memory=mem)
    except Exception as e:  # noqa: BLE001 - informational only
        info["nvidia_smi_error"] = str(e)
    return info


def ceilings():
    """Measured copy bandwidth and matrix rates (the METHOD.md 'two numbers')."""
    out = {}
    a = torch.empty(256 * 1024 * 1024, device="cuda")  # 1 GiB
    b = torch.empty_like(a)
    ms = median_ms([lambda: b.copy_(a)], 20)
    out["copy_GBps"] = 2 * a.numel() * 4 / ms / 1e6
    del a, b
    n = 8192
    x = torch.randn(n, n, device="cuda")
    y = torch.randn(n, n, device="cuda")
    for name, tf32, dt in (("sgemm_fp32_TFLOPS", False, torch.float32),
                           ("gemm_tf32_TFLOPS", True, torch.float32),
                           ("gemm_bf16_TFLOPS", False, torch.bfloat16)):
        set_tf32(tf32)
        xa, ya = x.to(dt), y.to(dt)
        ms = median_ms([lambda: torch.mm(xa, ya)], 10)
        out[name] = 2 * n ** 3 / ms / 1e9
    set_tf32(False)
    return out


def layer_inputs(layer, batch, n_sets, gen):
    shape = (batch, layer.in_channels, layer.height, layer.width)
    return [torch.randn(shape, generator=gen).cuda() for _ in range(n_sets)]


def run_case(layer, batch, density, gen, info, sweep_configs=None, quick=False,
             escort_only=False, split_sweep=False):
    K, C, R = layer.out_channels, layer.in_channels, layer.kernel
    w = eg.random_filter(K, C, R, R, density, gen)
    csr = eg.CsrFilter(w)
    in_bytes = batch * C * layer.height * layer.width * 4
    n_sets = max(2, min(8, math.ceil(120e6 / in_bytes)))
    xs = layer_inputs(layer, batch, n_sets, gen)
    xs_nhwc = [x.permute(0, 2, 3, 1).contiguous() for x in xs]
    pad = layer.padding
    expl = ((pad, pad), (pad, pad))
    geo_nhwc = eg.Geometry(batch, layer.height, layer.width, C, K, R, R, (layer.stride,) * 2,
                           (1, 1), "EXPLICIT", expl, True)
    geo_nchw = eg.Geometry(batch, layer.height, layer.width, C, K, R, R, (layer.stride,) * 2,
                           (1, 1), "EXPLICIT", expl, False)
    P, Q = geo_nhwc.P, geo_nhwc.Q
    out_nhwc = torch.empty(geo_nhwc.output_shape(), device="cuda")
    out_nchw = torch.empty(geo_nchw.output_shape(), device="cuda")
    res = dict(layer=layer.name, batch=batch, density=density, nnz=csr.nnz, P=P, Q=Q,
               dense_flops=layer.dense_flops(batch), sparse_flops=2 * csr.nnz * batch * P * Q,
               config=eg.choose_config(geo_nhwc, csr.nnz, info["sms"]),
               config_nchw=eg.choose_config(geo_nchw, csr.nnz, info["sms"]))
    times = {}

    events = {}  # per-call event times, host launch cost included (see graph_ms)

    def timed(name, fns):
        it = adaptive_iters(fns[0])
        if quick:
            it = min(it, 20)
        events[name] = median_ms(fns, it)
        graph = graph_ms(fns)
        times[name] = graph if graph is not None else events[name]
        if graph is None:
            res.setdefault("not_captured", []).append(name)

    timed("escort_nhwc", [lambda x=x: eg.conv(geo_nhwc, x, csr, None, "none", out_nhwc)
                          for x in xs_nhwc])
    timed("escort_nchw", [lambda x=x: eg.conv(geo_nchw, x, csr, None, "none", out_nchw)
                          for x in xs])
    # Correctness spot check of the timed configuration (fp64 reference).
    ref = eg.torch_reference(geo_nhwc, xs_nhwc[0], w, None, "none")
    eg.conv(geo_nhwc, xs_nhwc[0], csr, None, "none", out_nhwc)
    torch.cuda.synchronize()
    res["spot_rel_error"] = ((out_nhwc.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    del ref
    if sweep_configs is not None:
        sweep(res, times, geo_nhwc, batch, csr, xs_nhwc, out_nhwc, sweep_configs)
    if split_sweep:
        # The tile the heuristic picks without clusters, at each split.
        res["config_unsplit"] = eg.choose_config(geo_nhwc, csr.nnz, info["sms"], clusters=False)
        res["split_sweep"] = {}
        for split in (1, 2, 4, 8):
            cfg = tuple(res["config_unsplit"][:9]) + (split,) + tuple(res["config_unsplit"][10:])
            fns = [lambda x=x: eg.conv(geo_nhwc, x, csr, None, "none", out_nhwc, cfg)
                   for x in xs_nhwc]
            try:
                fns[0]()
            except RuntimeError:  # more ranks than chunks
                continue
            res["split_sweep"][split] = graph_ms(fns)
    if escort_only:
        res["ms"] = times
        res["ms_events"] = events
        res["escort_ms"] = times["escort_nhwc"]
        return res

    set_tf32(False)
    timed("cudnn_fp32", [lambda x=x: F.conv2d(x, w, None, layer.stride, pad) for x in xs])
    set_tf32(True)
    timed("cudnn_tf32", [lambda x=x: F.conv2d(x, w, None, layer.stride, pad) for x in xs])
    set_tf32(False)
    xb = [x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last) for x in xs]
    wb = w.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    timed("cudnn_bf16_cl", [lambda x=x: F.conv2d(x, wb, None, layer.stride, pad) for x in xb])
    del xb
    w2d = w.reshape(K, -1)  # unfold's column order is (c, r, s)

    def lowered_gemm(x):
        cols = F.unfold(x, R, padding=pad, stride=layer.stride)
        return torch.matmul(w2d, cols)

    timed("im2col_cublas", [lambda x=x: lowered_gemm(x) for x in xs])
    w_csr = w2d.to_sparse_csr()

    def lowered_spmm(x):
        cols = F.unfold(x, R, padding=pad, stride=layer.stride)  # N, CRS, L
        b = cols.transpose(0, 1).reshape(cols.shape[1], -1)      # CRS, N*L
        return torch.sparse.mm(w_csr, b)

    timed("im2col_cusparse", [lambda x=x: lowered_spmm(x) for x in xs])
    res["ms"] = times
    res["ms_events"] = events
    res["escort_ms"] = min(times["escort_nhwc"], times["escort_nchw"])
    res["speedup_nhwc"] = {k: v / times["escort_nhwc"] for k, v in times.items()
                           if not k.startswith("escort")}
    res["speedup_nhwc_events"] = {k: v / events["escort_nhwc"] for k, v in events.items()
                                  if not k.startswith("escort")}

    return res


def sweep(res, times, geo_nhwc, batch, csr, xs_nhwc, out_nhwc, sweep_configs):
    """Times alternative tiles next to the heuristic's (tuning aid), in device time
    (graph replays, as `times`: per-call events would time the host at batch 1)."""
    best = (times["escort_nhwc"], tuple(res["config"]))
    tried = []
    for cfg in sweep_configs(geo_nhwc, batch):
        try:
            fns = [lambda x=x: eg.conv(geo_nhwc, x, csr, None, "none", out_nhwc, cfg)
                   for x in xs_nhwc]
            fns[0]()
            torch.cuda.synchronize()
            ms = graph_ms(fns, replays=7)
        except RuntimeError:
            continue
        if ms is None:
            continue
        tried.append((cfg, ms))
        if ms < best[0]:
            best = (ms, tuple(cfg))
    res["sweep_best"] = dict(ms=best[0], config=best[1])
    res["sweep_top"] = sorted(tried, key=lambda t: t[1])[:5]
    res["sweep_all"] = tried


def sweep_candidates_b1(geo):
    """Batch-1 grid: one image per tile, 4-32 warps (row parts), preload on (and
    off for a subset)."""
    cands = []
    ccs = sorted({min(cc, max(8, 1 << (geo.C - 1).bit_length())) for cc in (32, 128)})
    for pt, kw in ((2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2), (8, 4)):
        pix = 32 * pt
        widths = {geo.Q, -(-geo.Q // 2), -(-geo.Q // 3), -(-geo.Q // 4), 32, 8, 4, 2}
        shapes = {(min(geo.P, pix // tw), min(tw, geo.Q)) for tw in widths if tw <= pix}
        # At least a quarter of the slots useful (or the whole image).
        shapes = sorted((s for s in shapes if s[0] >= 1 and
                         4 * s[0] * s[1] >= min(pix, geo.P * geo.Q)),
                        key=lambda s: -s[0] * s[1])[:5]
        for warps, parts in ((4, 2), (4, 4), (8, 1), (8, 2), (8, 4)):
            if 32 * warps * parts > (1024 if pt * kw <= 8 else 512):
                continue
            for th, tw in shapes:
                for cc in ccs:
                    cands.append((pt, kw, warps, 1, th, tw, cc, 1, 1, 1, parts))
                    if warps == 8 and parts <= 2 and cc == ccs[0]:
                        cands.append((pt, kw, warps, 1, th, tw, cc, 1, 0, 1, parts))
    return cands


def sweep_candidates(geo, batch):
    """A generic grid of tiles (general and row-slot paths), about 60 per case."""
    if batch == 1:
        return sweep_candidates_b1(geo)
    cands = []
    for nb in (1, 2, 4, 8, 16, 32):
        if nb > max(1, batch):
            continue
        for pt, kw in ((4, 4), (8, 2), (8, 4), (16, 2)):
            pix = 32 * pt // nb
            shapes = {(min(geo.P, max(1, pix // geo.Q)), min(geo.Q, pix))}
            for th, tw in ((4, 4), (8, 4), (4, 8), (8, 8), (2, 16)):
                if th * tw <= pix:
                    shapes.add((min(th, geo.P), min(tw, geo.Q)))
            for th, tw in sorted(shapes):
                for cc in (16, 32):
                    for pre in (0, 1):
                        cands.append((pt, kw, 8, nb, th, tw, cc, 1, pre, 1, 1))
        for pt, kw, pc in ((8, 2, 4), (8, 4, 4), (16, 2, 4), (4, 4, 4)):
            if (32 // nb) * pc <= 2 * geo.Q + 32:
                for pre in (0, 1):
                    cands.append((pt, kw, 8, nb, pt // pc, (32 // nb) * pc, 16, pc, pre, 1, 1))
    # Row parts: each tile also with two warps per channel (16 warps).
    cands += [c[:10] + (2,) for c in cands]
    step = max(1, len(cands) // 80)  # bound the sweep's time
    return cands[::step]


def geomean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--sweep", action="store_true", help="also time alternative tiles")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--layers", default="")
    ap.add_argument("--escort-only", action="store_true", help="time only our kernel")
    ap.add_argument("--split-sweep", action="store_true",
                    help="also time the heuristic's tile at cluster splits 1, 2, 4, 8")
    ap.add_argument("--skim-only", action="store_true", help="only SkimCaffe densities")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(7)
    info = device_info()
    ceil = {} if args.escort_only else ceilings()
    print("device:", json.dumps(info), "\nceilings:", json.dumps(ceil), flush=True)
    results = []
    layers = [l for l in LAYERS if not args.layers or l.name in args.layers.split(",")]
    for batch in [int(b) for b in args.batches.split(",")]:
        for layer in layers:
            for label, density in [("skimcaffe", layer.skimcaffe_density)] + [
                    ("uniform", d) for d in (() if args.skim_only else UNIFORM_DENSITIES)]:
                r = run_case(layer, batch, density, gen, info,
                             sweep_candidates if (args.sweep and label == "skimcaffe") else None,
                             args.quick, args.escort_only, args.split_sweep)
                r["density_label"] = label
                results.append(r)
                with open(args.json, "w") as f:  # partial results survive a timeout
                    json.dump(dict(device=info, ceilings=ceil, results=results), f)
                if args.escort_only:
                    print("%-20s b=%-2d d=%.3f escort %.4f ms nchw %.4f cfg %s err %.1e%s%s" % (
                        layer.name, batch, density, r["ms"]["escort_nhwc"],
                        r["ms"]["escort_nchw"], r["config"], r["spot_rel_error"],
                        " | sweep top %s" % r["sweep_top"][:3] if "sweep_top" in r else "",
                        " | split %s" % {k: round(v, 4) for k, v in r["split_sweep"].items()}
                        if "split_sweep" in r else ""), flush=True)
                    continue
                s = r["speedup_nhwc"]
                print("%-20s b=%-2d d=%.3f escort %.4f ms | x fp32 %.2f tf32 %.2f bf16 %.2f "
                      "cublas %.2f cusparse %.2f | nchw %.4f | cfg %s%s" % (
                          layer.name, batch, density, r["ms"]["escort_nhwc"], s["cudnn_fp32"],
                          s["cudnn_tf32"], s["cudnn_bf16_cl"], s["im2col_cublas"],
                          s["im2col_cusparse"], r["ms"]["escort_nchw"], r["config"],
                          (" sweep best %.4f %s" % (r["sweep_best"]["ms"], r["sweep_best"]["config"])
                           if "sweep_best" in r else "")), flush=True)
    summary = {}
    if args.escort_only:
        return
    for batch in sorted({r["batch"] for r in results}):
        for label in ("skimcaffe", 0.30, 0.10):
            rs = [r for r in results if r["batch"] == batch and (
                r["density_label"] == label if label == "skimcaffe"
                else (r["density_label"] == "uniform" and abs(r["density"] - label) < 1e-9))]
            if not rs:
                continue
            key = "b%d_%s" % (batch, label if label == "skimcaffe" else "d%.2f" % label)
            for suffix in ("", "_events"):
                summary[key + suffix] = {
                    m: geomean([r["speedup_nhwc" + suffix][m] for r in rs])
                    for m in rs[0]["speedup_nhwc" + suffix]}
                print("geomean", key + suffix,
                      json.dumps({k: round(v, 3) for k, v in summary[key + suffix].items()}))
    with open(args.json, "w") as f:
        json.dump(dict(device=info, ceilings=ceil, summary=summary, results=results), f, indent=1)


if __name__ == "__main__":
    main()
