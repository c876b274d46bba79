"""Randomised correctness of the escort CUDA kernel against torch conv2d in float64.

Each case draws a fresh geometry, filter, density and input; the output is
poisoned with NaN before the run so that an unwritten element fails. Half the
cases run the launch heuristic's tile, the other half a random valid tile, so
every template instance and odd tile shape is exercised.

  python3 correctness.py --cases 320 --json out.json [--seed 1] [--small]
"""

import argparse
import json
import math
import random
import sys
import time

import torch

import escort_gpu as eg

CONFIG_SPACE = dict(pt=(2, 4, 8, 16), kw=(1, 2, 4), warps=(4, 8), nb=(1, 2, 4, 8, 16, 32),
                    cc=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))


FAST_INSTANCES = ((4, 2, 4), (4, 4, 4), (8, 2, 4), (8, 4, 4), (8, 2, 8), (8, 4, 8), (16, 1, 8),
                  (16, 2, 8), (16, 2, 4), (16, 1, 4))


def random_split(rng):
    """Cluster split over input channels: sm_90+ only; more than the layer's chunks
    is rejected like any invalid tile (the case then runs the heuristic)."""
    if torch.cuda.get_device_capability()[0] < 9 or rng.random() < 0.5:
        return 1
    return rng.choice((2, 3, 4, 8))


def random_parts(rng):
    """Warps per output channel (row parts); over 16 warps per block only the
    small instances run (others are rejected: the case runs the heuristic)."""
    return rng.choice((1, 1, 2, 4))


def random_config(rng, geo):
    if rng.random() < 0.5:  # row-slot fast path (stride_w 1 only; else rejected)
        pt, kw, pc = rng.choice(FAST_INSTANCES)
        nb = rng.choice(CONFIG_SPACE["nb"])
        warps = rng.choice(CONFIG_SPACE["warps"])
        return (pt, kw, warps, nb, pt // pc, (32 // nb) * pc, rng.choice(CONFIG_SPACE["cc"]), pc,
                rng.choice((0, 1)), random_split(rng), random_parts(rng))
    while True:
        pt, kw = rng.choice(CONFIG_SPACE["pt"]), rng.choice(CONFIG_SPACE["kw"])
        if pt in (2, 16) and kw == 4:
            continue
        warps, nb = rng.choice(CONFIG_SPACE["warps"]), rng.choice(CONFIG_SPACE["nb"])
        cc = rng.choice(CONFIG_SPACE["cc"])
        pix = 32 * pt // nb
        if pix < 1:
            continue
        tw = rng.randint(1, min(pix, 64))
        th = rng.randint(1, max(1, pix // tw))
        return (pt, kw, warps, nb, th, tw, cc, 1, rng.choice((0, 1)), random_split(rng),
                random_parts(rng))


def random_case(rng, small):
    """One geometry + filter description, biased toward edge cases."""
    kind = rng.random()
    R = rng.choice([1, 1, 2, 3, 3, 3, 4, 5, 7])
    S = R if rng.random() < 0.7 else rng.choice([1, 2, 3, 5, 7])
    stride = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2, 3]))
    dilation = (rng.choice([1, 1, 2]), rng.choice([1, 1, 2]))
    N = rng.choice([1, 1, 2, 3, 5, 8, 17, 32, 33, 64]) if not small else rng.choice([1, 2, 3])
    if small:
        H, W = rng.randint(1, 12), rng.randint(1, 12)
        C, K = rng.randint(1, 20), rng.randint(1, 20)
    elif kind < 0.15:  # large channels, small image
        H, W = rng.randint(3, 9), rng.randint(3, 9)
        C, K = rng.choice([256, 384, 512, 700]), rng.choice([64, 256, 300, 512])
        N = rng.choice([1, 4, 32])
    elif kind < 0.25:  # width or height 1, C = 1
        H, W = rng.choice([(1, rng.randint(1, 40)), (rng.randint(1, 40), 1), (1, 1)])
        C, K = rng.choice([1, 2, 3]), rng.randint(1, 40)
    else:
        H, W = rng.randint(1, 40), rng.randint(1, 40)
        C, K = rng.choice([1, 3, 7, 16, 31, 64, 96, 130]), rng.choice([1, 2, 5, 16, 33, 64, 100])
    # Keep the float64 reference and memory small.
    while N * H * W * C > 6_000_000 and N > 1:
        N //= 2
    pad_mode = rng.choice(["SAME", "VALID", "EXPLICIT"])
    explicit = ((rng.randint(0, 3), rng.randint(0, 3)), (rng.randint(0, 3), rng.randint(0, 3)))
    density = rng.choice([0.005, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 0.995, 1.0,
                          rng.uniform(0.005, 0.995)])
    if rng.random() < 0.04:
        density = 0.0  # fully-zero filter
    empty_rows = rng.choice([0.0, 0.0, 0.0, 0.3, 0.9])
    return dict(N=N, H=H, W=W, C=C, K=K, R=R, S=S, stride=stride, dilation=dilation,
                padding=pad_mode, explicit=explicit, density=density, empty_rows=empty_rows,
                nhwc=rng.random() < 0.6, bias=rng.random() < 0.6,
                activation=rng.choice(["none", "relu", "relu6"]))


