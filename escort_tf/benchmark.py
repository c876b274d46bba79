"""`escort-tf bench`: the sparse op and converted models against dense TensorFlow.

Two modes, each timing sparse and dense side by side in one process, on all
cores, with warm-up calls and medians over interleaved repetitions
(`escort_tf.timing`):

* layers (default): `sparse_conv2d` vs `tf.nn.conv2d` (oneDNN where TF enables
  it: the benchmark scripts set TF_ENABLE_ONEDNN_OPTS=1) on every layer
  of the layer table (`escort_tf.layer_table`), at batch 1 and 8, at the
  layer's SkimCaffe density and at 70% and 90% sparsity. Reports times,
  speedup (dense time / sparse time), effective GFLOPS (dense flops / time)
  and geomeans.
* `--models`: tf_keras ResNet-50 and VGG-16 (`weights=None`) pruned with TFMOT
  to SkimCaffe-like per-layer sparsity (or, with `--sparsity X`, to X in every
  layer that profile prunes), stripped, then dense vs `escort_tf.convert`
  (optionally `--autotune`, `--fold-batch-norm`): a `tf.function` model call
  at batch 1 and 8, and batched `model.predict`. Outputs are checked to match.

    TF_USE_LEGACY_KERAS=1 escort-tf bench --quick
    TF_USE_LEGACY_KERAS=1 escort-tf bench --models --sparsity 0.7 --autotune --json m70.json

Markdown reports and plots of these results are written by the benchmark
harness of the source tree, `benchmarks/harness.py` (the scripts in
`benchmarks/cpu/` run it). The functions the modes are built from
(`bench_layers`, `bench_models`, `prune_like_skimcaffe`, ...) are public so
examples, tests and the harness can reuse them.
"""

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import pathlib
import platform
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

import escort_tf
from escort_tf import fold
from escort_tf import layer_table
from escort_tf.convert import is_pruning_wrapper
from escort_tf.csr import CsrFilter
from escort_tf.ops import sparse_conv2d
from escort_tf.timing import time_side_by_side

# Sparse and dense outputs must agree to this, relative to the output's scale
# (random-weight networks produce outputs far from 1 in magnitude).
RTOL = 1e-4
ATOL = 1e-4

SKIMCAFFE = "skimcaffe"  # the density label for a layer's own pruned density


# ----------------------------------------------------------------------------
# Environment and timing
# ----------------------------------------------------------------------------

def onednn_enabled() -> bool:
    """Whether TF's CPU ops run through oneDNN in this process.

    TF 2.21 turns oneDNN on by default only on CPUs with AVX-512 VNNI/BF16 or
    AMX; elsewhere `tf.nn.conv2d` runs Eigen's kernel, a slower peer, unless
    TF_ENABLE_ONEDNN_OPTS=1 was set before TensorFlow was imported.
    """
    try:
        # pylint: disable-next=import-outside-toplevel
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TF without the query: not known to be on
        return False


def dense_peer(machine: Dict[str, object]) -> str:
    """How reports name the kernel behind `tf.nn.conv2d` on `machine` (a
    `machine_info()`; reports from before its "onednn" field ran oneDNN)."""
    return "oneDNN" if machine.get("onednn", True) else "Eigen, oneDNN off"


def machine_info() -> Dict[str, object]:
    """What the numbers were measured on: CPU, cores, versions, date (UTC)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            fields = [line.split(":", 1) for line in f if ":" in line]
        names = [value.strip() for key, value in fields if key.strip() == "model name"]
        cpu = names[0] if names else cpu
        flags = next((set(value.split()) for key, value in fields if key.strip() == "flags"), set())
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "simd": [f for f in ("sse4_2", "avx2", "fma", "avx512f", "avx512_bf16") if f in flags],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or usable,
        "onednn": onednn_enabled(),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "escort_tf": escort_tf.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def geomean(values: Sequence[float]) -> float:
    """Geometric mean of positive numbers (NaN for an empty sequence)."""
    values = list(values)
    if not values:
        return float("nan")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _outputs_match(sparse: np.ndarray, dense: np.ndarray) -> Dict[str, object]:
    """Compares outputs with `RTOL`/`ATOL` scaled by the dense output's magnitude."""
    scale = max(1.0, float(np.max(np.abs(dense)))) if dense.size else 1.0
    err = float(np.max(np.abs(sparse - dense))) if dense.size else 0.0
    ok = bool(sparse.shape == dense.shape
              and np.allclose(sparse, dense, rtol=RTOL, atol=ATOL * scale))
    return {"max_abs_err": err, "output_scale": scale, "match": ok}


