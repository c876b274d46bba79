"""Markdown table and plot of a bench_sparse24.py result (the 2:4 kernel alone vs cuDNN).

Needs only matplotlib, so results measured on the GPU machine render anywhere:

  python3 report_sparse24.py sparse24.json --md sparse24.md --png sparse24.png [--commit C]
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (ours, cuDNN peer) pairs: the target is the same precision.
PAIRS = (("escort_24_f16", "cudnn_f16"), ("escort_24_bf16", "cudnn_bf16"),
         ("escort_24_f16", "cudnn_tf32"))


def markdown(data, commit=None):
    """The result as a markdown table per batch, speedups as peer time / our time."""
    dev = data["device"]
    lines = [f"# 2:4 tensor-core kernel alone vs cuDNN, {dev.get('gpu')}",
             "",
             f"torch {dev.get('torch')}, CUDA {dev.get('cuda')}, cuDNN {dev.get('cudnn')}, "
             f"driver {dev.get('driver')}. Our kernel: CUDA events around back-to-back "
             "launches (cc/kernels/sparse24_conv_gpu_bench.cu), 2:4 filter; cuDNN: dense "
             "F.conv2d, channels-last, CUDA-graph replays. Times in microseconds; "
             "speedup = cuDNN time / ours (>1: ours faster)."
             + (f" Kernel at commit {commit}." if commit else ""),
             ""]
    # Results from before split-K have no unsplit column.
    columns = [("escort_24_f16", "ours f16"), ("escort_24_f16_whole", "ours f16 unsplit"),
               ("escort_24_bf16", "ours bf16"), ("cudnn_f16", "cuDNN f16"),
               ("cudnn_bf16", "cuDNN bf16"), ("cudnn_tf32", "cuDNN TF32")]
    columns = [(key, name) for key, name in columns if key in data["rows"][0]["ms"]]
    for batch in sorted({r["batch"] for r in data["rows"]}):
        lines += [f"## batch {batch}", "",
                  "| layer | " + " | ".join(name for _, name in columns)
                  + " | f16 vs f16 | bf16 vs bf16 | f16 vs TF32 |",
                  "|---|" + "---:|" * (len(columns) + len(PAIRS))]
        for row in (r for r in data["rows"] if r["batch"] == batch):
            ms = row["ms"]
            times = " | ".join(f"{ms[key] * 1e3:.1f}" for key, _ in columns)
            ratios = " | ".join(f"{ms[peer] / ms[ours]:.2f}x" for ours, peer in PAIRS)
            lines.append(f"| {row['layer']} | {times} | {ratios} |")
        summary = data["geomean_speedup"][f"batch{batch}"]
        lines += ["", "geomean: " + ", ".join(f"{k} **{v:.2f}x**" for k, v in summary.items()),
                  ""]
    return "\n".join(lines)


def plot(data, path):
    """Bar chart of the three speedups per layer, one panel per batch."""
    batches = sorted({r["batch"] for r in data["rows"]})
    fig, axes = plt.subplots(len(batches), 1, figsize=(12, 3.6 * len(batches)), squeeze=False)
    width = 0.8 / len(PAIRS)
    for ax, batch in zip(axes[:, 0], batches):
        rows = [r for r in data["rows"] if r["batch"] == batch]
        for i, (ours, peer) in enumerate(PAIRS):
            xs = [j + (i - len(PAIRS) / 2 + 0.5) * width for j in range(len(rows))]
            ax.bar(xs, [r["ms"][peer] / r["ms"][ours] for r in rows], width,
                   label=f"{ours} vs {peer}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["layer"].replace("_", "\n", 1) for r in rows], fontsize=7)
        ax.set_ylabel("speedup over cuDNN")
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.legend(fontsize=7, ncol=3)
    fig.suptitle(f"2:4 sparse tensor-core conv (kernel alone) on {data['device'].get('gpu')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--md")
    parser.add_argument("--png")
    parser.add_argument("--commit", help="the commit whose kernel was measured, for the table")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    if args.md:
        with open(args.md, "w") as f:
            f.write(markdown(data, args.commit))
    if args.png:
        plot(data, args.png)


if __name__ == "__main__":
    main()
