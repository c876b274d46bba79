"""`escort-tf bench`: the sparse op and converted models against dense TensorFlow.

Two modes, each timing sparse and dense side by side in one process, on all
cores, with warm-up calls and medians over interleaved repetitions
(`escort_tf.timing`):

* layers (default, `escort_tf.layer_timing`): `sparse_conv2d` vs
  `tf.nn.conv2d` (oneDNN where TF enables it: the benchmark scripts set
  TF_ENABLE_ONEDNN_OPTS=1) on every layer of the layer table
  (`escort_tf.layer_table`), at batch 1 and 8, at the layer's SkimCaffe
  density and at 70% and 90% sparsity. Reports times, speedup (dense time /
  sparse time), effective GFLOPS (dense flops / time) and geomeans.
* `--models` (`escort_tf.model_timing`): tf_keras ResNet-50 and VGG-16
  (`weights=None`) pruned with TFMOT to SkimCaffe-like per-layer sparsity (or,
  with `--sparsity X`, to X in every layer that profile prunes;
  `escort_tf.skimcaffe_models`), stripped, then dense vs `escort_tf.convert`
  (optionally `--autotune`, `--fold-batch-norm`): a `tf.function` model call
  at batch 1 and 8, and batched `model.predict`. Outputs are checked to match.

    TF_USE_LEGACY_KERAS=1 escort-tf bench --quick
    TF_USE_LEGACY_KERAS=1 escort-tf bench --models --sparsity 0.7 --autotune --json m70.json

This module is the command: its options (`build_parser`), the run
(`run`) and the exit status. Markdown reports and plots of its results are
written by the benchmark harness of the source tree, `benchmarks/harness.py`
(the scripts in `benchmarks/cpu/` run it).
"""

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence

from escort_tf import layer_timing
from escort_tf import model_timing
from escort_tf import skimcaffe_models
from escort_tf.layer_timing import SKIMCAFFE
from escort_tf.measurement import onednn_enabled

