"""`convert` and `convert_checkpoint`: TFMOT-pruned tf_keras models onto the sparse op.

The model is rebuilt with `tf_keras.models.clone_model(clone_function=...)`:
each `Conv2D` (bare or inside a TFMOT `PruneLowMagnitude` wrapper) whose
kernel, times its pruning mask, is at least `min_sparsity` zeros becomes a
`SparseConv2D`, and so does one that can run on the GPU's 2:4 sparse tensor
cores (`convert`'s docstring has the rule); every other layer is cloned dense
with its (masked) weights, and pruning wrappers are stripped. Unsupported
layers are kept dense with the reason logged on the "escort_tf" logger and
recorded in a `ConversionReport`. With `fold_batch_norm=True` batch norms and
ReLUs are then folded into the convolutions before them (`escort_tf.fold`).

Example:

    import escort_tf
    sparse_model, report = escort_tf.convert(pruned_model, min_sparsity=0.7,
                                             return_report=True)
    print(report)   # one row per layer with a kernel: shape, sparsity, decision, why
    sparse_model.predict(x)
"""

import dataclasses
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from escort_tf.csr import TENSOR_CORE_CHANNELS, CsrFilter
from escort_tf.fold import rebuild as _rebuild
from escort_tf.layers import SparseConv2D, unsupported_reason
from escort_tf.timing import time_side_by_side, wait_for

logger = logging.getLogger("escort_tf")

_KERAS3_MESSAGE = (
    "escort_tf.convert needs a tf_keras (Keras 2) model, but got a Keras 3 model ({cls}). "
    "TFMOT pruning and escort_tf only work with tf_keras: build the model with "
    "`import tf_keras`, or set the environment variable TF_USE_LEGACY_KERAS=1 before "
    "TensorFlow is first imported so that `tf.keras` is tf_keras.{env}")


# Autotune's timed samples per variant and layer (fewer when the budget runs
# out), each at least this long (a fast call is repeated within a sample). On
# an H100, ResNet-50 at batch 32, 10 samples of 5 ms made timing 9-10 s of a
# 24-30 s autotune; 5 of 2 ms took 5 s and picked the same layers and model.
# The whole-model check that follows catches what a short per-layer timing misjudges.
_AUTOTUNE_REPS = 5
_AUTOTUNE_MIN_SAMPLE_S = 0.002
# The whole-model check's samples per candidate: three timings decide the
# result, so they get the default sample length and more samples.
_WHOLE_MODEL_REPS = 10
# ... and fewer still (at least 3) once one variant's every sample beats every
# other's by this margin: most layers are clear cuts, and the remaining
# samples would only refine by how much.
_AUTOTUNE_DECISIVE_RATIO = 1.25
# The whole-model check keeps a model with sparse layers only when it beats
# the all-dense one by this factor: timings of the same model differ by a few
# percent from one process to the next (VGG-16 at batch 1 on an H100: the
# rule's conversion 1.31 ms vs dense 1.35 ms in the check, 1.63 vs 1.57 ms in
# the benchmark that followed), and autotune promises never to be slower.
_SPARSE_OVER_DENSE_MARGIN = 1.05

# Compute dtypes the 2:4 tensor-core kernel takes.
_TENSOR_CORE_DTYPES = (tf.float16, tf.bfloat16)


def is_pruning_wrapper(layer) -> bool:
    """Whether `layer` is the wrapper `tfmot.sparsity.keras.prune_low_magnitude` puts on a layer.

    TFMOT's public API exports no class for the wrapper (its own
    `strip_pruning` tests this private one), so this is the one place that
    imports it; `tests/test_convert.py` checks it still is the wrapper.
    """
    # pylint: disable-next=import-outside-toplevel
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
    return isinstance(layer, pruning_wrapper.PruneLowMagnitude)


