"""Per-layer ceilings of the CPU results: how fast could this kernel design be?

  python3 benchmarks/cpu/roofline.py [benchmarks/results/cpu_layers.json] [GFLOPS_PER_CORE]

The broadcast-FMA kernel moves, per nonzero and register block, 8 vectors of
band data from L2 into L1; `load_ceiling.cc` times exactly that loop on the
machine (on the AVX-512 EPYC host,
`benchmarks/results/history/cpu_load_ceiling_avx512-epyc.txt`: 34-48 useful
GFLOPS per core from a 160 KB buffer, 32-36 from 800 KB; the ~320 KB band
buffer lies between, hence the default of 43; the table in
benchmarks/cpu/NOTES.md is this script on that host's
`history/cpu_layers_avx512-epyc_2026-11-25_pool-wake_run2.json`; time
`load_ceiling.cc` on another host before using its rate). A layer's floor is its useful (nonzero-weight) flops at
that rate on every core; dense time over the floor is the largest speedup
the design can show there. Prints a markdown table for the SkimCaffe
densities.
"""

import json
import math
import sys


def main(path="benchmarks/results/cpu_layers.json", gflops_per_core=43.0):
    report = json.load(open(path))
    cores = report["machine"]["usable_cores"]
    rate = float(gflops_per_core) * 1e9 * cores
    print(f"| layer | batch | useful GFLOP | floor ms | sparse ms | dense ms | "
          f"measured | ceiling | % of ceiling |")
    print("|---|---|---|---|---|---|---|---|---|")
    measured, ceilings = {}, {}
    for row in report["results"]:
        if row.get("density_label", "skimcaffe") != "skimcaffe":
            continue
        useful = row["dense_gflop"] * 1e9 * (row["nnz"] / math.prod(row["filter_shape"]))
        floor_ms = useful / rate * 1e3
        ceiling = row["dense_ms"] / floor_ms
        measured.setdefault(row["batch"], []).append(row["speedup"])
        ceilings.setdefault(row["batch"], []).append(ceiling)
        print(f"| {row['layer']} | {row['batch']} | {useful / 1e9:.3f} | {floor_ms:.3f} | "
              f"{row['sparse_ms']:.3f} | {row['dense_ms']:.3f} | {row['speedup']:.2f}x | "
              f"{ceiling:.2f}x | {100 * floor_ms / row['sparse_ms']:.0f}% |")
    for batch in sorted(measured):
        geo = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
        print(f"\nbatch {batch}: geomean measured {geo(measured[batch]):.2f}x, "
              f"ceiling {geo(ceilings[batch]):.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:])
