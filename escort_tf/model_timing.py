"""Model mode of `escort-tf bench`: whole pruned models, dense vs `escort_tf.convert`.

Each model of `escort_tf.skimcaffe_models.MODELS` is pruned with TFMOT
(SkimCaffe-like, or uniformly), converted (optionally with autotune), and
timed side by side with the dense model (`escort_tf.timing`): a `tf.function`
model call per batch size, then batched `model.predict`; outputs are compared.

Example:

    dense, sparse, info = prune_and_convert("resnet50", image_size=224)
    timing = bench_model("resnet50", dense, sparse, batches=(1, 8), reps=3,
                         predict_images=32, predict_batch=8, predict_reps=5)
"""

import contextlib
import dataclasses
import logging
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from escort_tf import fold
from escort_tf import skimcaffe_models
from escort_tf.convert import convert
from escort_tf.measurement import machine_info, outputs_match
from escort_tf.timing import time_side_by_side


class _DropRetracingWarnings(logging.Filter):
    """Drops TF's "triggered tf.function retracing" warning.

    tf_keras traces a predict function per model, and TF counts the traces of
    all of them together (they share one Python function), so predicting with
    a few models in turn trips a warning meant for code that re-creates
    `tf.function`s in a loop: it says nothing about the models timed here.
    """

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_retracing_warnings():
    """TF's logger without `_DropRetracingWarnings`' warning inside the block."""
    logger, quiet = tf.get_logger(), _DropRetracingWarnings()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _conv_summary(model, sparsities: Dict[str, float], converted_names: List[str]):
    convs = [l for l in model.layers if isinstance(l, tf_keras.layers.Conv2D)]
    weights = sum(int(np.prod(l.kernel.shape)) for l in convs)
    zeros = sum(sparsities.get(l.name, 0.0) * int(np.prod(l.kernel.shape)) for l in convs)
    return {"conv_layers": len(convs), "pruned_layers": len(sparsities),
            "converted_layers": len(converted_names),
            "conv_weight_sparsity": zeros / weights if weights else 0.0}


