"""PNG plots of the in-TensorFlow GPU results (bench_models.py, bench_layers.py and
bench_sparse24.py output).

  python benchmarks/gpu_tf/plot.py --models M.json --layers L.json --sparse24 S.json \
      --out-models M.png --out-layers L.png --out-sparse24 S.png
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


def _grouped_bars(ax, names, series):
    """One group of bars per name, one bar per series (label -> values)."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(names)) + (i - (len(series) - 1) / 2) * width, values, width,
               label=label)
    ax.legend(fontsize=8)


def _save(fig, report, path):
    fig.suptitle(report["machine"]["gpu"] + ", TF " + report["machine"]["tensorflow"],
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_models(report, path):
    models = list(report["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        rows = report["models"][name]["calls"]
        _grouped_bars(ax, VARIANTS, {
            f"batch {row['batch']} (dense {row['dense_ms']:.2f} ms)":
                [row[f"{v}_speedup"] for v in VARIANTS] for row in rows})
        _speedup_axis(ax, VARIANTS, "speedup over dense (TF32)")
        ax.set_title(f"{name}: model call in TensorFlow")
    _save(fig, report, path)


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
        if all("gpu_time_speedup_vs_cudnn_tf32" in row for row in rows):
            series["vs cuDNN TF32, GPU time"] = [row["gpu_time_speedup_vs_cudnn_tf32"]
                                                 for row in rows]
        _grouped_bars(ax, names, series)
        _speedup_axis(ax, names, "ratio")
        ax.set_title(f"escort op in TensorFlow, batch {batch}")
    _save(fig, report, path)


def plot_sparse24(report, path):
    """The 2:4 layers against cuDNN per batch, and the 2:4 ResNet-50 against dense."""
    batches = sorted({row["batch"] for row in report["layers"]})
    models = report.get("models")
    fig, axes = plt.subplots(len(batches) + bool(models), 1,
                             figsize=(12, 3.4 * (len(batches) + bool(models))), squeeze=False)
    series = {"f16 vs cuDNN f16": "speedup_f16_vs_cudnn_f16",
              "bf16 vs cuDNN bf16": "speedup_bf16_vs_cudnn_bf16",
              "f16 vs cuDNN TF32": "speedup_f16_vs_cudnn_tf32"}
    if report["layers"] and "gpu_time_speedup_f16_vs_cudnn_f16" in report["layers"][0]:
        series["f16 vs cuDNN f16, GPU time"] = "gpu_time_speedup_f16_vs_cudnn_f16"
    for ax, batch in zip(axes[:, 0], batches):
        rows = [row for row in report["layers"] if row["batch"] == batch]
        names = [row["layer"] for row in rows]
        _grouped_bars(ax, names, {label: [row[key] for row in rows]
                                  for label, key in series.items()})
        _speedup_axis(ax, names, "speedup")
        ax.set_title(f"2:4 op (tensor cores) in TensorFlow, batch {batch}")
    if models:
        ax = axes[-1, 0]
        rows = models["calls"]
        labels = [f"batch {row['batch']}" for row in rows]
        _grouped_bars(ax, labels, {
            f"converted vs dense, {p}": [row[f"speedup_converted_{p}_vs_dense_{p}"] for row in rows]
            for p in ("f16", "bf16")})
        _speedup_axis(ax, labels, "speedup")
        ax.set_title("ResNet-50 pruned 2:4, model call")
    _save(fig, report, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models")
    parser.add_argument("--layers")
    parser.add_argument("--out-models")
    parser.add_argument("--sparse24")
    parser.add_argument("--out-layers")
    parser.add_argument("--out-sparse24")
    args = parser.parse_args()
    if args.models:
        with open(args.models) as f:
            plot_models(json.load(f), args.out_models)
    if args.layers:
        with open(args.layers) as f:
            plot_layers(json.load(f), args.out_layers)
    if args.sparse24:
        with open(args.sparse24) as f:
            plot_sparse24(json.load(f), args.out_sparse24)


if __name__ == "__main__":
    main()