@dataclasses.dataclass
class LayerReport:
    """What `convert` did with one layer.

    Attributes:
        name: the layer's name in the converted model.
        layer_type: class name of the (unwrapped) layer, e.g. "Conv2D".
        kernel_shape: the kernel's shape, or None (e.g. a nested model).
        sparsity: fraction of zero weights in `kernel * mask`, or None.
        decision: "sparse" (now a `SparseConv2D`) or "dense".
        reason: why, in words.
        structure: "2:4" if `kernel * mask` is 2:4 along the input channels
            (`CsrFilter.is_2_4`), else None; only set for a `Conv2D` that the
            op supports.
        engine: for a sparse layer, its GPU kernel: "tensor_cores_2_4" (the
            `SparseConv2D` gets engine "auto", which takes the sparse tensor
            cores where the GPU has them and the CSR kernel elsewhere) or
            "cuda_cores" (the CSR kernel); None for a dense layer. Autotune on
            a GPU sets the fastest variant that ran there. The CPU runs its one
            kernel whatever this says.
        sparse_ms: autotune's median time of the sparse layer on CUDA cores
            (on a CPU: the CPU kernel), if measured.
        tensor_cores_ms: autotune's median time of the sparse layer on 2:4
            tensor cores, if measured.
        dense_ms: autotune's median time of the dense layer, if measured.
        folded: names of the layers `fold_batch_norm=True` folded into this
            one (a BatchNormalization, a ReLU), in order.
    """

    name: str
    layer_type: str
    kernel_shape: Optional[Tuple[int, ...]]
    sparsity: Optional[float]
    decision: str
    reason: str
    structure: Optional[str] = None
    engine: Optional[str] = None
    sparse_ms: Optional[float] = None
    tensor_cores_ms: Optional[float] = None
    dense_ms: Optional[float] = None
    folded: Tuple[str, ...] = ()


@dataclasses.dataclass
class ConversionReport:
    """The per-layer decisions of one `convert` call; `str()` gives a table.

    Example:

        _, report = escort_tf.convert(model, return_report=True)
        report["conv2d"].decision      # -> "sparse"
        [r.name for r in report if r.decision == "dense"]

    Attributes:
        rows: a `LayerReport` per layer with a kernel, and per nested model.
        model_ms: autotune's whole-model check (`convert`'s
            `autotune_whole_model`): candidate ("per_layer", "rule",
            "dense") -> median time of a model call in ms; None if it did not run.
        model_choice: the candidate kept, or None.
        model_note: what the check did, in words ("" if nothing); `str()`
            prints it under the table.
    """

    rows: List[LayerReport]
    model_ms: Optional[Dict[str, float]] = None
    model_choice: Optional[str] = None
    model_note: str = ""

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, name):
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r} in the report; have {[r.name for r in self.rows]}")

    def __str__(self):
        def cell(value, fmt=""):
            return "-" if value is None else format(value, fmt)

        header = ("layer", "type", "kernel shape", "sparsity", "structure", "decision",
                  "engine", "sparse ms", "2:4 ms", "dense ms", "reason")
        lines = [header] + [
            (r.name, r.layer_type, cell(r.kernel_shape and "x".join(map(str, r.kernel_shape))),
             cell(r.sparsity, ".1%"), cell(r.structure), r.decision, cell(r.engine),
             cell(r.sparse_ms, ".3f"), cell(r.tensor_cores_ms, ".3f"), cell(r.dense_ms, ".3f"),
             r.reason)
            for r in self.rows]
        # Columns with nothing to show (no 2:4 layer, no autotune timings) are left out.
        shown = [i for i in range(len(header)) if i == len(header) - 1 or not self.rows
                 or any(line[i] != "-" for line in lines[1:])]
        lines = [[line[i] for i in shown] for line in lines]
        widths = [max(len(line[i]) for line in lines) for i in range(len(shown) - 1)]
        table = "\n".join(
            "  ".join(col.ljust(w) for col, w in zip(line, widths)) + "  " + line[-1]
            for line in lines)
        return table + (f"\n{self.model_note}" if self.model_note else "")


@dataclasses.dataclass
class _Plan:
    """One original layer: what to clone it into."""

    inner: tf_keras.layers.Layer           # the layer without its pruning wrapper
    weights: List[np.ndarray]              # inner's weights, pruned ones times their mask
    row: Optional[LayerReport] = None      # for layers with a kernel and nested models
    kernel: Optional[np.ndarray] = None    # the masked kernel, for layers with one
    input_shape: Optional[tf.TensorShape] = None  # set for sparse candidates
    csr: Optional[CsrFilter] = None        # the masked kernel's, for supported convs


