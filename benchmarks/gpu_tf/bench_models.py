"""Whole pruned models inside TensorFlow on the GPU: dense and converted, side by side.

Each model (ResNet-50 and VGG-16, 224x224, pruned with TFMOT to the
SkimCaffe-like per-layer sparsities of `escort_tf.skimcaffe_models`) is timed in one
process in these variants:
  dense             the pruned model as TF runs it by default (TF32 on Ampere+)
  dense_fp32        the same with TF32 off
  dense_folded      batch norms folded into the dense convs (TF32 on)
  converted         escort_tf.convert(model)
  converted_folded  escort_tf.convert(model, fold_batch_norm=True)
  autotuned         convert(..., autotune=True, autotune_batch_size=B,
                    fold_batch_norm=True), tuned at each batch size B
per batch size: the median of `tf.function` model calls (`training=False`,
synchronised by reading the output back), then `model.predict`. Every
variant's outputs are compared with dense_fp32's. With a GPU, each call's
GPU kernel time (TF profiler, `common.gpu_kernel_us`) is reported too.

  python benchmarks/gpu_tf/bench_models.py --json OUT.json [--md OUT.md] [--quick]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (benchmarks/gpu_tf/common.py)

import escort_tf  # noqa: E402
from escort_tf import fold, skimcaffe_models  # noqa: E402
from escort_tf.timing import time_side_by_side  # noqa: E402


_LAYER_FIELDS = ("name", "kernel_shape", "sparsity", "decision", "engine", "sparse_ms",
                 "tensor_cores_ms", "dense_ms")


def _layer_table(name, autotune):
    """Markdown: autotune's time of each layer, sparse and dense, at each batch."""
    batches = sorted(autotune, key=int)
    by_layer = {}
    for b in batches:
        for layer in autotune[b].get("layers", []):
            by_layer.setdefault(layer["name"], {})[b] = layer
    if not by_layer:
        return []
    lines = [f"## {name}, autotune's layer times", "",
             "Median time of each layer alone, in ms: sparse on CUDA cores / dense (TF32), "
             "and the kind autotune kept.", "",
             "| layer | kernel | sparsity | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---" * (len(batches) + 3) + "|"]
    for layer_name, per_batch in by_layer.items():
        first = next(iter(per_batch.values()))
        cells = []
        for b in batches:
            layer = per_batch.get(b)
            if layer is None:
                cells.append("")
                continue
            dense_ms = "-" if layer["dense_ms"] is None else f"{layer['dense_ms']:.3f}"
            cells.append(f"{layer['sparse_ms']:.3f} / {dense_ms} {layer['decision']}")
        shape = "x".join(str(d) for d in first["kernel_shape"] or ())
        lines.append(f"| {layer_name} | {shape} | {first['sparsity']:.2f} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _autotuned(dense, batch, autotune_s):
    """The converted variants of `dense`; autotuned for `batch`."""
    start = time.perf_counter()
    tuned, report = escort_tf.convert(dense, autotune=True, autotune_batch_size=batch,
                                      fold_batch_norm=True, return_report=True)
    autotune_s[batch] = {
        "seconds": time.perf_counter() - start,
        "sparse": sum(row.decision == "sparse" for row in report),
        "timed": sum(row.sparse_ms is not None for row in report),
        "whole_model_ms": report.model_ms,
        "whole_model_choice": report.model_choice,
        # Each timed layer's times, so that a whole-model ratio can be traced to its layers.
        "layers": [{field: getattr(row, field) for field in _LAYER_FIELDS}
                   for row in report if row.sparse_ms is not None],
    }
    return tuned


def _median_ms(fns, reps, warmup):
    """Median times of `fns` interleaved, then of the dense model ("dense") with TF32 off.

    Every variant runs first, and is timed, with TF's default (TF32 on), and
    only then the dense model with TF32 off: on the H200, a model whose first
    call ran with TF32 off ran 15-20% faster with TF32 on afterwards than the
    same model called first with TF32 on (VGG-16 at batch 8 and 32), which
    would hand the dense model a start no user's process gives it.
    """
    times = {kind: t["median_ms"]
             for kind, t in time_side_by_side(fns, reps=reps, warmup=warmup).items()}
    with common.tf32(False):
        fp32 = time_side_by_side({"dense_fp32": fns["dense"]}, reps=reps, warmup=warmup)
    times["dense_fp32"] = fp32["dense_fp32"]["median_ms"]
    return times


def bench_model(name, image_size, batches, reps, predict_images, progress):
    """Times `name`'s variants at each batch; `predict_images(batch)` is the
    number of images `predict` gets (0: `predict` is not timed)."""
    build, sparsity_of = skimcaffe_models.MODELS[name]
    start = time.perf_counter()
    dense, sparsities = skimcaffe_models.prune_like_skimcaffe(build(image_size), sparsity_of)
    progress(f"{name}: pruned {len(sparsities)} convs in {time.perf_counter() - start:.1f} s")
    models = {
        "dense": dense,
        "dense_folded": fold.fold_batch_norm(dense)[0],
        "converted": escort_tf.convert(dense),
        "converted_folded": escort_tf.convert(dense, fold_batch_norm=True),
    }
    autotune_s = {}
    rng = np.random.default_rng(0)
    calls, predicts = [], []
    for batch in batches:
        models["autotuned"] = _autotuned(dense, batch, autotune_s)
        progress(f"{name} b{batch}: autotune {autotune_s[batch]['seconds']:.1f} s, kept "
                 f"{autotune_s[batch]['sparse']} of {autotune_s[batch]['timed']} sparse "
                 f"(whole-model check: {autotune_s[batch]['whole_model_choice']})")
        x = tf.constant(rng.standard_normal((batch, image_size, image_size, 3), np.float32))
        fns = {kind: tf.function(lambda t, m=m: m(t, training=False)) for kind, m in models.items()}
        timed = {kind: (lambda fn=fn: fn(x).numpy()) for kind, fn in fns.items()}
        outputs = {kind: fn() for kind, fn in timed.items()}  # first calls with TF's default
        times = _median_ms(timed, reps, warmup=2)
        with common.tf32(False):
            reference = timed["dense"]()
        errors = {kind: common.relative_error(y, reference) for kind, y in outputs.items()}
        row = common.speedup_row(times, batch=batch, reps=reps,
                                 relative_error_vs_dense_fp32=errors)
        # GPU kernel time per call (TF32 on, as the wall times): what the call
        # costs the GPU, whichever of host and GPU bounds its wall time.
        gpu_ms = common.model_gpu_ms(fns, x)
        for kind, ms in gpu_ms.items():
            row[f"{kind}_gpu_ms"] = ms
            if kind != "dense":
                row[f"{kind}_gpu_speedup"] = gpu_ms["dense"] / ms
        calls.append(row)
        progress(f"{name} call b{batch}: " + ", ".join(
            f"{kind} {t:.2f} ms" for kind, t in times.items()))
        if not predict_images(batch):
            continue
        images = rng.standard_normal((predict_images(batch), image_size, image_size, 3),
                                     np.float32)
        predict_fns = {kind: (lambda m=m: m.predict(images, batch_size=batch, verbose=0))
                       for kind, m in models.items()}
        predict_times = _median_ms(predict_fns, 3, warmup=1)
        predicts.append(common.speedup_row(predict_times, batch=batch, images=len(images)))
        progress(f"{name} predict {len(images)} images b{batch}: " + ", ".join(
            f"{kind} {t:.1f} ms" for kind, t in predict_times.items()))
    return {"image_size": image_size, "layer_sparsity": sparsities,
            "autotune": {str(b): v for b, v in autotune_s.items()},
            "calls": calls, "predict": predicts}


def markdown(report):
    lines = [f"# Whole models in TensorFlow on the GPU", "", common.machine_line(report["machine"]),
             "", f"Command: `{report['command']}`", "",
             "Median `tf.function` call (`training=False`, output read back) in ms, and the "
             "speedup over the dense model as TF runs it by default (TF32). `autotuned` is "
             "converted with `autotune=True, fold_batch_norm=True` at that batch size.", ""]
    kinds = ["dense", "dense_fp32", "dense_folded", "converted", "converted_folded", "autotuned"]
    for name, result in report["models"].items():
        for section, title in (("calls", "model call"), ("predict", "`predict`")):
            if not result[section]:
                continue
            lines += [f"## {name}, {title}", "",
                      "| batch | " + " | ".join(kinds) + " |",
                      "|---" * (len(kinds) + 1) + "|"]
            for row in result[section]:
                cells = [f"{row['dense_ms']:.2f}"] + [
                    f"{row[f'{k}_ms']:.2f} ({row[f'{k}_speedup']:.2f}x)" for k in kinds[1:]]
                label = str(row["batch"]) + (f" ({row['images']} images)" if "images" in row
                                             else "")
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
        gpu_rows = [row for row in result["calls"] if "dense_gpu_ms" in row]
        if gpu_rows:
            gpu_kinds = [k for k in kinds if k != "dense_fp32"]
            lines += [f"GPU kernel time per {name} call in ms (TF profiler; speedup over "
                      "dense's GPU time):", "",
                      "| batch | " + " | ".join(gpu_kinds) + " |",
                      "|---" * (len(gpu_kinds) + 1) + "|"]
            for row in gpu_rows:
                lines.append(f"| {row['batch']} | {row['dense_gpu_ms']:.2f} | " + " | ".join(
                    f"{row[f'{k}_gpu_ms']:.2f} ({row[f'{k}_gpu_speedup']:.2f}x)"
                    for k in gpu_kinds[1:]) + " |")
            lines.append("")
        lines += [f"Autotune of {name}: " + ", ".join(
            f"batch {b}: {v['seconds']:.1f} s, {v['sparse']} of {v['timed']} layers kept sparse"
            + (f" (whole-model check kept {v['whole_model_choice']}: " + ", ".join(
                f"{kind} {v['whole_model_ms'][kind]:.2f} ms"
                for kind in ("per_layer", "rule", "dense") if kind in v["whole_model_ms"]) + ")"
               if v.get("whole_model_ms") else "")
            # JSON keys are strings, sorted as such ("1", "32", "8").
            for b, v in sorted(result["autotune"].items(), key=lambda item: int(item[0]))), ""]
        lines += _layer_table(name, result["autotune"])
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--md")
    parser.add_argument("--models", default="resnet50,vgg16")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--quick", action="store_true",
                        help="small images, batch 1 and 2, few repetitions (a smoke run)")
    parser.add_argument("--skip-predict", action="store_true",
                        help="time model calls only (predict adds about 10 s per batch)")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.batches, args.reps = 64, "1,2", 3
    batches = [int(b) for b in args.batches.split(",")]
    report = {"machine": common.machine_info(), "command": " ".join(["python"] + sys.argv),
              "models": {}}
    for name in args.models.split(","):
        report["models"][name] = bench_model(
            name, args.image_size, batches, args.reps,
            predict_images=lambda b: 0 if args.skip_predict else min(256, 32 * b), progress=lambda s: print(s, flush=True))
        common.write_json(args.json, report)  # what is done survives a later failure
    common.finish(report, args.json, args.md, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