# ----------------------------------------------------------------------------
# Layer mode
# ----------------------------------------------------------------------------

def load_layer_table(path: Optional[str] = None):
    """The layer table: the packaged `escort_tf.layer_table`, or a table file of the same form.

    Args:
        path: a Python file defining `LAYERS` (and `UNIFORM_DENSITIES`, and
            `ConvLayer`) like `escort_tf/layer_table.py`; None for the packaged table.

    Returns:
        The module.

    Raises:
        FileNotFoundError: no file at `path`.
    """
    if path is None:
        return layer_table
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"layer table {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location("escort_benchmark_layers", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolves annotations through sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def random_sparse_kernel(shape: Sequence[int], density: float,
                         rng: np.random.Generator) -> np.ndarray:
    """A float32 HWIO kernel with exactly `round(density * size)` nonzeros.

    Nonzeros sit at uniformly random positions; their scale keeps conv outputs
    of unit-variance inputs near unit variance, so the match check is tight.
    """
    size = int(np.prod(shape))
    nnz = int(round(density * size))
    kernel = np.zeros(size, np.float32)
    per_output = max(1.0, nnz / shape[-1])
    kernel[rng.choice(size, nnz, replace=False)] = (
        rng.standard_normal(nnz) / math.sqrt(per_output)).astype(np.float32)
    return kernel.reshape(shape)


def _serialized(conv: Callable[[tf.Tensor], tf.Tensor]):
    """A `tf.function` applying `conv` to each of a list of inputs, in order.

    The control dependencies stop TF from running the convolutions side by
    side (both variants would then compete for the same cores).
    """
    def run(inputs):
        outputs = []
        for x in inputs:
            with tf.control_dependencies(outputs[-1:]):
                outputs.append(conv(x))
        return outputs
    return tf.function(run)


def bench_layer(layer, density: float, batch: int, reps: int, warmup: int,
                rng: np.random.Generator, budget_s: Optional[float] = None,
                ops_per_call: int = 1) -> Dict[str, object]:
    """Times `sparse_conv2d` vs `tf.nn.conv2d` on one layer of the table.

    Both run without bias or activation (the same work), NHWC float32, as
    graphs (`tf.function`) so per-op Python overhead is the same for both.
    Each timed call runs the layer on `ops_per_call` different inputs, one
    after the other, and the time per convolution is reported: a model graph
    pays TF's fixed cost of a `tf.function` call once, not once per layer,
    and on small layers that cost would otherwise hide the convolution.

    Returns:
        One result row: geometry, nnz, times, speedup, GFLOPS, match check.
    """
    shape = (layer.kernel, layer.kernel, layer.in_channels, layer.out_channels)
    kernel = random_sparse_kernel(shape, density, rng)
    csr = CsrFilter.from_dense(kernel)
    xs = [tf.constant(rng.standard_normal(
        (batch, layer.height, layer.width, layer.in_channels)).astype(np.float32))
          for _ in range(ops_per_call)]
    (top, bottom), (left, right) = layer.explicit_padding()
    dense_padding = [[0, 0], [top, bottom], [left, right], [0, 0]]
    dense_kernel = tf.constant(kernel)

    sparse_fn = _serialized(lambda t: sparse_conv2d(
        t, csr, strides=layer.stride, padding=layer.explicit_padding()))
    dense_fn = _serialized(lambda t: tf.nn.conv2d(
        t, dense_kernel, strides=layer.stride, padding=dense_padding))

    check = _outputs_match(np.stack([y.numpy() for y in sparse_fn(xs)]),
                           np.stack([y.numpy() for y in dense_fn(xs)]))
    times = time_side_by_side({"sparse": lambda: sparse_fn(xs), "dense": lambda: dense_fn(xs)},
                              reps=reps, warmup=warmup, budget_s=budget_s)
    flops = layer.dense_flops(batch)
    sparse_ms = times["sparse"]["median_ms"] / ops_per_call
    dense_ms = times["dense"]["median_ms"] / ops_per_call
    return {
        "layer": layer.name,
        "batch": batch,
        "density": density,
        "sparsity": 1.0 - csr.density,
        "nnz": csr.nnz,
        "input_shape": [batch, layer.height, layer.width, layer.in_channels],
        "filter_shape": list(shape),
        "stride": layer.stride,
        "padding": layer.padding,
        "dense_gflop": flops / 1e9,
        "sparse_ms": sparse_ms,
        "dense_ms": dense_ms,
        "sparse_min_ms": times["sparse"]["min_ms"] / ops_per_call,
        "dense_min_ms": times["dense"]["min_ms"] / ops_per_call,
        "ops_per_call": ops_per_call,
        "speedup": dense_ms / sparse_ms,
        "sparse_effective_gflops": flops / sparse_ms / 1e6,
        "dense_gflops": flops / dense_ms / 1e6,
        # Flops on the stored weights only: what the kernel really executes.
        "sparse_useful_gflops": flops * csr.density / sparse_ms / 1e6,
        "reps": times["sparse"]["reps"],
        **check,
    }