def _check_model(model):
    if isinstance(model, tf_keras.Model):
        if not (isinstance(model, tf_keras.Sequential) or model._is_graph_network):
            raise ValueError(
                f"escort_tf.convert supports Sequential and functional tf_keras models; "
                f"{type(model).__name__} is a subclassed model, which clone_model can't rebuild.")
        if not model.built:
            raise ValueError("The model is not built: give it an `Input` or call it on data "
                             "first, so its layers have weights to convert.")
        return
    if any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__):
        # Not os.environ: importing tfmot sets TF_USE_LEGACY_KERAS itself, too late for tf.keras.
        keras3 = getattr(tf.keras, "version", lambda: "")().startswith("3.")
        env = (" In this process `tf.keras` is Keras 3: TF_USE_LEGACY_KERAS=1 was not set "
               "before TensorFlow was imported." if keras3 else "")
        raise TypeError(_KERAS3_MESSAGE.format(cls=type(model).__name__, env=env))
    raise TypeError(f"escort_tf.convert expects a tf_keras Model, got {type(model).__name__}.")


def _unwrap(layer):
    """Returns `(inner_layer, weights)` with pruned weights multiplied by their masks.

    TFMOT only writes `kernel * mask` back into the kernel during training steps,
    so a restored or saved kernel may still hold pruned values: always apply the mask.
    """
    if not is_pruning_wrapper(layer):
        return layer, layer.get_weights()
    masks = {weight.ref(): mask for weight, mask, _ in layer.pruning_vars}
    inner = layer.layer
    weights = [w.numpy() * masks[w.ref()].numpy() if w.ref() in masks else w.numpy()
               for w in inner.weights]
    return inner, weights


def _layer_input_shape(layer):
    """The input shape of the layer's first call: shared layers may have several."""
    try:
        return tf.TensorShape(layer.get_input_shape_at(0))
    except (RuntimeError, ValueError, TypeError):
        return None  # never called, or called on several tensors at once


def _tensor_core_obstacles(inner, csr):
    """What keeps a supported `Conv2D` with a 2:4 filter off the tensor cores, in words."""
    obstacles = []
    if tf.as_dtype(inner.compute_dtype) not in _TENSOR_CORE_DTYPES:
        obstacles.append(f"a float16/bfloat16 compute dtype (a mixed_float16 or mixed_bfloat16 "
                         f"policy), not {inner.compute_dtype}")
    if not csr.tensor_core_eligible:  # the filter is 2:4: its input channels are the problem
        obstacles.append(f"input channels a multiple of {TENSOR_CORE_CHANNELS}, "
                         f"not {csr.filter_shape[2]}")
    if inner.data_format != "channels_last":
        obstacles.append(f"channels_last, not {inner.data_format}")
    return obstacles


def _plan(layer, min_sparsity):
    if isinstance(layer, tf_keras.Model):
        return _Plan(layer, [], row=LayerReport(
            layer.name, type(layer).__name__, None, None, "dense",
            "nested model: its layers are kept dense"))
    inner, weights = _unwrap(layer)
    # Depthwise and separable convs get a row too, so the table says why they stay dense.
    kernel_var = getattr(inner, "kernel", getattr(inner, "depthwise_kernel", None))
    if kernel_var is None:
        return _Plan(inner, weights)
    kernel = weights[[id(w) for w in inner.weights].index(id(kernel_var))]
    sparsity = float(np.mean(kernel == 0))
    row = LayerReport(inner.name, type(inner).__name__, tuple(kernel.shape), sparsity, "dense", "")
    plan = _Plan(inner, weights, row, kernel)
    reason = unsupported_reason(inner)
    input_shape = _layer_input_shape(layer)
    if reason is None and (input_shape is None or input_shape.rank != 4):
        reason = f"input is not a single 4-D tensor (shape {input_shape})"
    if reason is not None:
        row.reason = reason
        return plan
    csr = CsrFilter.from_dense(kernel)
    obstacles = None
    if csr.is_2_4:
        row.structure = "2:4"
        obstacles = _tensor_core_obstacles(inner, csr)
    if obstacles == []:
        # TFMOT's 2:4 kernels are 50% sparse, too little for the CSR kernel,
        # but sparse tensor cores run them at up to twice the dense rate:
        # min_sparsity, the CSR kernel's threshold, does not apply.
        row.decision, row.engine = "sparse", "tensor_cores_2_4"
        row.reason = (f"2:4 in {inner.compute_dtype}: sparse tensor cores (engine auto), "
                      f"regardless of min_sparsity")
    elif sparsity < min_sparsity:
        row.reason = f"sparsity {sparsity:.1%} < min_sparsity {min_sparsity:.1%}"
    else:
        row.decision, row.engine = "sparse", "cuda_cores"
        row.reason = f"sparsity {sparsity:.1%} >= min_sparsity {min_sparsity:.1%}"
    if obstacles:
        row.reason += "; 2:4, but tensor cores need " + " and ".join(obstacles)
    plan.csr = csr
    if row.decision == "sparse":
        plan.input_shape = input_shape
    return plan