def run_case(case, cfg_mode, rng, gen):
    geo = eg.Geometry(case["N"], case["H"], case["W"], case["C"], case["K"], case["R"], case["S"],
                      case["stride"], case["dilation"], case["padding"], case["explicit"],
                      case["nhwc"])
    if not geo.valid():
        return None
    w = eg.random_filter(case["K"], case["C"], case["R"], case["S"], case["density"], gen,
                         empty_rows=case["empty_rows"])
    csr = eg.CsrFilter(w)
    x = torch.randn(geo.input_shape(), generator=gen).cuda()
    bias = torch.randn(case["K"], generator=gen).cuda() if case["bias"] else None
    out = torch.full(geo.output_shape(), float("nan"), device="cuda")
    config = None if cfg_mode == "heuristic" else random_config(rng, geo)
    try:
        eg.conv(geo, x, csr, bias, case["activation"], out, config)
    except RuntimeError as e:
        if config is not None and "invalid argument" in str(e):
            # Random tile too large for shared memory: fall back to heuristic.
            config = None
            eg.conv(geo, x, csr, bias, case["activation"], out, None)
        else:
            raise
    torch.cuda.synchronize()
    ref = eg.torch_reference(geo, x, w, bias, case["activation"])
    unwritten = int(torch.isnan(out).sum().item())
    diff = (out.double() - ref)
    ref_norm = ref.norm().item()
    rel = diff.norm().item() / ref_norm if ref_norm > 0 else diff.norm().item()
    # Elementwise error against the magnitude sum |w||x| would bound; use max |ref|.
    scale = max(ref.abs().max().item(), 1e-30) if ref.numel() else 1.0
    max_elem = diff.abs().max().item() / scale if ref.numel() else 0.0
    return dict(case=case, geometry=dict(P=geo.P, Q=geo.Q, pad=(geo.pt, geo.pb, geo.pl, geo.pr)),
                config=config or eg.choose_config(geo, csr.nnz, torch.cuda.get_device_properties(0).multi_processor_count),
                config_mode="random" if config else "heuristic",
                nnz=csr.nnz, rel_error=rel, max_elem_error=max_elem, unwritten=unwritten,
                ok=bool(unwritten == 0 and math.isfinite(rel) and rel < 1e-5 and max_elem < 1e-4))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=320)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--small", action="store_true", help="tiny shapes (sanitizer runs)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    results, t0 = [], time.time()
    fixed = [  # named edge cases run first
        dict(N=1, H=1, W=1, C=1, K=1, R=1, S=1, stride=(1, 1), dilation=(1, 1), padding="VALID",
             explicit=((0, 0), (0, 0)), density=1.0, empty_rows=0.0, nhwc=True, bias=True,
             activation="none"),
        dict(N=0, H=5, W=5, C=3, K=4, R=3, S=3, stride=(1, 1), dilation=(1, 1), padding="SAME",
             explicit=((0, 0), (0, 0)), density=0.5, empty_rows=0.0, nhwc=True, bias=True,
             activation="relu"),
        dict(N=2, H=9, W=9, C=16, K=8, R=3, S=3, stride=(1, 1), dilation=(1, 1), padding="SAME",
             explicit=((0, 0), (0, 0)), density=0.0, empty_rows=0.0, nhwc=False, bias=True,
             activation="relu6"),
        dict(N=32, H=13, W=13, C=384, K=256, R=3, S=3, stride=(1, 1), dilation=(1, 1),
             padding="SAME", explicit=((0, 0), (0, 0)), density=0.115, empty_rows=0.1, nhwc=True,
             bias=True, activation="relu"),
        dict(N=3, H=27, W=27, C=96, K=256, R=5, S=5, stride=(2, 2), dilation=(1, 1),
             padding="SAME", explicit=((0, 0), (0, 0)), density=0.144, empty_rows=0.0, nhwc=False,
             bias=False, activation="none"),
        # Batch 1 with C not a power of two and above 128: one chunk of 512 channels.
        dict(N=1, H=13, W=13, C=384, K=384, R=3, S=3, stride=(1, 1), dilation=(1, 1),
             padding="SAME", explicit=((0, 0), (0, 0)), density=0.082, empty_rows=0.0, nhwc=True,
             bias=True, activation="relu"),
        dict(N=1, H=7, W=7, C=512, K=64, R=3, S=3, stride=(1, 1), dilation=(1, 1),
             padding="SAME", explicit=((0, 0), (0, 0)), density=0.02, empty_rows=0.0, nhwc=False,
             bias=True, activation="relu6"),
    ]
    cases = fixed + [random_case(rng, args.small) for _ in range(args.cases)]
    failures = 0
    for i, case in enumerate(cases):
        mode = "heuristic" if (i % 2 == 0 or args.small) else "random"
        if args.small and i % 3 == 1:
            mode = "random"
        if case["N"] == 0:
            geo = eg.Geometry(0, case["H"], case["W"], case["C"], case["K"], case["R"], case["S"])
            w = eg.random_filter(case["K"], case["C"], case["R"], case["S"], 0.5, gen)
            eg.conv(geo, torch.empty(0, device="cuda"), eg.CsrFilter(w), None, "none",
                    torch.empty(0, device="cuda"))
            results.append(dict(case=case, ok=True, rel_error=0.0, max_elem_error=0.0,
                                unwritten=0, note="zero batch: no launch"))
            continue
        r = run_case(case, mode, rng, gen)
        if r is None:
            continue
        results.append(r)
        if not r["ok"]:
            failures += 1
            print("FAIL", json.dumps(r), flush=True)
    summary = dict(cases=len(results), failures=failures,
                   max_rel_error=max(r["rel_error"] for r in results),
                   max_elem_error=max(r["max_elem_error"] for r in results),
                   seconds=time.time() - t0, device=torch.cuda.get_device_name(0),
                   seed=args.seed, small=args.small)
    print("correctness:", json.dumps(summary), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(summary=summary, results=results), f, indent=1, default=str)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