def bench_layers(layers, densities: Sequence, batches: Sequence[int], reps: int,
                 warmup: int = 2, seed: int = 0, budget_s: Optional[float] = None,
                 progress: Callable[[str], None] = print,
                 ops_per_call: int = 1) -> Dict[str, object]:
    """Runs `bench_layer` over layers x densities x batches.

    Args:
        layers: `ConvLayer`s from the table.
        densities: each `"skimcaffe"` (the layer's own density) or a float.
        batches: batch sizes.
        reps: timed repetitions per variant.
        warmup: untimed calls per variant.
        seed: seeds weights and inputs.
        budget_s: per-measurement time budget (see `time_side_by_side`).
        progress: called with one line per measurement.
        ops_per_call: convolutions per timed call (see `bench_layer`).

    Returns:
        {"machine", "settings", "results": [rows], "geomeans": {label: {batch: x}}}.
    """
    rng = np.random.default_rng(seed)
    results = []
    total = len(layers) * len(densities) * len(batches)
    for layer in layers:
        for label in densities:
            density = layer.skimcaffe_density if label == SKIMCAFFE else float(label)
            for batch in batches:
                row = bench_layer(layer, density, batch, reps, warmup, rng, budget_s,
                                  ops_per_call)
                row["density_label"] = _density_label(label)
                results.append(row)
                progress(f"[{len(results)}/{total}] {layer.name:18s} density {density:5.3f} "
                         f"batch {batch}: sparse {row['sparse_ms']:8.3f} ms, dense "
                         f"{row['dense_ms']:8.3f} ms, speedup {row['speedup']:5.2f}x"
                         + ("" if row["match"] else "  OUTPUT MISMATCH"))
    geomeans = {}
    for label in densities:
        key = _density_label(label)
        geomeans[key] = {str(b): geomean(r["speedup"] for r in results
                                         if r["density_label"] == key and r["batch"] == b)
                         for b in batches}
    machine = machine_info()
    return {
        "machine": machine,
        "settings": {"mode": "layers", "reps": reps, "budget_s": budget_s, "warmup": warmup,
                     "ops_per_call": ops_per_call,
                     "seed": seed, "batches": list(batches),
                     "densities": [_density_label(d) for d in densities],
                     "dtype": "float32", "data_format": "NHWC",
                     "sparse": "escort_tf.sparse_conv2d in tf.function",
                     "dense": f"tf.nn.conv2d ({dense_peer(machine)}) in tf.function",
                     "speedup": "dense_ms / sparse_ms (median times)",
                     "effective_gflops": "dense flops / time",
                     "useful_gflops": "nonzero-weight flops / time"},
        "results": results,
        "geomeans": geomeans,
    }


def _density_label(label) -> str:
    return SKIMCAFFE if label == SKIMCAFFE else f"{float(label):.2f}"


def density_title(key: str) -> str:
    """How reports name a density label: "SkimCaffe density" or "70% sparse"."""
    if key == SKIMCAFFE:
        return "SkimCaffe density"
    return f"{100 * (1 - float(key)):.0f}% sparse"


# ----------------------------------------------------------------------------
# Model mode
# ----------------------------------------------------------------------------

# SkimCaffe's pruned ResNet-50 keeps 3x3 (branch2b) layers 81-88 / 91-95.5 /
# 96.6-97.5 / 97.8-98% sparse in res2..res5; 1x1 and shortcut layers are pruned
# less here, the 7x7 stem (3 input channels) not at all.
RESNET50_3X3 = {2: 0.85, 3: 0.93, 4: 0.97, 5: 0.98}
RESNET50_1X1 = {2: 0.70, 3: 0.80, 4: 0.85, 5: 0.85}
# VGG-16 convs ~90% sparse; conv1_1 has 3 input channels, so only half.
VGG16_SPARSITY = 0.90
VGG16_FIRST = 0.50