def _from_config(layer):
    """A fresh, unbuilt copy of `layer` (what clone_model does by default)."""
    return layer.__class__.from_config(layer.get_config())


def _sparse_clone(plan, engine):
    return SparseConv2D.from_conv2d(plan.inner, engine=engine, csr_filter=plan.csr)


def _layer_engine(row):
    """The `SparseConv2D` engine that runs a sparse row's `engine` on the GPU.

    "auto" rather than "tensor_cores_2_4": it takes the tensor cores where
    they exist and falls back to the CSR kernel on older GPUs instead of failing.
    """
    return "auto" if row.engine == "tensor_cores_2_4" else "cuda_cores"


def _has_gpu():
    """Whether autotune's calls run on a GPU: on the CPU every engine is the same kernel."""
    return bool(tf.config.list_logical_devices("GPU"))


def _op_message(error):
    """The op's own message of an `OpError`, its first line.

    A failed `tf.function` call says "Graph execution error:" first, and may
    add where the node was defined; the op's message comes just before TF's
    "[[{{node ...}}]]" marker.
    """
    lines = error.message.splitlines()
    for before, line in zip(lines, lines[1:]):
        if "[[{{node" in line and before.strip():
            return before.strip()
    return lines[0] if lines else ""


def _progress(items, desc):
    """Iterates over `items` with a tqdm bar, or a line per item on stderr without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, desc=desc, unit="layer")
        return
    for i, item in enumerate(items):
        print(f"{desc}: {i + 1}/{len(items)}", file=sys.stderr, flush=True)
        yield item


def _dense_geometry(layer, x):
    """What a dense layer's time depends on: its config but its name, and its input's shape and dtype.

    Not its weights' values: a dense convolution does the same work whatever they are.
    """
    config = {key: value for key, value in layer.get_config().items() if key != "name"}
    return type(layer).__name__, repr(sorted(config.items())), tuple(x.shape), x.dtype.name


def _autotune(plans, batch_size, budget_s):
    candidates = [p for p in plans if p.row is not None and p.row.decision == "sparse"]
    on_gpu = _has_gpu()
    # Times per variant and geometry, and the layer they were timed on: a model
    # repeats geometries (ResNet-50: 53 convs, 20 geometries; VGG-16: 13 and
    # 9), and timing a repeat again would cost a trace, a first call and
    # samples to learn the same number. Dense does the same work whatever its
    # weights; so does each sparse engine for a 2:4 filter, whose every output
    # channel keeps half of its weights and whose tensor-core layout has a size
    # fixed by the geometry. Other sparse filters are timed each: their work
    # depends on where their nonzeros are.
    timed_before = {}
    for plan in _progress(candidates, "escort_tf autotune"):
        row, shape = plan.row, plan.input_shape[1:]
        if not shape.is_fully_defined():
            row.reason += f"; autotune skipped: input shape {plan.input_shape} has unknown dims"
            continue
        x = tf.random.uniform([batch_size, *shape], dtype=plan.inner.compute_dtype)
        geometry = _dense_geometry(plan.inner, x)
        engines, notes = ["cuda_cores"], []
        if row.engine == "tensor_cores_2_4":
            if on_gpu:
                engines.append("tensor_cores_2_4")
            else:
                notes.append("tensor_cores_2_4 not timed: no GPU")

        def share_key(variant):
            if variant == "dense":
                return variant, geometry
            return (variant, geometry, "2:4") if row.structure == "2:4" else None

        # Sparse variants first: on a tie, min() below keeps the sparse layer.
        variants = [*engines, "dense"]
        reused = {name: timed_before[share_key(name)] for name in variants
                  if share_key(name) in timed_before}
        # Graphs, as in a model: eager calls would time Python and op dispatch.
        calls = {engine: tf.function(_sparse_clone(plan, engine).__call__)
                 for engine in engines if engine not in reused}
        if "dense" not in reused:
            dense = _from_config(plan.inner)
            dense.build(x.shape)
            dense.set_weights(plan.weights)
            calls["dense"] = tf.function(dense.__call__)
        fns = {name: lambda call=call: call(x) for name, call in calls.items()}
        for name in list(fns):
            try:  # the first call traces; a variant this device has no kernel for fails here
                wait_for(fns[name]())
            except tf.errors.OpError as e:
                notes.append(f"{name} failed: {_op_message(e)}")
                del fns[name]
        times = None
        left = [*fns, *reused]
        if len(left) > 1 and any(name != "dense" for name in left):
            try:
                times = time_side_by_side(fns, reps=_AUTOTUNE_REPS, warmup=1, budget_s=budget_s,
                                          min_sample_s=_AUTOTUNE_MIN_SAMPLE_S,
                                          decisive_ratio=_AUTOTUNE_DECISIVE_RATIO) if fns else {}
            except tf.errors.OpError as e:
                notes.append(_op_message(e))
        if times is None:
            row.reason += f"; autotune failed, kept: {notes[-1]}"
            continue
        for name, t in times.items():
            if share_key(name) is not None:
                timed_before[share_key(name)] = (t["median_ms"], plan.inner.name)
        for name, (_, timed_on) in reused.items():
            kind = "same geometry" if name == "dense" else "same geometry, 2:4 filter"
            notes.append(f"{name} timed on {timed_on} ({kind})")
        median = {name: times[name]["median_ms"] if name in times else reused[name][0]
                  for name in variants if name in times or name in reused}
        row.sparse_ms = median.get("cuda_cores")
        row.tensor_cores_ms = median.get("tensor_cores_2_4")
        row.dense_ms = median.get("dense")
        fastest = min(median, key=median.get)
        if fastest == "dense":
            row.decision, row.engine = "dense", None
        elif on_gpu:  # on a CPU the rule's engine stands: the GPU kernels were not compared
            row.engine = fastest
        row.reason = (f"autotune at batch {batch_size}: "
                      + ", ".join(f"{name} {ms:.3f} ms" for name, ms in median.items())
                      + "".join(f"; {note}" for note in notes))


def _decisions(plans):
    """Each reported layer's `(decision, engine)`, by plan id."""
    return {id(p): (p.row.decision, p.row.engine) for p in plans if p.row is not None}


