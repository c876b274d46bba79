"""The benchmark harness: `escort-tf bench` runs written up as markdown reports and plots.

`main` takes `escort-tf bench`'s options plus `--markdown PATH` and `--plot
PATH` (a PNG, layer mode), runs the benchmark of `escort_tf.benchmark` and
writes its JSON, report and plot; the scripts in `benchmarks/cpu/` call it
with their result paths. It lives in the source tree, not the package: an
installed `escort-tf bench` prints its results and writes JSON only.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/harness.py --quick --markdown layers.md
"""

import json
import os
import sys
from typing import Dict, Optional, Sequence

# TFMOT and escort_tf need tf_keras; TF reads this when it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from escort_tf import benchmark  # noqa: E402
from escort_tf import skimcaffe_models  # noqa: E402
from escort_tf.layer_timing import SKIMCAFFE, density_title  # noqa: E402
from escort_tf.measurement import dense_peer  # noqa: E402


def machine_line(machine: Dict[str, object]) -> str:
    """One sentence naming the machine and versions, for report headers."""
    simd = "/".join(machine.get("simd", [])) or "no SIMD flags read"
    peer = dense_peer(machine)
    return (f"{machine['cpu_model']} ({simd}), {machine['usable_cores']} cores, TensorFlow "
            f"{machine['tensorflow']} (dense convolutions: {peer}), escort_tf "
            f"{machine['escort_tf']}, {machine['date_utc']}.")