def build_parser(prog: str = "escort-tf bench") -> argparse.ArgumentParser:
    """The options of `escort-tf bench`; `benchmarks/harness.py` adds its report options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark escort_tf's sparse convolution against dense TensorFlow on "
                    "this machine: the layer table (default) or whole pruned models (--models).")
    parser.add_argument("--models", nargs="?", const="resnet50,vgg16", default=None,
                        metavar="NAMES",
                        help="whole-model mode; comma-separated subset of "
                             f"{','.join(skimcaffe_models.MODELS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (and fewer predict images): a rough run")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per variant (default: 7 layers / 3 models, "
                             "--quick 3 / 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="per-measurement time budget: fewer repetitions (at least 3) "
                             "for slow cases (default: 20, --quick 5; layer mode)")
    parser.add_argument("--seed", type=int, default=0)
    layers = parser.add_argument_group("layer mode")
    # A tf.function call costs ~0.27 ms here before any op runs; a ResNet-50
    # call spreads that over 53 convolutions, and 32 per call comes close.
    layers.add_argument("--ops-per-call", type=int, default=32, metavar="N",
                        help="convolutions per timed tf.function call, on different inputs, "
                             "so TF's fixed per-call cost is amortized as in a model "
                             "(default: %(default)s; 1 times single-op calls)")
    layers.add_argument("--layers", default=None, metavar="NAMES",
                        help="comma-separated layer names from the table (default: all)")
    layers.add_argument("--densities", default=None, metavar="LIST",
                        help="comma-separated densities; 'skimcaffe' means each layer's own "
                             "(default: skimcaffe plus the table's UNIFORM_DENSITIES)")
    layers.add_argument("--layer-table", default=None, metavar="PATH",
                        help="a layer table file like escort_tf/layer_table.py "
                             "(default: the packaged table)")
    models = parser.add_argument_group("model mode")
    models.add_argument("--image-size", type=int, default=224)
    models.add_argument("--predict-images", type=int, default=None,
                        help="images per predict call (default: 32, --quick 16)")
    models.add_argument("--predict-batch", type=int, default=8)
    models.add_argument("--autotune", action="store_true",
                        help="convert with autotune=True (time each layer sparse vs dense)")
    models.add_argument("--fold-batch-norm", action="store_true",
                        help="also time both models with batch norms and ReLUs folded into "
                             "the convolutions (convert(..., fold_batch_norm=True))")
    models.add_argument("--sparsity", type=float, default=None, metavar="X",
                        help="prune every layer the SkimCaffe-like profile prunes to X, in "
                             "(0, 1), instead of the profile's per-layer levels")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    parser.epilog = ("Markdown reports and plots: python benchmarks/harness.py in the "
                     "escort-tf source tree takes these options plus --markdown and --plot.")
    return parser


def _csv(text: str) -> List[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def write_text(path: Optional[str], text: str) -> None:
    """Writes `text` to `path` (creating its directory) and says so; nothing if `path` is None."""
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(text)
        print(f"wrote {path}")


def _run_layers(args, batches):
    if args.sparsity is not None:
        # Not silently ignored: the run would take minutes and answer another question.
        raise SystemExit("escort-tf bench: --sparsity applies to model mode (--models); "
                         "layer mode takes --densities")
    table = layer_timing.load_layer_table(args.layer_table)
    layers = table.LAYERS
    if args.layers:
        known = {layer.name: layer for layer in layers}
        unknown = [n for n in _csv(args.layers) if n not in known]
        if unknown:
            raise SystemExit(f"escort-tf bench: unknown layer(s) {unknown}; the table has "
                             f"{sorted(known)}")
        layers = [known[n] for n in _csv(args.layers)]
    if args.densities:
        densities = [SKIMCAFFE if d == SKIMCAFFE else float(d)
                     for d in _csv(args.densities)]
        if any(d != SKIMCAFFE and not 0.0 < d <= 1.0 for d in densities):
            raise SystemExit("escort-tf bench: densities must be in (0, 1] or 'skimcaffe'")
    else:
        densities = [SKIMCAFFE, *table.UNIFORM_DENSITIES]
    reps = args.reps or (3 if args.quick else 7)
    budget = args.budget if args.budget is not None else (5.0 if args.quick else 20.0)
    if args.ops_per_call < 1:
        raise SystemExit("escort-tf bench: --ops-per-call must be at least 1")
    report = layer_timing.bench_layers(layers, densities, batches, reps, warmup=args.warmup,
                                       seed=args.seed, budget_s=budget,
                                       ops_per_call=args.ops_per_call)
    for key, by_batch in report["geomeans"].items():
        print(f"geomean speedup, {layer_timing.density_title(key)}: " +
              ", ".join(f"batch {b} {v:.2f}x" for b, v in by_batch.items()))
    return report


def _run_models(args, batches):
    names = _csv(args.models)
    unknown = [n for n in names if n not in skimcaffe_models.MODELS]
    if unknown:
        raise SystemExit(f"escort-tf bench: unknown model(s) {unknown}; "
                         f"choose from {list(skimcaffe_models.MODELS)}")
    # `not 0 < x < 1` also rejects NaN.
    if args.sparsity is not None and not 0.0 < args.sparsity < 1.0:
        raise SystemExit(f"escort-tf bench: --sparsity must be in (0, 1), got {args.sparsity}")
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        raise SystemExit("escort-tf bench --models prunes with TFMOT, which needs tf_keras: "
                         "set TF_USE_LEGACY_KERAS=1 before starting Python")
    reps = args.reps or (2 if args.quick else 3)
    report = model_timing.bench_models(
        names, args.image_size, batches, reps,
        predict_images=args.predict_images or (16 if args.quick else 32),
        predict_batch=args.predict_batch, predict_reps=args.reps or (3 if args.quick else 5),
        autotune=args.autotune, seed=args.seed, uniform_sparsity=args.sparsity,
        fold_batch_norm=args.fold_batch_norm)
    return report


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Runs the mode `args` (from `build_parser`) asks for; returns its report.

    Raises:
        SystemExit: an option is invalid.
    """
    batches = [int(b) for b in _csv(args.batches)]
    if not batches or min(batches) < 1 or (args.reps is not None and args.reps < 1):
        raise SystemExit("escort-tf bench: batch sizes and --reps must be positive")
    if not onednn_enabled():
        print("escort-tf bench: TensorFlow runs without oneDNN on this CPU, so the dense peer "
              "is Eigen's kernel; set TF_ENABLE_ONEDNN_OPTS=1 to compare with oneDNN",
              file=sys.stderr)
    start = time.perf_counter()
    report = (_run_models if args.models else _run_layers)(args, batches)
    report["settings"]["wall_s"] = time.perf_counter() - start
    return report


def exit_status(report: Dict[str, object]) -> int:
    """1 (and a message) if some sparse outputs did not match the dense ones, else 0."""
    rows = report["results"] if "results" in report else [
        c for m in report["models"] for c in m["calls"]]
    if not all(r["match"] for r in rows):
        print("escort-tf bench: some sparse outputs did not match the dense ones", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs `escort-tf bench`; returns the exit status.

    Args:
        argv: arguments after `bench`; defaults to `sys.argv[1:]`.
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    report = run(args)
    if args.json:
        write_text(args.json, json.dumps(report, indent=1, sort_keys=False) + "\n")
    return exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