def _set_decisions(plans, decisions):
    for plan in plans:
        if plan.row is not None:
            plan.row.decision, plan.row.engine = decisions[id(plan)]


def _build(model, plans, fold_batch_norm):
    """Rebuilds `model` with each layer as its plan's row decides.

    Returns:
        `(model, removed)`: the new model, and for `fold_batch_norm` the
        layers folded into each conv (`escort_tf.fold`), else `{}`.
    """
    def clone_nested(layer):
        if isinstance(layer, tf_keras.Model):
            return tf_keras.models.clone_model(layer, clone_function=clone_nested)
        inner, weights = _unwrap(layer)
        clone = _from_config(inner)
        pending.append((clone, weights))
        return clone

    def replace(layer):
        plan = plans[id(layer)]
        if isinstance(layer, tf_keras.Model):
            nested = clone_nested(layer)
            for clone, weights in pending:
                clone.set_weights(weights)
            pending.clear()
            return nested, nested.get_weights()
        if plan.row is not None and plan.row.decision == "sparse":
            csr = plan.csr
            bias = [plan.weights[1]] if plan.inner.use_bias else []
            return (_sparse_clone(plan, _layer_engine(plan.row)),
                    [csr.row_offsets, csr.column_indices, csr.values, *bias])
        return _from_config(plan.inner), plan.weights

    pending = []  # a nested model's layers and their weights, set once it is built
    return _rebuild(model, replace, fold=fold_batch_norm)


def _model_inputs(model, batch_size):
    """Random inputs for `model` at `batch_size`, or None if an input shape is not fully known."""
    inputs = []
    for spec in model.inputs:
        shape = tf.TensorShape(spec.shape)[1:]
        if not shape.is_fully_defined():
            return None
        dtype = tf.as_dtype(spec.dtype)
        shape = [batch_size, *shape.as_list()]
        inputs.append(tf.random.normal(shape, dtype=dtype) if dtype.is_floating
                      else tf.zeros(shape, dtype))
    return inputs if len(inputs) > 1 else inputs[0]


def pick_whole_model(model_ms):
    """The whole-model check's choice among its candidates' median times.

    The fastest, except that a candidate with sparse layers must beat "dense"
    (when that was timed) by `_SPARSE_OVER_DENSE_MARGIN`. Ties keep the
    earlier candidate: "per_layer" comes first.

    Args:
        model_ms: candidate name -> median model call in ms, in timing order.

    Returns:
        The name of the candidate to keep.
    """
    def cost(name):
        return model_ms[name] * (1.0 if name == "dense" else _SPARSE_OVER_DENSE_MARGIN)
    return min(model_ms, key=cost if "dense" in model_ms else model_ms.get)


