"""Bar chart of speedups of the escort kernel over each baseline, per layer.

  python3 plot.py bench.json plot.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINES = ["cudnn_fp32", "cudnn_tf32", "cudnn_bf16_cl", "im2col_cublas", "im2col_cusparse"]


def main(src, dst):
    data = json.load(open(src))
    rows = [r for r in data["results"] if r["density_label"] == "skimcaffe"]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(len(batches), 1, figsize=(13, 4.2 * len(batches)), squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        rs = [r for r in rows if r["batch"] == batch]
        names = [r["layer"].replace("_", "\n", 1) + "\nd=%.3f" % r["density"] for r in rs]
        width = 0.8 / len(BASELINES)
        for i, b in enumerate(BASELINES):
            xs = [j + (i - len(BASELINES) / 2 + 0.5) * width for j in range(len(rs))]
            ax.bar(xs, [r["speedup_nhwc"][b] for r in rs], width, label="vs " + b)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rs)))
        ax.set_xticklabels(names, fontsize=7)
        ax.set_ylabel("speedup (escort NHWC fp32)")
        g = data["summary"].get("b%d_skimcaffe" % batch, {})
        ax.set_title("batch %d, SkimCaffe densities; geomean: %s" % (
            batch, ", ".join("%s %.2fx" % (k, v) for k, v in g.items())), fontsize=8)
        ax.legend(fontsize=7, ncol=5)
    dev = data["device"]
    fig.suptitle("Escort CSR direct conv on %s (driver %s, CUDA %s, cuDNN %s)" % (
        dev.get("gpu"), dev.get("driver"), dev.get("cuda"), dev.get("cudnn")), fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print("wrote", dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