def layers_markdown(report: Dict[str, object]) -> str:
    """The layer report as markdown: a speedup summary and a detail table."""
    machine, results = report["machine"], report["results"]
    labels = report["settings"]["densities"]
    batches = report["settings"]["batches"]
    peer = dense_peer(machine)
    lines = [
        f"# escort_tf.sparse_conv2d vs tf.nn.conv2d ({peer}), CPU",
        "",
        f"{machine_line(machine)} "
        f"fp32 NHWC, no bias; medians of {report['settings']['reps']} interleaved repetitions "
        f"after warm-up, each a `tf.function` call running "
        f"{report['settings'].get('ops_per_call', 1)} convolutions one after another "
        f"(times are per convolution: a model pays TF's per-call cost once, not per layer). "
        f"Speedup = dense time / sparse time (>1: sparse is faster); "
        f"effective GFLOPS = dense flops / time; useful GFLOPS = nonzero-weight flops / time.",
        "",
        "## Speedup",
        "",
    ]
    header = ["layer", "SkimCaffe density"] + [
        f"{density_title(l)} b{b}" for l in labels for b in batches]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(r["layer"], r["density_label"], r["batch"]): r for r in results}
    layer_names = list(dict.fromkeys(r["layer"] for r in results))
    for name in layer_names:
        skim = next(r["density"] for r in results
                    if r["layer"] == name and r["density_label"] == SKIMCAFFE) \
            if SKIMCAFFE in labels else None
        cells = [name, "-" if skim is None else f"{skim:.3f}"]
        for l in labels:
            for b in batches:
                r = by_key.get((name, l, b))
                cells.append("-" if r is None else f"{r['speedup']:.2f}x"
                             + ("" if r["match"] else " (mismatch)"))
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**geomean**", ""] + [f"**{report['geomeans'][l][str(b)]:.2f}x**"
                                   for l in labels for b in batches]
    lines += ["| " + " | ".join(cells) + " |", "", "## Details", ""]
    header = ["layer", "density", "batch", "sparse ms", "dense ms", "speedup",
              "sparse eff. GFLOPS", "sparse useful GFLOPS", "dense GFLOPS", "outputs match"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        lines.append("| " + " | ".join([
            r["layer"], f"{r['density']:.3f}", str(r["batch"]), f"{r['sparse_ms']:.3f}",
            f"{r['dense_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['sparse_effective_gflops']:.1f}",
            f"{r['sparse_useful_gflops']:.1f}", f"{r['dense_gflops']:.1f}",
            "yes" if r["match"] else "**no**"]) + " |")
    return "\n".join(lines) + "\n"


def plot_layers(report: Dict[str, object], path: str) -> None:
    """Writes a PNG: speedup per layer, one panel per batch size, bars per density."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")  # no display on CI / servers
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    import matplotlib.ticker  # pylint: disable=import-outside-toplevel

    results, labels = report["results"], report["settings"]["densities"]
    batches = report["settings"]["batches"]
    names = list(dict.fromkeys(r["layer"] for r in results))
    by_key = {(r["layer"], r["density_label"], r["batch"]): r["speedup"] for r in results}
    fig, axes = plt.subplots(len(batches), 1, figsize=(12, 3.6 * len(batches)), squeeze=False)
    width = 0.8 / len(labels)
    for ax, batch in zip(axes[:, 0], batches):
        for i, label in enumerate(labels):
            values = [by_key.get((n, label, batch), float("nan")) for n in names]
            gm = report["geomeans"][label][str(batch)]
            ax.bar(np.arange(len(names)) + (i - (len(labels) - 1) / 2) * width, values, width,
                   label=f"{density_title(label)} (geomean {gm:.2f}x)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(3.0, color="gray", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        # Plain "2x" tick labels instead of log-scale's "2 x 10^0".
        low, high = ax.get_ylim()
        ticks = [t for t in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16) if low <= t <= high]
        ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("speedup vs tf.nn.conv2d")
        ax.set_title(f"batch {batch}")
        ax.legend(fontsize=8)
    machine = report["machine"]
    peer = dense_peer(machine)
    fig.suptitle(f"escort_tf.sparse_conv2d vs {peer}, fp32 — {machine['cpu_model']}, "
                 f"{machine['usable_cores']} cores, TF {machine['tensorflow']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def models_markdown(report: Dict[str, object]) -> str:
    """The model report as a markdown table."""
    machine, settings = report["machine"], report["settings"]
    # .get: reports written before --sparsity existed have no such key.
    uniform = settings.get("uniform_sparsity")
    if uniform is None:
        profile = (f"SkimCaffe-like per-layer sparsity: ResNet-50 3x3 "
                   f"{_fmt_levels(skimcaffe_models.RESNET50_3X3)}, "
                   f"1x1 {_fmt_levels(skimcaffe_models.RESNET50_1X1)} "
                   f"(res2..res5), conv1 dense; VGG-16 convs "
                   f"{skimcaffe_models.VGG16_SPARSITY:.0%} "
                   f"(block1_conv1 {skimcaffe_models.VGG16_FIRST:.0%})")
    else:
        profile = (f"a uniform {100 * uniform:g}% sparsity in every layer the SkimCaffe-like "
                   f"profile prunes: all ResNet-50 convs but conv1 (dense), all 13 VGG-16 convs")
    lines = [
        "# Whole pruned models: dense tf_keras vs escort_tf.convert, CPU",
        "",
        f"{machine_line(machine)} "
        f"Input {settings['image_size']}x{settings['image_size']}x3, fp32, random weights "
        f"pruned with TFMOT (magnitude, ConstantSparsity) to {profile}. Converted with "
        f"min_sparsity 0.5, autotune {'on' if settings['autotune'] else 'off'}. "
        f"Speedup = dense / sparse time: medians for model calls; for `predict` on numpy "
        f"input the minimum of the repetitions (tf_keras's tf.data pipeline sleeps 0.4-1.1 s "
        f"at the end of about half the calls here, dense or sparse), and the median for the "
        f"same images fed as a `tf.data.Dataset` with autotuning off (no such sleep)."
        + (" Rows marked *folded* time models whose batch norms and ReLUs were folded into "
           "the convolutions before them: *sparse folded* is `convert(..., "
           "fold_batch_norm=True)` against the dense model as it is, *both folded* against "
           "the dense model folded by the same pass." if settings.get("fold_batch_norm")
           else ""),
        "",
        "| model | conv sparsity | converted layers | what | dense ms | sparse ms | speedup "
        "| outputs match |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in report["models"]:
        first = [m["model"], f"{m['conv_weight_sparsity']:.1%}",
                 f"{m['converted_layers']}/{m['conv_layers']}"]

        def row(what, dense_ms, sparse_ms, match="", digits=1):
            nonlocal first
            lines.append("| " + " | ".join(first + [
                what, f"{dense_ms:.{digits}f}", f"{sparse_ms:.{digits}f}",
                f"**{dense_ms / sparse_ms:.2f}x**", match]) + " |")
            first = ["", "", ""]

        def folded_rows(what, values, prefix="", digits=1):
            # Written by --fold-batch-norm runs only.
            if f"{prefix}sparse_folded_ms" in values:
                row(f"{what}, sparse folded", values[f"{prefix}dense_ms"],
                    values[f"{prefix}sparse_folded_ms"], digits=digits)
                row(f"{what}, both folded", values[f"{prefix}dense_folded_ms"],
                    values[f"{prefix}sparse_folded_ms"], digits=digits)

        for c in m["calls"]:
            what = f"tf.function call, batch {c['batch']}"
            row(what, c["dense_ms"], c["sparse_ms"],
                "yes" if c["match"] else f"**no** (max err {c['max_abs_err']:.2g})")
            folded_rows(what, c)
        p = m["predict"]
        what = (f"predict, {p['images']} images, batch {p['batch_size']}"
                + (" (min)" if p.get("statistic") == "min" else ""))
        row(what, p["dense_ms"], p["sparse_ms"], digits=0)
        folded_rows(what, p, digits=0)
        # .get: reports written before the dataset row existed have no such key.
        if p.get("dataset_speedup") is not None:
            what = "predict, same images as a dataset without autotuning (median)"
            row(what, p["dataset_dense_ms"], p["dataset_sparse_ms"], digits=0)
            folded_rows(what, p, prefix="dataset_", digits=0)
    tuned = [m for m in report["models"] if "autotune_sparse" in m]
    if tuned:
        lines += ["", "Autotune (each candidate layer timed alone, sparse vs dense, at batch 1; "
                  "the faster kept; then the whole model timed that way, as the rule "
                  "converts it and dense, and the fastest kept):", ""]
        lines += [f"- {m['model']}: autotune kept {m['autotune_sparse']} layers sparse, "
                  f"{m['autotune_dense']} dense; the whole-model check kept "
                  f"{m.get('whole_model_choice')}; conversion took {m['convert_s']:.0f} s."
                  for m in tuned]
    return "\n".join(lines) + "\n"


def _fmt_levels(levels: Dict[int, float]) -> str:
    return "/".join(f"{v:.0%}" for v in levels.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the benchmark and writes its reports; returns the exit status.

    Args:
        argv: `escort-tf bench` arguments plus `--markdown PATH` and `--plot PATH`;
            defaults to `sys.argv[1:]`.
    """
    parser = benchmark.build_parser(prog="benchmarks/harness.py")
    parser.epilog = None
    out = parser.add_argument_group("reports")
    out.add_argument("--markdown", metavar="PATH",
                     help="write a markdown report (default: print it)")
    out.add_argument("--plot", metavar="PATH", help="write a PNG plot (layer mode)")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    report = benchmark.run(args)
    if args.models:
        markdown = models_markdown(report)
        if args.plot:
            print("--plot applies to layer mode only; no plot written", file=sys.stderr)
    else:
        markdown = layers_markdown(report)
        if args.plot:
            plot_layers(report, args.plot)
            print(f"wrote {args.plot}")
    if args.json:
        benchmark.write_text(args.json, json.dumps(report, indent=1, sort_keys=False) + "\n")
    benchmark.write_text(args.markdown, markdown)
    if not args.markdown:
        print(markdown)
    return benchmark.exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