def _whole_model_check(model, plans, rule, tuned_model, fold_batch_norm, batch_size, budget_s):
    """Times the whole model as autotuned, as the rule converts it, and all dense; keeps one.

    Each layer timed alone misjudges what it costs inside the model (its
    input comes from another kernel, cuDNN picks differently, launches
    overlap), so a model of per-layer winners can lose to dense or to
    the rule's conversion. `pick_whole_model` chooses.

    Args:
        model: the model given to `convert`.
        plans: id -> `_Plan`, whose rows hold autotune's per-layer decisions.
        rule: `_decisions(plans)` before autotune.
        tuned_model: `(model, removed)` built from the per-layer decisions.
        fold_batch_norm: as in `convert`.
        batch_size: the batch size to time at.
        budget_s: time budget per candidate for the timed calls.

    Returns:
        `(model, removed, model_ms, choice, note)`; the plans' rows then hold
        the kept candidate's decisions.
    """
    x = _model_inputs(model, batch_size)
    if x is None:
        return (*tuned_model, None, None,
                "whole-model check skipped: the model's input shape is not fully known")
    tuned = _decisions(plans.values())
    dense = {key: ("dense", None) for key in tuned}
    candidates = {"per_layer": tuned}
    for name, decisions in (("rule", rule), ("dense", dense)):
        if decisions not in candidates.values():
            candidates[name] = decisions
    if len(candidates) == 1:
        return (*tuned_model, None, None, "")
    built = {"per_layer": tuned_model}
    for name, decisions in candidates.items():
        if name not in built:
            _set_decisions(plans.values(), decisions)
            built[name] = _build(model, plans, fold_batch_norm)
    _set_decisions(plans.values(), tuned)
    calls = {name: tf.function(built[name][0].__call__) for name in candidates}
    fns = {name: lambda call=call: call(x) for name, call in calls.items()}
    try:
        for fn in fns.values():
            wait_for(fn())  # traces
        times = time_side_by_side(fns, reps=_WHOLE_MODEL_REPS, warmup=1,
                                  budget_s=budget_s * len(fns),
                                  decisive_ratio=_AUTOTUNE_DECISIVE_RATIO)
    except tf.errors.OpError as e:
        return (*tuned_model, None, None,
                f"whole-model check failed, kept the per-layer choice: {_op_message(e)}")
    model_ms = {name: t["median_ms"] for name, t in times.items()}
    choice = pick_whole_model(model_ms)
    summary = ", ".join(f"{name} {ms:.3f} ms" for name, ms in model_ms.items())
    note = f"whole model at batch {batch_size}: {summary}; kept {choice}"
    if choice != "per_layer":
        _set_decisions(plans.values(), candidates[choice])
        for plan in plans.values():
            if plan.row is not None and candidates[choice][id(plan)] != tuned[id(plan)]:
                plan.row.reason += f"; {choice} won the whole-model check ({summary})"
    return (*built[choice], model_ms, choice, note)


