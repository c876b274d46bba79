"""PNG plots of the in-TensorFlow GPU results (bench_models.py, bench_layers.py output).

  python benchmarks/gpu_tf/plot.py --models M.json --layers L.json --out-models M.png \
      --out-layers L.png
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")  # no display on CI / servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

VARIANTS = ["dense_fp32", "dense_folded", "converted", "converted_folded", "autotuned"]


def _speedup_axis(ax, names, ylabel):
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)


def plot_models(report, path):
    models = list(report["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        rows = report["models"][name]["calls"]
        width = 0.8 / len(rows)
        for i, row in enumerate(rows):
            values = [row[f"{v}_speedup"] for v in VARIANTS]
            ax.bar(np.arange(len(VARIANTS)) + (i - (len(rows) - 1) / 2) * width, values, width,
                   label=f"batch {row['batch']} (dense {row['dense_ms']:.2f} ms)")
        _speedup_axis(ax, VARIANTS, "speedup over dense (TF32)")
        ax.set_title(f"{name}: model call in TensorFlow")
        ax.legend(fontsize=8)
    fig.suptitle(report["machine"]["gpu"] + ", TF " + report["machine"]["tensorflow"],
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layers(report, path):
    batches = sorted({row["batch"] for row in report["layers"]})
    fig, axes = plt.subplots(len(batches), 1, figsize=(12, 3.6 * len(batches)), squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        rows = [row for row in report["layers"] if row["batch"] == batch]
        names = [row["layer"] for row in rows]
        series = {"vs cuDNN TF32": [row["speedup_vs_cudnn_tf32"] for row in rows],
                  "vs cuDNN fp32": [row["speedup_vs_cudnn_fp32"] for row in rows],
                  "standalone kernel / in TF": [1 / row["tf_over_standalone"]
                                                if "tf_over_standalone" in row else np.nan
                                                for row in rows]}
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series.items()):
            ax.bar(np.arange(len(names)) + (i - (len(series) - 1) / 2) * width, values, width,
                   label=label)
        _speedup_axis(ax, names, "ratio")
        ax.set_title(f"escort op in TensorFlow, batch {batch}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models")
    parser.add_argument("--layers")
    parser.add_argument("--out-models")
    parser.add_argument("--out-layers")
    args = parser.parse_args()
    if args.models:
        with open(args.models) as f:
            plot_models(json.load(f), args.out_models)
    if args.layers:
        with open(args.layers) as f:
            plot_layers(json.load(f), args.out_layers)


if __name__ == "__main__":
    main()