def bench_model(name: str, dense, sparse, batches: Sequence[int], reps: int,
                predict_images: int, predict_batch: int, predict_reps: int,
                seed: int = 0, progress: Callable[[str], None] = print,
                variants: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Times a dense model and its converted copy side by side on random inputs.

    Per batch size: a `tf.function` model call (`training=False`), the
    outputs compared. Then `model.predict` over `predict_images` images in
    batches of `predict_batch` (tf_keras adds a fixed per-call cost here).

    Args:
        name: the model's name in progress lines.
        dense: a tf_keras model with a fully known input shape (batch aside).
        sparse: its `escort_tf.convert` copy.
        batches: batch sizes of the model-call timing.
        reps: timed repetitions of each model call.
        predict_images, predict_batch, predict_reps: the predict timing.
        seed: seeds the inputs.
        progress: called with one line per measurement.
        variants: more models computing the same function, by a name such as
            "sparse_folded", timed in the same rounds: each adds "<name>_ms"
            and "<name>_speedup" (dense time over its time) to every call row
            and to "predict" ("dataset_<name>_ms", "dataset_<name>_speedup"
            there too), and its outputs are compared with the dense ones.

    Returns:
        {"calls": [{"batch", "dense_ms", "sparse_ms", "speedup", match...}],
         "predict": {"images", "batch_size", "statistic", "dense_ms", "sparse_ms",
                     "speedup", "dataset_dense_ms", "dataset_sparse_ms",
                     "dataset_speedup", ...}}.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(dense.input_shape[1:])
    models = {"dense": dense, "sparse": sparse, **(variants or {})}
    calls_of = {kind: tf.function(lambda t, m=m: m(t, training=False))
                for kind, m in models.items()}
    others = [kind for kind in models if kind != "dense"]

    def speedup_key(kind, prefix=""):
        # The converted model's ratio keeps its original key, "speedup".
        return prefix + ("speedup" if kind == "sparse" else f"{kind}_speedup")

    calls = []
    for batch in batches:
        x = tf.constant(rng.standard_normal((batch, *shape)).astype(np.float32))
        expected = calls_of["dense"](x).numpy()
        checks = {kind: outputs_match(calls_of[kind](x).numpy(), expected) for kind in others}
        times = time_side_by_side({kind: lambda c=c: c(x) for kind, c in calls_of.items()},
                                  reps=reps, warmup=1)
        row = {"batch": batch, "reps": reps, **checks["sparse"],
               "match": all(c["match"] for c in checks.values()),
               "max_abs_err": max(c["max_abs_err"] for c in checks.values())}
        for kind in models:
            row[f"{kind}_ms"] = times[kind]["median_ms"]
        for kind in others:
            row[speedup_key(kind)] = row["dense_ms"] / row[f"{kind}_ms"]
        calls.append(row)
        progress(f"{name} call batch {batch}: dense {row['dense_ms']:.1f} ms, " + ", ".join(
            f"{kind} {row[f'{kind}_ms']:.1f} ms ({row[speedup_key(kind)]:.2f}x)"
            for kind in others) + ("" if row["match"] else "  OUTPUT MISMATCH"))
    images = rng.standard_normal((predict_images, *shape)).astype(np.float32)
    # predict(numpy) is what users call, but tf_keras feeds it through a tf.data
    # pipeline whose teardown, in about half the calls on the 2-core benchmark
    # machine, sleeps 0.4-1.1 s after the last batch (no CPU used; dense and sparse
    # alike; never seen with tf.data autotuning off). So: the minimum over the
    # repetitions for numpy input, and the median for the same images fed as a
    # dataset without autotuning.
    no_autotune = tf.data.Options()
    no_autotune.autotune.enabled = False
    # Batches of static size when they divide the images evenly, as tf_keras
    # makes of numpy input: both inputs then run each model's one traced
    # predict function instead of tracing it twice.
    dataset = (tf.data.Dataset.from_tensor_slices(images)
               .batch(predict_batch, drop_remainder=predict_images % predict_batch == 0)
               .with_options(no_autotune))
    predict_fns = {}
    for kind, m in models.items():
        predict_fns[kind] = lambda m=m: m.predict(images, batch_size=predict_batch, verbose=0)
        predict_fns[kind + "_dataset"] = lambda m=m: m.predict(dataset, verbose=0)
    with _quiet_retracing_warnings():
        predict_times = time_side_by_side(predict_fns, reps=predict_reps, warmup=1)
    predict = {"images": predict_images, "batch_size": predict_batch, "reps": predict_reps,
               "statistic": "min"}
    for kind in models:
        predict[f"{kind}_ms"] = predict_times[kind]["min_ms"]
        predict[f"{kind}_median_ms"] = predict_times[kind]["median_ms"]
        predict[f"dataset_{kind}_ms"] = predict_times[kind + "_dataset"]["median_ms"]
    for prefix in ("", "dataset_"):
        for kind in others:
            predict[speedup_key(kind, prefix)] = (predict[f"{prefix}dense_ms"]
                                                  / predict[f"{prefix}{kind}_ms"])

    def summary(prefix):
        return f"dense {predict[f'{prefix}dense_ms']:.0f} ms, " + ", ".join(
            f"{kind} {predict[f'{prefix}{kind}_ms']:.0f} ms "
            f"({predict[speedup_key(kind, prefix)]:.2f}x)" for kind in others)

    progress(f"{name} predict {predict_images} images, batch {predict_batch}: "
             f"{summary('')} (min); from a dataset without autotuning: "
             f"{summary('dataset_')} (median)")
    return {"calls": calls, "predict": predict}


def prune_and_convert(name: str, image_size: int = 224, min_sparsity: float = 0.5,
                      autotune: bool = False, progress: Callable[[str], None] = print,
                      uniform_sparsity: Optional[float] = None):
    """Builds model `name`, prunes it (SkimCaffe-like or uniformly), converts it.

    Args:
        name: a key of `skimcaffe_models.MODELS`.
        image_size: input height and width.
        min_sparsity: passed to `escort_tf.convert`.
        autotune: passed to `escort_tf.convert`.
        progress: called with one line per step.
        uniform_sparsity: if set, prune every layer the model's profile
            prunes to this sparsity instead (see
            `skimcaffe_models.uniform_sparsity_of`).

    Returns:
        `(dense, sparse, info)`: the pruned dense tf_keras model, its
        `escort_tf.convert` copy, and a summary dict (sparsities, timings of
        the steps, which layers were converted; with `autotune`, also
        "conversion": the `ConversionReport` rows as dicts, and
        "autotune_sparse"/"autotune_dense": how many timed layers it kept
        sparse/dense).

    Raises:
        ValueError: `uniform_sparsity` is not in (0, 1).
    """
    build, sparsity_of = skimcaffe_models.MODELS[name]
    if uniform_sparsity is not None:
        sparsity_of = skimcaffe_models.uniform_sparsity_of(sparsity_of, uniform_sparsity)
    start = time.perf_counter()
    dense, sparsities = skimcaffe_models.prune_like_skimcaffe(build(image_size),
                                                               sparsity_of)
    prune_s = time.perf_counter() - start
    progress(f"{name}: pruned {len(sparsities)} conv layers with TFMOT in {prune_s:.1f} s")
    start = time.perf_counter()
    sparse, report = convert(dense, min_sparsity=min_sparsity, autotune=autotune,
                             return_report=True)
    convert_s = time.perf_counter() - start
    converted = [row.name for row in report if row.decision == "sparse"]
    info = {"model": name, "image_size": image_size, "min_sparsity": min_sparsity,
            "uniform_sparsity": uniform_sparsity, "autotune": autotune, "prune_s": prune_s,
            "convert_s": convert_s, "converted": converted, "layer_sparsity": sparsities,
            **_conv_summary(dense, sparsities, converted)}
    tuned = ""
    if autotune:
        # asdict gives plain floats, strings, None and a kernel-shape tuple
        # (written as a JSON list), so the rows go into the JSON as they are.
        info["conversion"] = [dataclasses.asdict(row) for row in report]
        # Only rows with timings were decided by autotune; a candidate whose
        # timing was skipped or failed keeps its sparsity-based decision.
        timed = [row for row in report if row.sparse_ms is not None]
        info["autotune_sparse"] = sum(row.decision == "sparse" for row in timed)
        info["autotune_dense"] = len(timed) - info["autotune_sparse"]
        info["whole_model_ms"], info["whole_model_choice"] = report.model_ms, report.model_choice
        tuned = (f" (autotune kept {info['autotune_sparse']} sparse, "
                 f"{info['autotune_dense']} dense; whole-model check kept "
                 f"{report.model_choice})")
    progress(f"{name}: converted {len(converted)} layers in {convert_s:.1f} s{tuned}")
    return dense, sparse, info


def folded_variants(dense, sparse) -> Tuple[Dict[str, object], int]:
    """The variants `--fold-batch-norm` times beside a dense model and its converted copy.

    Args:
        dense: the pruned tf_keras model.
        sparse: its `escort_tf.convert` copy.

    Returns:
        `(variants, folded)`: {"sparse_folded": `sparse` with its batch norms
        and ReLUs folded into the convolutions (what `convert(...,
        fold_batch_norm=True)` returns), "dense_folded": `dense` folded by the
        same pass, so the gain of folding is told apart from the sparse
        kernels'}, for `bench_model`'s `variants`; and how many layers were
        folded away in `sparse`.
    """
    sparse_folded, removed = fold.fold_batch_norm(sparse)
    variants = {"sparse_folded": sparse_folded, "dense_folded": fold.fold_batch_norm(dense)[0]}
    return variants, sum(len(names) for names in removed.values())


def bench_models(names: Sequence[str], image_size: int, batches: Sequence[int], reps: int,
                 predict_images: int, predict_batch: int, predict_reps: int,
                 autotune: bool = False, seed: int = 0,
                 progress: Callable[[str], None] = print,
                 uniform_sparsity: Optional[float] = None,
                 fold_batch_norm: bool = False) -> Dict[str, object]:
    """Prunes, converts and times each model in `names`, dense vs converted.

    Args:
        names: keys of `skimcaffe_models.MODELS`.
        image_size: input height and width.
        batches: batch sizes of the model-call timing.
        reps: timed repetitions of each model call.
        predict_images, predict_batch, predict_reps: the predict timing.
        autotune: convert with `autotune=True`.
        seed: seeds the inputs.
        progress: called with one line per step and measurement.
        uniform_sparsity: if set, the pruned layers get this sparsity instead
            of the SkimCaffe-like profile (see
            `skimcaffe_models.uniform_sparsity_of`).
        fold_batch_norm: also time the `folded_variants` of each model,
            "sparse_folded" and "dense_folded".

    Returns:
        {"machine", "settings", "models": [{model info..., "calls", "predict"}]}.

    Raises:
        ValueError: `uniform_sparsity` is not in (0, 1).
    """
    models = []
    for name in names:
        dense, sparse, info = prune_and_convert(name, image_size, autotune=autotune,
                                                progress=progress,
                                                uniform_sparsity=uniform_sparsity)
        variants = None
        if fold_batch_norm:
            variants, info["folded_layers"] = folded_variants(dense, sparse)
            progress(f"{name}: folded {info['folded_layers']} batch norm and ReLU layers")
        info.update(bench_model(name, dense, sparse, batches, reps, predict_images,
                                predict_batch, predict_reps, seed=seed, progress=progress,
                                variants=variants))
        models.append(info)
        del dense, sparse, variants
        tf_keras.backend.clear_session()
    return {
        "machine": machine_info(),
        "settings": {"mode": "models", "image_size": image_size, "batches": list(batches),
                     "reps": reps, "predict_reps": predict_reps, "autotune": autotune,
                     "uniform_sparsity": uniform_sparsity, "fold_batch_norm": fold_batch_norm,
                     "dense": "TFMOT-pruned, stripped tf_keras model",
                     "sparse": f"escort_tf.convert(dense, min_sparsity=0.5, autotune={autotune})",
                     "speedup": "dense_ms / sparse_ms: medians for model calls; for predict "
                                "see each model's predict.statistic and dataset_* entries",
                     **skimcaffe_models.profile_description(uniform_sparsity)},
        "models": models,
    }