def convert(model, min_sparsity=0.5, autotune=False, *, autotune_batch_size=1,
            autotune_budget_s=1.0, autotune_whole_model=True, fold_batch_norm=False,
            return_report=False):
    """Returns a copy of `model` whose sparse enough `Conv2D` layers run on the sparse op.

    Each `Conv2D` the op supports (`escort_tf.layers.unsupported_reason`) is
    kept dense or becomes a `SparseConv2D` whose `engine` picks the GPU kernel
    (the CPU has one kernel):

    * 2:4 on tensor cores: a masked kernel that is 2:4 along the input
      channels (`CsrFilter.is_2_4`, as TFMOT's `sparsity_m_by_n=(2, 4)`
      prunes), with input channels a multiple of 32, `channels_last`, and a
      float16 or bfloat16 compute dtype (a `mixed_float16`/`mixed_bfloat16`
      policy) becomes sparse with engine "auto", regardless of `min_sparsity`:
      on a GPU of compute capability 8.0+ it runs on sparse tensor cores,
      elsewhere on the CSR kernel. A 2:4 layer that misses one of the other
      conditions follows the next rule, and its reason says what is missing.
    * CSR on CUDA cores: any other kernel with at least `min_sparsity` zeros
      becomes sparse with engine "cuda_cores".
    * Dense otherwise.

    With `autotune=True` each sparse layer is then timed on this device as a
    dense `Conv2D`, on the CSR kernel and, on a GPU and where the first rule
    applies, on tensor cores; the fastest wins (engine "auto" for tensor
    cores, "cuda_cores" for the CSR kernel); a dense layer of a geometry
    already timed in this model (same config, input shape and dtype) takes
    that time, and so do the sparse variants of a 2:4 layer of such a
    geometry (their work does not depend on where its nonzeros are). A
    variant that fails (a GPU without sparse tensor cores) is left out of
    the comparison. On a CPU the GPU kernels can't be compared, so the
    rule's engine stays. Then,
    with `autotune_whole_model`, the whole model is timed three ways: with
    those per-layer winners, as the rules above convert it, and all dense
    (each folded if asked); the fastest is returned, but one with sparse
    layers only when it beats dense by 5% (`pick_whole_model`). A layer is cheaper or
    dearer inside a model than alone, so per-layer winners can add up to a
    model slower than dense; this check keeps autotune from returning one.

    Args:
        model: a built Sequential or functional tf_keras model, pruning-wrapped
            (`tfmot.sparsity.keras.prune_low_magnitude`) or stripped. It is not modified.
        min_sparsity: a `Conv2D` whose masked kernel has at least this fraction
            of zeros becomes a `SparseConv2D`.
        autotune: if True, time each sparse layer's variants on this device
            with its input shape from the model and keep the fastest.
        autotune_batch_size: batch size autotune times with.
        autotune_budget_s: time budget per layer for autotune's timed calls,
            after two warm-up calls of each variant (the first traces it): up
            to 5 samples of each, at least 3 regardless. The whole-model
            check gets this budget per candidate model, for up to 10 samples.
        autotune_whole_model: with `autotune`, also time the whole model
            (above) and keep the fastest of the three (one with sparse
            layers must beat dense by 5%); needs the model's
            input shape, batch aside, to be fully known. It builds and
            traces the model up to twice more.
        fold_batch_norm: if True, fold each `BatchNormalization` that alone
            follows a convolution into its filter and bias, and a ReLU/ReLU6
            that then follows into its activation (see `escort_tf.fold`). Kept
            layers keep their names; the report lists what was folded. The
            batch norms then compute their inference mode even in training calls.
        return_report: if True, return `(model, ConversionReport)`; each row
            has the decision, the engine, the 2:4 structure and the reason;
            the report's `model_ms` and `model_choice` hold the whole-model
            check's timings and pick ("per_layer", "rule" or "dense").

    Returns:
        The new tf_keras model (uncompiled), or `(model, report)`. Its outputs
        equal the masked dense model's up to float rounding.

    Raises:
        TypeError: `model` is not a tf_keras model (e.g. a Keras 3 one).
        ValueError: an argument is out of range, or the model is subclassed or unbuilt.

    Example:

        sparse_model = escort_tf.convert(tfmot_model, min_sparsity=0.8, autotune=True)
    """
    _check_model(model)
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"`min_sparsity` must be in [0, 1], got {min_sparsity!r}.")
    if not isinstance(autotune_batch_size, int) or autotune_batch_size <= 0:
        raise ValueError(f"`autotune_batch_size` must be a positive int, got {autotune_batch_size!r}.")

    plans: Dict[int, _Plan] = {id(layer): _plan(layer, min_sparsity) for layer in model.layers}
    rule = _decisions(plans.values())
    if autotune:
        _autotune(plans.values(), autotune_batch_size, autotune_budget_s)
    converted, removed = _build(model, plans, fold_batch_norm)
    report = ConversionReport([p.row for p in plans.values() if p.row is not None])
    if autotune and autotune_whole_model:
        (converted, removed, report.model_ms, report.model_choice,
         report.model_note) = _whole_model_check(model, plans, rule, (converted, removed),
                                                 fold_batch_norm, autotune_batch_size,
                                                 autotune_budget_s)
    for row in report:
        row.folded = tuple(removed.get(row.name, ()))
        if row.folded:
            row.reason += f"; folded {', '.join(row.folded)} into it"
        logger.info("%s (%s): %s, %s", row.name, row.layer_type, row.decision, row.reason)
    if report.model_note:
        logger.info("%s", report.model_note)
    return (converted, report) if return_report else converted