def resnet50_sparsity(layer) -> float:
    """SkimCaffe-like sparsity for a tf_keras ResNet50 layer (0.0: leave dense).

    Names look like `conv3_block2_2_conv`: stage 3, `_2_` is the 3x3 conv.
    """
    name = layer.name
    if not isinstance(layer, tf_keras.layers.Conv2D) or not name.startswith(("conv2_", "conv3_",
                                                                             "conv4_", "conv5_")):
        return 0.0
    stage = int(name[4])
    return RESNET50_3X3[stage] if layer.kernel_size == (3, 3) else RESNET50_1X1[stage]


def vgg16_sparsity(layer) -> float:
    """SkimCaffe-like sparsity for a tf_keras VGG16 layer (0.0: leave dense)."""
    if not isinstance(layer, tf_keras.layers.Conv2D):
        return 0.0
    return VGG16_FIRST if layer.name == "block1_conv1" else VGG16_SPARSITY


def uniform_sparsity_of(sparsity_of: Callable[[object], float],
                        sparsity: float) -> Callable[[object], float]:
    """A per-layer profile pruning the layers `sparsity_of` prunes, all to `sparsity`.

    Keeps the profile's choice of layers (e.g. ResNet-50's 3-channel stem and
    the classifier stay dense) and only replaces its levels, so a uniform run
    differs from the SkimCaffe-like one in sparsity alone.

    Args:
        sparsity_of: layer -> sparsity, e.g. `resnet50_sparsity`.
        sparsity: the fraction of zero weights for every pruned layer, in (0, 1).

    Returns:
        layer -> `sparsity` where `sparsity_of(layer) > 0`, else 0.0.

    Raises:
        ValueError: `sparsity` is not in (0, 1).

    Example:

        pruned, _ = prune_like_skimcaffe(model, uniform_sparsity_of(resnet50_sparsity, 0.7))
    """
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"uniform sparsity must be in (0, 1), got {sparsity!r}")
    return lambda layer: sparsity if sparsity_of(layer) > 0.0 else 0.0


def _resnet50(image_size):
    return tf_keras.applications.ResNet50(weights=None, input_shape=(image_size, image_size, 3),
                                          classifier_activation=None)


def _vgg16(image_size):
    return tf_keras.applications.VGG16(weights=None, input_shape=(image_size, image_size, 3),
                                       classifier_activation=None)


# name -> (builder(image_size), per-layer sparsity); classifier_activation=None
# so outputs are logits, which the match check compares meaningfully.
MODELS = {
    "resnet50": (_resnet50, resnet50_sparsity),
    "vgg16": (_vgg16, vgg16_sparsity),
}


def wrap_for_pruning(model, schedule_of: Callable[[object], object]):
    """Wraps chosen layers of `model` in TFMOT `prune_low_magnitude`, keeping weights.

    Args:
        model: a built functional or Sequential tf_keras model (not modified).
        schedule_of: layer -> a TFMOT `PruningSchedule`, or None to leave the
            layer unwrapped.

    Returns:
        The pruning-wrapped copy, holding `model`'s weights; train it with the
        `tfmot.sparsity.keras.UpdatePruningStep()` callback.

    Example:

        schedule = tfmot.sparsity.keras.ConstantSparsity(0.9, begin_step=0)
        wrapped = wrap_for_pruning(
            model, lambda l: schedule if isinstance(l, tf_keras.layers.Conv2D) else None)
    """
    import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        schedule = schedule_of(layer)
        if schedule is None:
            return copy
        return tfmot.sparsity.keras.prune_low_magnitude(copy, pruning_schedule=schedule)

    wrapped = tf_keras.models.clone_model(model, clone_function=clone)
    originals = {layer.name: layer for layer in model.layers}
    for layer in wrapped.layers:
        # A wrapper adds mask variables of its own: copy into the layer inside.
        inner = layer.layer if is_pruning_wrapper(layer) else layer
        inner.set_weights(originals[inner.name].get_weights())
    return wrapped


