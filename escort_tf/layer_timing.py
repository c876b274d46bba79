"""Layer mode of `escort-tf bench`: `sparse_conv2d` vs `tf.nn.conv2d` on the layer table.

Every layer of the table (`escort_tf.layer_table`, or a file of the same form)
runs without bias or activation, NHWC float32, in `tf.function`s, sparse and
dense side by side (`escort_tf.timing`), at the layer's SkimCaffe density and
at uniform densities with random weights; outputs are compared.

Example:

    table = load_layer_table()
    report = bench_layers(table.LAYERS, [SKIMCAFFE, 0.3], batches=[1, 8], reps=7)
    report["geomeans"]["skimcaffe"]["1"]
"""

import importlib.util
import math
import pathlib
import sys
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from escort_tf import layer_table
from escort_tf.csr import CsrFilter
from escort_tf.measurement import dense_peer, geomean, machine_info, outputs_match
from escort_tf.ops import sparse_conv2d
from escort_tf.timing import time_side_by_side

SKIMCAFFE = "skimcaffe"  # the density label for a layer's own pruned density


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

    check = outputs_match(np.stack([y.numpy() for y in sparse_fn(xs)]),
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
    """How results key a density: "skimcaffe", or the float as "0.30"."""
    return SKIMCAFFE if label == SKIMCAFFE else f"{float(label):.2f}"


def density_title(key: str) -> str:
    """How reports name a density label: "SkimCaffe density" or "70% sparse"."""
    if key == SKIMCAFFE:
        return "SkimCaffe density"
    return f"{100 * (1 - float(key)):.0f}% sparse"