def _variable_checkpoint_key(child_names):
    """TF's checkpoint key of a variable reached from the root by `child_names`.

    TF's public API has no function for it, so this is the one place that uses
    TF's own (private) escaping; the `convert_checkpoint` tests check the keys
    against checkpoints TF writes.
    """
    # pylint: disable-next=import-outside-toplevel
    from tensorflow.python.trackable import constants, trackable_utils
    path = "/".join(trackable_utils.escape_local_name(name) for name in child_names)
    return trackable_utils.checkpoint_key(path, constants.VARIABLE_VALUE_KEY)


def _checkpoint_keys(model):
    """Maps each of `model.weights` to its checkpoint key relative to the model.

    TF names a variable by the breadth-first shortest path of child names from
    the root object (`tf.train.TrackableView`).
    """
    wanted = {id(v): v for v in model.weights}
    view = tf.train.TrackableView(model)
    keys, seen, queue = {}, {id(model)}, [(model, ())]
    while queue and len(keys) < len(wanted):
        obj, path = queue.pop(0)
        for name, child in view.children(obj).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            if id(child) in wanted:
                keys[id(child)] = _variable_checkpoint_key(path + (name,))
            queue.append((child, path + (name,)))
    return [(wanted[i], keys.get(i)) for i in wanted]


def convert_checkpoint(model, checkpoint_path, min_sparsity=0.5, **convert_kwargs):
    """Restores a TFMOT training checkpoint into `model`, then `convert`s it.

    Reads checkpoints written by `model.save_weights(prefix)` (TF format) and by
    `tf.train.Checkpoint(<name>=model, ...).save/write(prefix)`. Extra entries
    (optimizer slots, step counters) are ignored; every model variable must be
    in the checkpoint with its shape. The checkpoint files are only read.

    Args:
        model: the pruning-wrapped tf_keras model that was trained, built.
        checkpoint_path: a checkpoint prefix, or a directory (its latest checkpoint).
        min_sparsity: as in `convert`.
        **convert_kwargs: passed to `convert` (`autotune`, `return_report`, ...).

    Returns:
        What `convert` returns.

    Raises:
        FileNotFoundError: no checkpoint at `checkpoint_path`.
        ValueError: model variables missing from the checkpoint or of another
            shape; the message names each one.

    Example:

        pruned = tfmot.sparsity.keras.prune_low_magnitude(build_model(), ...)
        sparse_model = escort_tf.convert_checkpoint(pruned, "train_dir/")
    """
    _check_model(model)
    path = os.fspath(checkpoint_path)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"No checkpoint found in directory {path!r}.")
        path = latest
    try:
        stored = dict(tf.train.list_variables(path))
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise FileNotFoundError(f"Can't read a TF checkpoint at {path!r}: {e}") from e
    keys = _checkpoint_keys(model)
    # save_weights roots the checkpoint at the model; tf.train.Checkpoint(name=model) under name/.
    prefixes = [""] + sorted({k.split("/", 1)[0] + "/" for k in stored if "/" in k})
    prefix = max(prefixes, key=lambda p: sum(f"{p}{k}" in stored for _, k in keys if k))
    missing = [f"{v.name} (key {prefix}{k})" for v, k in keys if not k or f"{prefix}{k}" not in stored]
    mismatched = [f"{v.name}: model {v.shape.as_list()} vs checkpoint {stored[prefix + k]}"
                  for v, k in keys if k and prefix + k in stored
                  and list(stored[prefix + k]) != v.shape.as_list()]
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} model variable(s) missing from the checkpoint: "
                            + ", ".join(missing))
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): " + ", ".join(mismatched))
        wrapped = any(is_pruning_wrapper(layer) for layer in model.layers)
        if not wrapped and any("/mask/" in k for k in stored):
            problems.append("the checkpoint holds TFMOT pruning masks but the model has no "
                            "pruning wrappers; wrap it with prune_low_magnitude first")
        raise ValueError(
            f"Checkpoint {path!r} does not match the model: " + "; ".join(problems)
            + ". Pass the model exactly as it was trained (pruning-wrapped).")

    # Every model variable was found above; the rest of the checkpoint (optimizer
    # slots, save counters) is deliberately left unread.
    root = {"root": model} if not prefix else {prefix[:-1]: model}
    tf.train.Checkpoint(**root).restore(path).expect_partial()
    return convert(model, min_sparsity=min_sparsity, **convert_kwargs)