def prune_like_skimcaffe(model, sparsity_of: Callable[[object], float]):
    """Prunes `model` with TFMOT to a per-layer sparsity and strips the wrappers.

    Each layer with `sparsity_of(layer) > 0` is wrapped by
    `prune_low_magnitude` with `ConstantSparsity(sparsity, begin_step=0,
    frequency=1)`; then TFMOT's own magnitude mask update runs once per
    wrapper (what the first training step with `UpdatePruningStep` does,
    without the training), the masks are applied to the kernels, and
    `strip_pruning` removes the wrappers.

    Args:
        model: a built functional or Sequential tf_keras model (not modified).
        sparsity_of: layer -> target fraction of zero weights (0.0: not pruned).

    Returns:
        `(stripped_model, sparsities)`: the pruned tf_keras model with plain
        layers, and layer name -> measured sparsity of each pruned kernel.

    Example:

        model = tf_keras.applications.ResNet50(weights=None)
        pruned, sparsities = prune_like_skimcaffe(model, resnet50_sparsity)
    """
    import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel

    def schedule_of(layer):
        level = sparsity_of(layer)
        if level <= 0.0:
            return None
        return tfmot.sparsity.keras.ConstantSparsity(level, begin_step=0, frequency=1)

    wrapped = wrap_for_pruning(model, schedule_of)
    measured = {}
    for wrapper in wrapped.layers:
        if not is_pruning_wrapper(wrapper):
            continue
        # UpdatePruningStep sets the step to 0 before the first batch; at step
        # 0 the schedule says "prune now", and the update computes the masks.
        wrapper.pruning_step.assign(0)
        wrapper.pruning_obj.conditional_mask_update()
        wrapper.pruning_obj.weight_mask_op()  # kernel := kernel * mask
        kernel = wrapper.layer.kernel.numpy()
        measured[wrapper.layer.name] = float(np.mean(kernel == 0))
    return tfmot.sparsity.keras.strip_pruning(wrapped), measured


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
        checks = {kind: _outputs_match(calls_of[kind](x).numpy(), expected) for kind in others}
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
    """Builds model `name` of `MODELS`, prunes it (SkimCaffe-like or uniformly), converts it.

    Args:
        name: a key of `MODELS`.
        image_size: input height and width.
        min_sparsity: passed to `escort_tf.convert`.
        autotune: passed to `escort_tf.convert`.
        progress: called with one line per step.
        uniform_sparsity: if set, prune every layer the model's profile
            prunes to this sparsity instead (see `uniform_sparsity_of`).

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
    build, sparsity_of = MODELS[name]
    if uniform_sparsity is not None:
        sparsity_of = uniform_sparsity_of(sparsity_of, uniform_sparsity)
    start = time.perf_counter()
    dense, sparsities = prune_like_skimcaffe(build(image_size), sparsity_of)
    prune_s = time.perf_counter() - start
    progress(f"{name}: pruned {len(sparsities)} conv layers with TFMOT in {prune_s:.1f} s")
    start = time.perf_counter()
    sparse, report = escort_tf.convert(dense, min_sparsity=min_sparsity, autotune=autotune,
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
        tuned = (f" (autotune kept {info['autotune_sparse']} sparse, "
                 f"{info['autotune_dense']} dense)")
    progress(f"{name}: converted {len(converted)} layers in {convert_s:.1f} s{tuned}")
    return dense, sparse, info


def bench_models(names: Sequence[str], image_size: int, batches: Sequence[int], reps: int,
                 predict_images: int, predict_batch: int, predict_reps: int,
                 autotune: bool = False, seed: int = 0,
                 progress: Callable[[str], None] = print,
                 uniform_sparsity: Optional[float] = None,
                 fold_batch_norm: bool = False) -> Dict[str, object]:
    """Prunes, converts and times each model in `names` (keys of `MODELS`).

    Args:
        names: keys of `MODELS`.
        image_size: input height and width.
        batches: batch sizes of the model-call timing.
        reps: timed repetitions of each model call.
        predict_images, predict_batch, predict_reps: the predict timing.
        autotune: convert with `autotune=True`.
        seed: seeds the inputs.
        progress: called with one line per step and measurement.
        uniform_sparsity: if set, the pruned layers get this sparsity instead
            of the SkimCaffe-like profile (see `uniform_sparsity_of`).
        fold_batch_norm: also time the converted model with its batch norms
            and ReLUs folded (`escort_tf.convert(..., fold_batch_norm=True)`),
            as "sparse_folded", and the dense model with the same folding, as
            "dense_folded", so the gain of folding is told apart from the
            sparse kernels'.

    Returns:
        {"machine", "settings", "models": [{model info..., "calls", "predict"}]}.

    Raises:
        ValueError: `uniform_sparsity` is not in (0, 1).
    """
    if uniform_sparsity is None:
        profile = {"sparsity_profile": "skimcaffe",
                   "resnet50_sparsity": {"3x3": RESNET50_3X3, "1x1": RESNET50_1X1,
                                         "conv1": 0.0},
                   "vgg16_sparsity": {"block1_conv1": VGG16_FIRST, "other convs":
                                      VGG16_SPARSITY, "dense layers": 0.0}}
    else:
        profile = {"sparsity_profile": "uniform",
                   "pruned_layers": "those the SkimCaffe-like profile prunes (ResNet-50: "
                                    "all convs but conv1; VGG-16: all convs), each to "
                                    "uniform_sparsity"}
    models = []
    for name in names:
        dense, sparse, info = prune_and_convert(name, image_size, autotune=autotune,
                                                progress=progress,
                                                uniform_sparsity=uniform_sparsity)
        variants = None
        if fold_batch_norm:
            sparse_folded, removed = fold.fold_batch_norm(sparse)
            variants = {"sparse_folded": sparse_folded,
                        "dense_folded": fold.fold_batch_norm(dense)[0]}
            info["folded_layers"] = sum(len(names) for names in removed.values())
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
                     **profile},
        "models": models,
    }


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def build_parser(prog: str = "escort-tf bench") -> argparse.ArgumentParser:
    """The options of `escort-tf bench`; `benchmarks/harness.py` adds its report options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark escort_tf's sparse convolution against dense TensorFlow on "
                    "this machine: the layer table (default) or whole pruned models (--models).")
    parser.add_argument("--models", nargs="?", const="resnet50,vgg16", default=None,
                        metavar="NAMES",
                        help="whole-model mode; comma-separated subset of "
                             f"{','.join(MODELS)} (default: all)")
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
    table = load_layer_table(args.layer_table)
    layers = table.LAYERS
    if args.layers:
        known = {layer.name: layer for layer in layers}
        unknown = [n for n in _csv(args.layers) if n not in known]
        if unknown:
            raise SystemExit(f"escort-tf bench: unknown layer(s) {unknown}; the table has "
                             f"{sorted(known)}")
        layers = [known[n] for n in _csv(args.layers)]
    if args.densities:
        densities = [SKIMCAFFE if d == SKIMCAFFE else float(d) for d in _csv(args.densities)]
        if any(d != SKIMCAFFE and not 0.0 < d <= 1.0 for d in densities):
            raise SystemExit("escort-tf bench: densities must be in (0, 1] or 'skimcaffe'")
    else:
        densities = [SKIMCAFFE, *table.UNIFORM_DENSITIES]
    reps = args.reps or (3 if args.quick else 7)
    budget = args.budget if args.budget is not None else (5.0 if args.quick else 20.0)
    if args.ops_per_call < 1:
        raise SystemExit("escort-tf bench: --ops-per-call must be at least 1")
    report = bench_layers(layers, densities, batches, reps, warmup=args.warmup, seed=args.seed,
                          budget_s=budget, ops_per_call=args.ops_per_call)
    for key, by_batch in report["geomeans"].items():
        print(f"geomean speedup, {density_title(key)}: " +
              ", ".join(f"batch {b} {v:.2f}x" for b, v in by_batch.items()))
    return report


def _run_models(args, batches):
    names = _csv(args.models)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"escort-tf bench: unknown model(s) {unknown}; choose from {list(MODELS)}")
    # `not 0 < x < 1` also rejects NaN.
    if args.sparsity is not None and not 0.0 < args.sparsity < 1.0:
        raise SystemExit(f"escort-tf bench: --sparsity must be in (0, 1), got {args.sparsity}")
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        raise SystemExit("escort-tf bench --models prunes with TFMOT, which needs tf_keras: "
                         "set TF_USE_LEGACY_KERAS=1 before starting Python")
    reps = args.reps or (2 if args.quick else 3)
    report = bench_models(names, args.image_size, batches, reps,
                          predict_images=args.predict_images or (16 if args.quick else 32),
                          predict_batch=args.predict_batch,
                          predict_reps=args.reps or (3 if args.quick else 5),
                          autotune=args.autotune, seed=args.seed,
                          uniform_sparsity=args.sparsity,
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
