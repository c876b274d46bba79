"""convert / convert_checkpoint: the masked dense model's outputs, on the sparse op."""

import contextlib
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

import escort_tf
import pruned_models
from escort_tf.convert import ConversionReport, is_pruning_wrapper, pick_whole_model
from escort_tf.layers import SparseConv2D

L = tf_keras.layers
TOL = dict(rtol=1e-5, atol=1e-5)


def layer_types(model):
    return {layer.name: type(layer).__name__ for layer in model.layers}


@pytest.mark.parametrize("stripped", [False, True], ids=["wrapped", "stripped"])
@pytest.mark.parametrize("kind", pruned_models.BUILDERS)
def test_matches_masked_dense_model(rng, kind, stripped):
    pruned = pruned_models.prune(pruned_models.BUILDERS[kind](), 0.8, rng)
    x = pruned_models.random_input(rng)
    expected = pruned_models.masked_reference(pruned, x)
    if stripped:
        for wrapper in pruned.layers:
            if is_pruning_wrapper(wrapper):
                wrapper.pruning_obj.weight_mask_op()
        pruned = tfmot.sparsity.keras.strip_pruning(pruned)
    converted, report = escort_tf.convert(pruned, return_report=True)
    np.testing.assert_allclose(converted(x).numpy(), expected, **TOL)
    np.testing.assert_allclose(converted.predict(x, verbose=0), expected, **TOL)
    types = layer_types(converted)
    conv_names = [row.name for row in report if row.layer_type == "Conv2D"]
    assert conv_names and all(types[name] == "SparseConv2D" for name in conv_names)
    assert "PruneLowMagnitude" not in types.values()
    assert report["dense"].decision == "dense" and types["dense"] == "Dense"


def test_uses_the_mask_when_the_kernel_is_not_yet_masked(rng):
    pruned = pruned_models.prune(pruned_models.sequential(), 0.8, rng)
    wrapper = pruned.layers[0]
    kernel, mask = wrapper.layer.kernel.numpy(), wrapper.pruning_vars[0][1].numpy()
    assert np.count_nonzero(kernel[mask == 0]) > 0  # the raw kernel would give other outputs
    converted = escort_tf.convert(pruned)
    assert converted.get_layer("conv_relu").csr_filter == escort_tf.CsrFilter.from_dense(
        kernel * mask)


@pytest.mark.parametrize("min_sparsity,expected_sparse", [
    pytest.param(0.0, {"conv_a", "conv_b", "conv_c"}, id="zero_converts_all"),
    pytest.param(0.5, {"conv_b", "conv_c"}, id="half"),
    pytest.param(0.9, {"conv_c"}, id="high"),
    pytest.param(1.0, set(), id="one_converts_none"),
])
def test_min_sparsity_threshold(rng, min_sparsity, expected_sparse):
    pruned = pruned_models.prune(pruned_models.functional(),
                                 {"conv_a": 0.3, "conv_b": 0.7, "conv_c": 0.95}, rng)
    x = pruned_models.random_input(rng)
    converted, report = escort_tf.convert(pruned, min_sparsity=min_sparsity, return_report=True)
    sparse = {row.name for row in report if row.decision == "sparse"}
    assert sparse == expected_sparse
    types = layer_types(converted)
    assert {n for n, t in types.items() if t == "SparseConv2D"} == expected_sparse
    for row in report:
        if row.layer_type == "Conv2D" and row.decision == "dense":
            assert f"< min_sparsity {min_sparsity:.1%}" in row.reason
    np.testing.assert_allclose(converted(x).numpy(), pruned_models.masked_reference(pruned, x),
                               **TOL)


def _nested_model():
    inner = tf_keras.Sequential([tf_keras.Input((9, 9, 4)), L.Conv2D(4, 3, name="inner_conv")],
                                name="inner_model")
    x = tf_keras.Input(pruned_models.INPUT_SHAPE)
    y = L.Conv2D(4, 3, padding="same", name="outer_conv")(x)
    return tf_keras.Model(x, inner(y))


def _unsupported_model(layer):
    return lambda: tf_keras.Sequential([
        tf_keras.Input(pruned_models.INPUT_SHAPE[:2] + (4,)), L.Conv2D(4, 1, name="outer_conv"),
        layer()])


UNSUPPORTED = {
    "grouped": (_unsupported_model(lambda: L.Conv2D(4, 3, groups=2, name="odd")), "odd",
                "groups=2"),
    "float64_policy": (_unsupported_model(lambda: L.Conv2D(4, 3, dtype="float64", name="odd")),
                       "odd", "compute dtype float64"),
    "transpose": (_unsupported_model(lambda: L.Conv2DTranspose(4, 3, name="odd")), "odd",
                  "Conv2DTranspose is not supported"),
    "depthwise": (_unsupported_model(lambda: L.DepthwiseConv2D(3, name="odd")), "odd",
                  "DepthwiseConv2D is not a Conv2D"),
    "nested_model": (_nested_model, "inner_model", "nested model"),
}


@pytest.mark.parametrize("build,name,reason", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_layers_kept_dense_with_reason(rng, caplog, build, name, reason):
    model = build()
    for weight in model.weights:  # sparse enough everywhere: only support decides
        values = np.where(rng.random(weight.shape) < 0.9, 0, rng.standard_normal(weight.shape))
        weight.assign(values.astype(weight.dtype.as_numpy_dtype))
    x = rng.standard_normal((2, *model.input_shape[1:])).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="escort_tf"):
        converted, report = escort_tf.convert(model, return_report=True)
    assert report[name].decision == "dense" and reason in report[name].reason
    assert report["outer_conv"].decision == "sparse"
    assert type(converted.get_layer(name)) is type(model.get_layer(name))
    assert any(r.name == "escort_tf" and name in r.getMessage() and reason in r.getMessage()
               for r in caplog.records)
    np.testing.assert_allclose(converted(x).numpy(), model(x).numpy(), **TOL)


def test_nested_model_layers_are_copies(rng):
    model = _nested_model()
    converted = escort_tf.convert(model)
    inner = converted.get_layer("inner_model").get_layer("inner_conv")
    assert inner is not model.get_layer("inner_model").get_layer("inner_conv")
    np.testing.assert_array_equal(inner.kernel.numpy(),
                                  model.get_layer("inner_model").get_layer("inner_conv").kernel)


def test_pruned_model_with_batch_norms_and_a_nested_model_folds_in_one_rebuild(rng):
    # TFMOT wraps the convs, batch norms and ReLUs alike: the rebuilt model
    # takes the inner layers' names, and folding works on those.
    x = tf_keras.Input((8, 8, 4))
    y = L.Conv2D(8, 3, padding="same", name="conv_a")(x)
    y = L.BatchNormalization(name="conv_a_bn")(y)
    y = L.ReLU(name="conv_a_relu")(y)
    inner = tf_keras.Sequential([tf_keras.Input((8, 8, 8)), L.Conv2D(4, 1, name="inner_conv"),
                                 L.BatchNormalization(name="inner_bn")], name="inner_model")
    model = tf_keras.Model(x, L.GlobalAveragePooling2D(name="pool")(inner(y)))
    for layer in (model.get_layer("conv_a_bn"), inner.get_layer("inner_bn")):
        n = layer.gamma.shape[0]
        layer.set_weights([rng.random(n) + 0.5, rng.standard_normal(n),
                           rng.standard_normal(n), rng.random(n) + 0.5])
    pruned = pruned_models.prune(model, 0.8, rng)
    assert is_pruning_wrapper(pruned.layers[1]) and is_pruning_wrapper(pruned.layers[2])
    converted, report = escort_tf.convert(pruned, fold_batch_norm=True, return_report=True)
    types = layer_types(converted)
    assert types["conv_a"] == "SparseConv2D" and types["inner_model"] == "Sequential"
    assert "conv_a_bn" not in types and "conv_a_relu" not in types
    assert not any(name.startswith("prune_low_magnitude") for name in types)
    assert report["conv_a"].folded == ("conv_a_bn", "conv_a_relu")
    assert converted.get_layer("conv_a").activation is tf_keras.activations.relu
    # Nested models are copied as they are, their batch norm included.
    assert [type(layer).__name__ for layer in converted.get_layer("inner_model").layers] == [
        "Conv2D", "BatchNormalization"]
    # By hand (clone_model, which masked_reference uses, can't copy this nested
    # pruned model): each conv with kernel * mask, each batch norm in inference mode.
    def masked_conv(layer, y):
        if is_pruning_wrapper(layer):
            (kernel, mask, _), = layer.pruning_vars
            layer = layer.layer
        else:
            kernel, mask = layer.kernel, 1.0
        return tf.nn.conv2d(y, kernel * mask, 1, "SAME") + layer.bias

    def batch_norm(layer, y):
        layer = getattr(layer, "layer", layer)
        return tf.nn.batch_normalization(y, layer.moving_mean, layer.moving_variance,
                                         layer.beta, layer.gamma, layer.epsilon)

    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    by_name = {getattr(layer, "layer", layer).name: layer for layer in pruned.layers}
    y = tf.nn.relu(batch_norm(by_name["conv_a_bn"],
                              masked_conv(by_name["conv_a"], x)))
    pruned_inner = by_name["inner_model"]
    inner_layers = {getattr(layer, "layer", layer).name: layer for layer in pruned_inner.layers}
    y = batch_norm(inner_layers["inner_bn"], masked_conv(inner_layers["inner_conv"], y))
    np.testing.assert_allclose(converted(x).numpy(), tf.reduce_mean(y, [1, 2]).numpy(),
                               rtol=1e-4, atol=1e-4)


def _shared_conv_two_sizes():
    small, large = tf_keras.Input((6, 6, 3)), tf_keras.Input((9, 9, 3))
    conv = L.Conv2D(4, 3, activation="relu", name="shared")
    pool = L.GlobalAveragePooling2D()
    return tf_keras.Model([small, large], [pool(conv(small)), pool(conv(large))])


def _deferred_sequential():
    model = tf_keras.Sequential([L.Conv2D(4, 3, name="conv"), L.Flatten()])
    model(np.zeros((1, 7, 7, 3), np.float32))
    return model


def _wrapper_given_the_input_shape():
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    return tf_keras.Sequential([tfmot.sparsity.keras.prune_low_magnitude(
        L.Conv2D(4, 3, name="conv"), pruning_schedule=schedule, input_shape=(7, 7, 3))])


TOPOLOGIES = {
    "shared_layer_two_input_sizes": (_shared_conv_two_sizes, "shared"),
    "deferred_build_sequential": (_deferred_sequential, "conv"),
    "wrapper_given_the_input_shape": (_wrapper_given_the_input_shape, "conv"),
}


@pytest.mark.parametrize("build,conv_name", TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
def test_other_topologies(rng, build, conv_name):
    model = build()
    for weight in model.weights:
        if weight.shape.rank == 4:
            weight.assign(np.where(rng.random(weight.shape) < 0.8, 0, weight.numpy()))
    xs = [rng.standard_normal((2, *i.shape[1:])).astype(np.float32) for i in model.inputs]
    expected = [np.asarray(y) for y in tf.nest.flatten(model(xs))]
    converted = escort_tf.convert(model)
    assert isinstance(converted.get_layer(conv_name), SparseConv2D)
    for y, want in zip(tf.nest.flatten(converted(xs)), expected):
        np.testing.assert_allclose(y.numpy(), want, **TOL)


def test_source_model_is_untouched(rng):
    pruned = pruned_models.prune(pruned_models.functional(), 0.8, rng)
    before = [w.numpy().copy() for w in pruned.weights]
    converted = escort_tf.convert(pruned)
    assert all(is_pruning_wrapper(layer) for layer in pruned.layers[1:])
    for old, weight in zip(before, pruned.weights):
        np.testing.assert_array_equal(weight.numpy(), old)
    assert not set(map(id, converted.weights)) & set(map(id, pruned.weights))


def test_keras3_model_is_refused_with_the_fix():
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3."):
        pytest.skip("needs Keras 3")
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(TypeError, match=r"Keras 3 model.*tf_keras.*TF_USE_LEGACY_KERAS=1"):
        escort_tf.convert(model)


def test_tf_keras_being_keras3_is_explained():
    # A fresh process without TF_USE_LEGACY_KERAS that uses tf.keras before importing
    # escort_tf (whose tfmot import would otherwise still select tf_keras): Keras 3.
    keras = pytest.importorskip("keras")  # TF's own dependency; absent only off PyPI
    if not keras.__version__.startswith("3."):
        pytest.skip("needs Keras 3")
    code = textwrap.dedent("""
        import tensorflow as tf
        model = tf.keras.Sequential([tf.keras.Input((6, 6, 1)), tf.keras.layers.Conv2D(2, 3)])
        import escort_tf
        escort_tf.convert(model)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode != 0
    assert "TypeError: escort_tf.convert needs a tf_keras (Keras 2) model" in result.stderr
    assert "`tf.keras` is Keras 3: TF_USE_LEGACY_KERAS=1 was not set" in result.stderr


class _Subclassed(tf_keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(2, 3)

    def call(self, x):
        return self.conv(x)


@pytest.mark.parametrize("model,kwargs,error,match", [
    pytest.param(object(), {}, TypeError, "expects a tf_keras Model, got object", id="not_model"),
    pytest.param(_Subclassed(), {}, ValueError, "subclassed", id="subclassed"),
    pytest.param(tf_keras.Sequential([L.Conv2D(2, 3)]), {}, ValueError, "not built",
                 id="unbuilt"),
    pytest.param(None, dict(min_sparsity=1.5), ValueError, "min_sparsity", id="min_sparsity"),
    pytest.param(None, dict(autotune_batch_size=0), ValueError, "autotune_batch_size",
                 id="batch_size"),
])
def test_bad_arguments(model, kwargs, error, match):
    model = pruned_models.sequential() if model is None else model
    with pytest.raises(error, match=match):
        escort_tf.convert(model, **kwargs)


def test_autotune_records_timings_and_keeps_outputs(rng, capsys):
    pruned = pruned_models.prune(pruned_models.sequential(), 0.8, rng)
    x = pruned_models.random_input(rng)
    converted, report = escort_tf.convert(pruned, min_sparsity=0.0, autotune=True,
                                          autotune_batch_size=2, autotune_budget_s=0.05,
                                          autotune_whole_model=False, return_report=True)
    assert report.model_ms is None and report.model_note == ""
    tuned = [row for row in report if row.layer_type == "Conv2D"]
    assert len(tuned) == 3
    types = layer_types(converted)
    for row in tuned:
        assert row.sparse_ms > 0 and row.dense_ms > 0 and "autotune" in row.reason
        faster = "sparse" if row.sparse_ms <= row.dense_ms else "dense"
        assert row.decision == faster
        assert types[row.name] == ("SparseConv2D" if faster == "sparse" else "Conv2D")
    assert report["dense"].sparse_ms is None
    assert "autotune" in capsys.readouterr().err  # the progress bar
    np.testing.assert_allclose(converted(x).numpy(), pruned_models.masked_reference(pruned, x),
                               **TOL)


def test_autotune_skips_layers_with_unknown_spatial_dims(rng):
    x = tf_keras.Input((None, None, 3))
    model = tf_keras.Model(x, L.Conv2D(4, 3, name="conv")(x))
    model.get_layer("conv").kernel.assign(np.zeros((3, 3, 3, 4), np.float32))
    _, report = escort_tf.convert(model, autotune=True, return_report=True)
    assert report["conv"].decision == "sparse" and "autotune skipped" in report["conv"].reason
    assert report["conv"].sparse_ms is None
    assert report.model_note == (
        "whole-model check skipped: the model's input shape is not fully known")


def test_autotune_keeps_the_default_when_a_variant_fails(rng, monkeypatch):
    def no_kernel(fns, **kwargs):
        raise tf.errors.UnimplementedError(None, None, "no kernel on this device\ndetails")

    # sys.modules: the package attribute escort_tf.convert is the function, not the module.
    monkeypatch.setattr(sys.modules["escort_tf.convert"], "time_side_by_side", no_kernel)
    pruned = pruned_models.prune(pruned_models.sequential(), 0.8, rng)
    _, report = escort_tf.convert(pruned, autotune=True, return_report=True)
    row = report["conv_relu"]
    assert row.decision == "sparse" and row.sparse_ms is None
    assert row.reason.endswith("autotune failed, kept: no kernel on this device")
    # Only the rule's model and the dense one were left to time: that fails too.
    assert report.model_ms is None and report.model_note == (
        "whole-model check failed, kept the per-layer choice: no kernel on this device")


def _fake_model_times(per_layer_fastest, model_ms):
    """A `time_side_by_side` stand-in: each layer's `per_layer_fastest` variant
    wins; whole-model candidates (their names in `model_ms`) get those times."""
    timed = []

    def fake_times(fns, **kwargs):
        timed.append(list(fns))
        if set(fns) <= set(model_ms):
            return {name: {"median_ms": model_ms[name]} for name in fns}
        return {name: {"median_ms": 1.0 if name == per_layer_fastest else 2.0} for name in fns}

    return fake_times, timed


def test_autotune_times_layers_briefly_and_the_whole_model_longer(rng, monkeypatch):
    # As convert's docstring says: up to 5 short samples per layer variant, up
    # to 10 default-length samples per whole-model candidate.
    fake_times, timed = _fake_model_times("cuda_cores", {"per_layer": 1.0, "dense": 2.0})
    calls = []

    def spy(fns, **kwargs):
        calls.append(kwargs)
        return fake_times(fns, **kwargs)

    monkeypatch.setattr(sys.modules["escort_tf.convert"], "time_side_by_side", spy)
    escort_tf.convert(pruned_models.prune(pruned_models.functional(), 0.8, rng), autotune=True)
    *per_layer, whole_model = calls
    assert len(per_layer) == 3 and timed[-1] == ["per_layer", "dense"]
    assert all(c["reps"] == 5 and c["min_sample_s"] == 0.002 for c in per_layer)
    assert whole_model["reps"] == 10 and "min_sample_s" not in whole_model


def test_autotune_times_a_repeated_geometry_dense_once(rng, monkeypatch):
    # conv_b and conv_c share a geometry (8 -> 8 channels, 3x3, same input
    # shape); conv_a reads 4 channels, and conv_d differs from conv_c only in
    # its activation.
    x = tf_keras.Input((8, 8, 4))
    y = L.Conv2D(8, 3, padding="same", name="conv_a")(x)
    y = L.Conv2D(8, 3, padding="same", name="conv_b")(y)
    y = L.Conv2D(8, 3, padding="same", name="conv_c")(y)
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_d")(y)
    model = tf_keras.Model(x, y)
    for layer in model.layers[1:]:
        layer.kernel.assign(layer.kernel * (rng.random(layer.kernel.shape) > 0.9))
    dense_ms = {"conv_a": 1.0, "conv_b": 3.0, "conv_d": 0.5}
    timed = []

    def fake_times(fns, **kwargs):
        name = next(n for n in dense_ms if n not in timed) if "dense" in fns else None
        timed.append(name if name else list(fns))
        return {variant: {"median_ms": dense_ms[name] if variant == "dense" else 2.0}
                for variant in fns}

    monkeypatch.setattr(sys.modules["escort_tf.convert"], "time_side_by_side", fake_times)
    _, report = escort_tf.convert(model, autotune=True, autotune_whole_model=False,
                                  return_report=True)
    assert timed == ["conv_a", "conv_b", ["cuda_cores"], "conv_d"]
    assert report["conv_c"].dense_ms == 3.0 and report["conv_c"].decision == "sparse"
    assert report["conv_c"].reason.endswith("; dense timed on conv_b (same geometry)")
    assert [report[n].decision for n in ("conv_a", "conv_b", "conv_d")] == [
        "dense", "sparse", "dense"]


def _bn_model():
    """Two convs, each followed by a batch norm and a ReLU that fold into it."""
    x = tf_keras.Input((8, 8, 4))
    y = x
    for name in ("conv_a", "conv_b"):
        y = L.Conv2D(8, 3, padding="same", name=name)(y)
        y = L.BatchNormalization(name=f"{name}_bn")(y)
        y = L.ReLU(name=f"{name}_relu")(y)
    return tf_keras.Model(x, L.GlobalAveragePooling2D(name="pool")(y))


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_whole_model_check_returns_dense_when_the_model_of_winners_is_slower(
        rng, monkeypatch, fold):
    model = _bn_model()
    for name in ("conv_a", "conv_b"):
        kernel = model.get_layer(name).kernel
        kernel.assign(kernel * (rng.random(kernel.shape) > 0.9))
    for layer in model.layers:  # inference statistics that folding must carry over
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.random(8) + 0.5, rng.standard_normal(8),
                               rng.standard_normal(8), rng.random(8) + 0.5])
    fake_times, timed = _fake_model_times("cuda_cores", {"per_layer": 3.0, "dense": 2.0})
    monkeypatch.setattr(sys.modules["escort_tf.convert"], "time_side_by_side", fake_times)
    converted, report = escort_tf.convert(model, autotune=True, fold_batch_norm=fold,
                                          return_report=True)
    # Per layer the CSR kernel won, which is also the rule's pick: one candidate less.
    assert timed == [["cuda_cores", "dense"]] * 2 + [["per_layer", "dense"]]
    assert report.model_ms == {"per_layer": 3.0, "dense": 2.0}
    assert report.model_choice == "dense"
    assert report.model_note == ("whole model at batch 1: per_layer 3.000 ms, dense 2.000 ms; "
                                 "kept dense")
    assert str(report).endswith(report.model_note)
    for name in ("conv_a", "conv_b"):
        row = report[name]
        assert (row.decision, row.engine, row.sparse_ms, row.dense_ms) == ("dense", None, 1.0, 2.0)
        assert "dense won the whole-model check (per_layer 3.000 ms, dense 2.000 ms)" in row.reason
        assert row.folded == ((f"{name}_bn", f"{name}_relu") if fold else ())
    assert "SparseConv2D" not in layer_types(converted).values()
    assert ("BatchNormalization" in layer_types(converted).values()) != fold
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(converted(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_whole_model_check_can_keep_the_rules_conversion(rng, monkeypatch):
    pruned = pruned_models.prune(pruned_models.sequential(), 0.8, rng)
    # Each layer alone: dense faster; the whole model: the rule's all-sparse one.
    fake_times, timed = _fake_model_times("dense", {"per_layer": 2.0, "rule": 1.5, "dense": 9.0})
    monkeypatch.setattr(sys.modules["escort_tf.convert"], "time_side_by_side", fake_times)
    converted, report = escort_tf.convert(pruned, autotune=True, return_report=True)
    # Per-layer winners are all dense: that candidate is the dense one.
    assert timed[-1] == ["per_layer", "rule"]
    assert report.model_choice == "rule"
    for name in ("conv_relu", "conv_tanh", "conv_linear"):
        assert report[name].decision == "sparse" and report[name].engine == "cuda_cores"
        assert report[name].reason.endswith("; rule won the whole-model check "
                                            "(per_layer 2.000 ms, rule 1.500 ms)")
        assert isinstance(converted.get_layer(name), SparseConv2D)
    x = pruned_models.random_input(rng)
    np.testing.assert_allclose(converted(x).numpy(), pruned_models.masked_reference(pruned, x),
                               **TOL)


@pytest.mark.parametrize("model_ms,choice", [
    ({"per_layer": 1.0, "rule": 1.2, "dense": 2.0}, "per_layer"),
    ({"per_layer": 1.0, "rule": 0.9, "dense": 2.0}, "rule"),
    ({"per_layer": 2.0, "rule": 2.0, "dense": 9.0}, "per_layer"),  # a tie keeps the first
    ({"per_layer": 1.96, "rule": 1.97, "dense": 2.0}, "dense"),  # within 5%: noise
    ({"per_layer": 1.9, "dense": 2.0}, "per_layer"),
    ({"per_layer": 1.99, "rule": 1.98}, "rule"),  # no dense model: no margin
])
def test_whole_model_pick_keeps_sparse_only_clearly_faster_than_dense(model_ms, choice):
    assert pick_whole_model(model_ms) == choice


def test_whole_model_check_times_real_models(rng):
    pruned = pruned_models.prune(pruned_models.functional(), 0.8, rng)
    converted, report = escort_tf.convert(pruned, autotune=True, autotune_batch_size=2,
                                          autotune_budget_s=0.05, return_report=True)
    # "dense" is no candidate when every layer alone chose dense (then "rule" is the other one);
    # which layers do depends on timing, so only the shape of the check is certain.
    assert "per_layer" in report.model_ms and len(report.model_ms) >= 2
    assert report.model_ms.keys() <= {"per_layer", "rule", "dense"}
    assert all(ms > 0 for ms in report.model_ms.values())
    assert report.model_choice == pick_whole_model(report.model_ms)
    sparse = {row.name for row in report if row.decision == "sparse"}
    assert sparse == {name for name, kind in layer_types(converted).items()
                      if kind == "SparseConv2D"}
    x = pruned_models.random_input(rng)
    np.testing.assert_allclose(converted(x).numpy(), pruned_models.masked_reference(pruned, x),
                               **TOL)


def test_pruning_wrappers_are_recognised_with_what_convert_reads():
    # TFMOT has no public wrapper class: this fails loudly if its private one moves or changes.
    conv = L.Conv2D(4, 3, name="conv")
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(
        tf_keras.Sequential([tf_keras.Input((5, 5, 2)), conv]),
        pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    wrapper = wrapped.layers[0]
    assert is_pruning_wrapper(wrapper) and not is_pruning_wrapper(conv)
    assert wrapper.layer is not None and wrapper.layer.name == "conv"
    ((weight, mask, _),) = wrapper.pruning_vars
    assert weight is wrapper.layer.kernel and mask.shape == weight.shape
    assert callable(wrapper.pruning_obj.weight_mask_op)
    assert callable(wrapper.pruning_obj.conditional_mask_update)
    assert wrapper.pruning_step is not None


def test_report_table_lists_every_layer_with_a_kernel(rng):
    pruned = pruned_models.prune(pruned_models.sequential(), 0.8, rng)
    _, report = escort_tf.convert(pruned, return_report=True)
    assert isinstance(report, ConversionReport) and len(report) == 4
    table = str(report).splitlines()
    assert table[0].split()[:4] == ["layer", "type", "kernel", "shape"]
    assert [line.split()[0] for line in table[1:]] == [
        "conv_relu", "conv_tanh", "conv_linear", "dense"]
    assert "3x3x3x8" in table[1] and "sparse" in table[1]
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        report["nope"]


def test_mixed_float16_model_converts(rng):
    # A stripped model: TFMOT's wrapper calls the inner layer past Keras' autocasting.
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = pruned_models.functional()
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    for layer in model.layers[1:4]:
        kernel = layer.kernel.numpy()
        layer.kernel.assign(np.where(rng.random(kernel.shape) < 0.8, 0, kernel))
    x = pruned_models.random_input(rng)
    converted = escort_tf.convert(model)
    assert isinstance(converted.get_layer("conv_b"), SparseConv2D)
    assert converted.get_layer("conv_b").compute_dtype == "float16"
    np.testing.assert_allclose(converted(x).numpy(), model(x).numpy(), rtol=1e-2, atol=1e-2)


@pytest.fixture(scope="module")
def trained():
    """A pruned Sequential trained two steps with TFMOT, and its masked outputs."""
    rng = np.random.default_rng(7)
    pruned = pruned_models.prune(pruned_models.sequential(), 0.0, rng)
    pruned.compile("adam", "mse")
    x = pruned_models.random_input(rng, batch=4)
    pruned.fit(x, np.zeros((4, 3)), epochs=2, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return pruned, x, pruned_models.masked_reference(pruned, x)


def _save_weights(model, tmp_path):
    model.save_weights(str(tmp_path / "weights"))
    return str(tmp_path / "weights")


def _checkpoint_write(model, tmp_path):
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
        str(tmp_path / "ckpt"))


def _checkpoint_manager_dir(model, tmp_path):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(net=model), str(tmp_path), 2)
    manager.save()
    return str(tmp_path)


@pytest.mark.parametrize("save", [_save_weights, _checkpoint_write, _checkpoint_manager_dir],
                         ids=["save_weights", "checkpoint_write", "checkpoint_manager_dir"])
def test_convert_checkpoint_restores_then_converts(rng, tmp_path, trained, save):
    model, x, expected = trained
    path = save(model, tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    fresh = pruned_models.prune(pruned_models.sequential(), 0.3, rng)
    converted, report = escort_tf.convert_checkpoint(fresh, path, min_sparsity=0.4,
                                                     return_report=True)
    # The restored masks, not fresh's 30% ones: training applied ConstantSparsity(0.5).
    assert report["conv_relu"].sparsity == pytest.approx(0.5, abs=0.01)
    assert report["conv_relu"].decision == "sparse"
    np.testing.assert_allclose(converted(x).numpy(), expected, **TOL)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("make_model,match", [
    pytest.param(lambda rng: pruned_models.sequential(), "no pruning wrappers",
                 id="stripped_model"),
    pytest.param(lambda rng: pruned_models.prune(pruned_models.functional(), 0.5, rng),
                 r"missing from the checkpoint: .*dense/kernel:0", id="other_architecture"),
])
def test_convert_checkpoint_names_missing_variables(rng, tmp_path, trained, make_model, match):
    path = _save_weights(trained[0], tmp_path)
    with pytest.raises(ValueError, match=match):
        escort_tf.convert_checkpoint(make_model(rng), path)


def test_convert_checkpoint_names_shape_mismatches(rng, tmp_path, trained):
    path = _save_weights(trained[0], tmp_path)
    other = tf_keras.Sequential([
        tf_keras.Input(pruned_models.INPUT_SHAPE),
        L.Conv2D(5, 3, padding="same", activation="relu", name="conv_relu"),
        L.Conv2D(6, (3, 1), strides=2, activation="tanh", name="conv_tanh"),
        L.Conv2D(4, 2, dilation_rate=2, use_bias=False, name="conv_linear"),
        L.Flatten(), L.Dense(3, name="dense")])
    with pytest.raises(ValueError, match=r"conv_relu/kernel:0: model \[3, 3, 3, 5\] vs "
                                         r"checkpoint \[3, 3, 3, 8\]"):
        escort_tf.convert_checkpoint(pruned_models.prune(other, 0.5, rng), path)


@pytest.mark.parametrize("where", ["missing_prefix", "empty_dir"])
def test_convert_checkpoint_without_a_checkpoint(tmp_path, where):
    path = tmp_path / "nothing" if where == "missing_prefix" else tmp_path
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        escort_tf.convert_checkpoint(pruned_models.sequential(), path)


# --- 2:4 structured sparsity: sparse tensor cores under a half-precision policy. ---

@contextlib.contextmanager
def global_policy(name):
    tf_keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def _model_2_4(rng, policy):
    """Layers "tc" (2:4, 32 input channels), "cin16" (2:4, 16) and "csr" (95% sparse, not 2:4)."""
    with global_policy(policy):
        x = tf_keras.Input((6, 6, 32))
        y = L.Conv2D(16, 3, padding="same", activation="relu", name="tc")(x)
        y = L.Conv2D(16, 1, name="cin16")(y)
        y = L.Conv2D(4, 3, padding="same", name="csr")(y)
        model = tf_keras.Model(x, L.Activation("linear", dtype="float32")(y))
    model.get_layer("tc").kernel.assign(pruned_models.kernel_2_4(rng, (3, 3, 32, 16)))
    model.get_layer("cin16").kernel.assign(pruned_models.kernel_2_4(rng, (1, 1, 16, 16)))
    csr = rng.standard_normal((3, 3, 16, 4)) * (rng.random((3, 3, 16, 4)) < 0.05)
    csr[1, 1, :4, 0] = 1.0  # one full group of 4: not 2:4
    model.get_layer("csr").kernel.assign(csr.astype(np.float32))
    return model


def _model_2_4_and_reference(rng, policy):
    """_model_2_4 under `policy`, and the same weights in a float32 model."""
    state = rng.bit_generator.state
    model = _model_2_4(rng, policy)
    reference_rng = np.random.default_rng()
    reference_rng.bit_generator.state = state
    return model, _model_2_4(reference_rng, "float32")


def _assert_matches_float32(converted, reference, policy, rng):
    # Three layers of 16-bit activations (on the CPU with float32 weights,
    # which the dense model rounds): within 3 units of the 16-bit type's
    # rounding at the output's scale (the dense model measured up to 2).
    x = rng.standard_normal((2, 6, 6, 32)).astype(np.float32)
    expected = reference(x).numpy()
    eps = 2.0**-11 if policy == "mixed_float16" else 2.0**-8
    np.testing.assert_allclose(converted(x).numpy(), expected, rtol=0,
                               atol=3 * eps * np.abs(expected).max())


@pytest.mark.parametrize("min_sparsity", [0.5, 0.9])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_2_4_layer_in_half_precision_goes_to_tensor_cores(rng, policy, min_sparsity):
    model, reference = _model_2_4_and_reference(rng, policy)
    converted, report = escort_tf.convert(model, min_sparsity=min_sparsity, return_report=True)
    tc = report["tc"]
    assert (tc.decision, tc.structure, tc.engine) == ("sparse", "2:4", "tensor_cores_2_4")
    assert "regardless of min_sparsity" in tc.reason
    assert converted.get_layer("tc").engine == "auto"
    # 2:4, but 16 input channels: the CSR kernel, if sparse enough.
    cin16 = report["cin16"]
    assert cin16.structure == "2:4"
    assert "tensor cores need input channels a multiple of 32, not 16" in cin16.reason
    assert cin16.decision == ("sparse" if min_sparsity == 0.5 else "dense")
    assert report["csr"].structure is None and report["csr"].engine == "cuda_cores"
    assert converted.get_layer("csr").engine == "cuda_cores"
    header, tc_line = str(report).splitlines()[:2]
    assert "structure" in header and "engine" in header and "sparse ms" not in header
    assert tc_line.split()[4:7] == ["2:4", "sparse", "tensor_cores_2_4"]
    _assert_matches_float32(converted, reference, policy, rng)


@pytest.mark.parametrize("min_sparsity", [0.5, 0.9])
def test_2_4_layer_in_float32_follows_min_sparsity(rng, min_sparsity):
    model = _model_2_4(rng, "float32")
    converted, report = escort_tf.convert(model, min_sparsity=min_sparsity, return_report=True)
    tc = report["tc"]
    assert tc.structure == "2:4"
    assert ("tensor cores need a float16/bfloat16 compute dtype (a mixed_float16 or "
            "mixed_bfloat16 policy), not float32") in tc.reason
    if min_sparsity == 0.5:
        assert (tc.decision, tc.engine) == ("sparse", "cuda_cores")
        assert converted.get_layer("tc").engine == "cuda_cores"
    else:
        assert (tc.decision, tc.engine) == ("dense", None)
        assert "< min_sparsity 90.0%" in tc.reason
    x = rng.standard_normal((2, 6, 6, 32)).astype(np.float32)
    # On the CPU: a GPU's dense conv rounds through TF32, too coarse for TOL.
    with tf.device("/CPU:0"):
        np.testing.assert_allclose(converted(x).numpy(), model(x).numpy(), **TOL)


@pytest.mark.parametrize("policy,cin,data_format,missing", [
    pytest.param("float32", 32, "channels_last", "a float16/bfloat16 compute dtype",
                 id="float32"),
    pytest.param("mixed_float16", 48, "channels_last", "input channels a multiple of 32, not 48",
                 id="cin48"),
    pytest.param("mixed_float16", 32, "channels_first", "channels_last, not channels_first",
                 id="channels_first"),
    pytest.param("float32", 8, "channels_first",
                 "a float16/bfloat16 compute dtype (a mixed_float16 or mixed_bfloat16 policy), "
                 "not float32 and input channels a multiple of 32, not 8 and channels_last, not "
                 "channels_first", id="all_three"),
])
def test_2_4_layer_says_what_keeps_it_off_the_tensor_cores(rng, policy, cin, data_format,
                                                           missing):
    shape = (cin, 5, 5) if data_format == "channels_first" else (5, 5, cin)
    with global_policy(policy):
        model = tf_keras.Sequential([tf_keras.Input(shape),
                                     L.Conv2D(8, 3, data_format=data_format, name="conv")])
    model.get_layer("conv").kernel.assign(pruned_models.kernel_2_4(rng, (3, 3, cin, 8)))
    converted, report = escort_tf.convert(model, return_report=True)
    row = report["conv"]
    assert (row.structure, row.decision, row.engine) == ("2:4", "sparse", "cuda_cores")
    assert f"2:4, but tensor cores need {missing}" in row.reason
    assert converted.get_layer("conv").engine == "cuda_cores"


def test_autotune_on_cpu_leaves_the_tensor_cores_untimed(rng, monkeypatch):
    _pretend_gpu(monkeypatch, present=False)  # also when the suite runs on a GPU
    with tf.device("/CPU:0"):
        converted, report = escort_tf.convert(_model_2_4(rng, "mixed_float16"), autotune=True,
                                              autotune_budget_s=0.05,
                                              autotune_whole_model=False, return_report=True)
    tc = report["tc"]
    assert tc.sparse_ms > 0 and tc.dense_ms > 0 and tc.tensor_cores_ms is None
    assert tc.reason.endswith("; tensor_cores_2_4 not timed: no GPU")
    # The CPU compared the CPU kernel with dense; the engine for GPUs stays the rule's.
    if tc.decision == "sparse":
        assert tc.engine == "tensor_cores_2_4" and converted.get_layer("tc").engine == "auto"


def _pretend_gpu(monkeypatch, present=True):
    monkeypatch.setattr(sys.modules["escort_tf.convert"], "_has_gpu", lambda: present)


@pytest.mark.parametrize("fastest,decision,engine,layer_engine", [
    ("tensor_cores_2_4", "sparse", "tensor_cores_2_4", "auto"),
    ("cuda_cores", "sparse", "cuda_cores", "cuda_cores"),
    ("dense", "dense", None, None),
])
def test_autotune_on_gpu_keeps_the_fastest_of_three(rng, monkeypatch, fastest, decision, engine,
                                                    layer_engine):
    timed = {}

    def fake_times(fns, **kwargs):
        timed[len(timed)] = list(fns)
        return {name: {"median_ms": 1.0 if name == fastest else 2.0} for name in fns}

    _pretend_gpu(monkeypatch)
    monkeypatch.setattr(sys.modules["escort_tf.convert"], "time_side_by_side", fake_times)
    converted, report = escort_tf.convert(_model_2_4(rng, "mixed_float16"), autotune=True,
                                          autotune_whole_model=False, return_report=True)
    # Layer order: tc, cin16, csr; only tc can run on tensor cores.
    assert timed == {0: ["cuda_cores", "tensor_cores_2_4", "dense"],
                     1: ["cuda_cores", "dense"], 2: ["cuda_cores", "dense"]}
    tc = report["tc"]
    assert (tc.decision, tc.engine) == (decision, engine)
    assert (tc.sparse_ms, tc.tensor_cores_ms, tc.dense_ms) == tuple(
        1.0 if name == fastest else 2.0 for name in ("cuda_cores", "tensor_cores_2_4", "dense"))
    assert tc.reason == ("autotune at batch 1: " + ", ".join(
        f"{name} {1.0 if name == fastest else 2.0:.3f} ms"
        for name in ("cuda_cores", "tensor_cores_2_4", "dense")))
    assert getattr(converted.get_layer("tc"), "engine", None) == layer_engine
    line = next(l for l in str(report).splitlines() if l.startswith("tc "))
    assert "2:4" in line and "1.000" in line


def test_autotune_times_a_repeated_2_4_geometry_once(rng, monkeypatch):
    # tc_a, tc_b: 2:4 filters of one geometry; tc_c the same geometry with a
    # filter 90% sparse (not 2:4): its sparse engines depend on where its
    # nonzeros are, so only its dense time is shared.
    with global_policy("mixed_float16"):
        x = tf_keras.Input((6, 6, 32))
        y = x
        for name in ("tc_a", "tc_b", "tc_c"):
            y = L.Conv2D(32, 3, padding="same", name=name)(y)
        model = tf_keras.Model(x, L.Activation("linear", dtype="float32")(y))
    for name in ("tc_a", "tc_b"):
        model.get_layer(name).kernel.assign(pruned_models.kernel_2_4(rng, (3, 3, 32, 32)))
    model.get_layer("tc_c").kernel.assign(
        rng.standard_normal((3, 3, 32, 32)) * (rng.random((3, 3, 32, 32)) < 0.1))
    ms = {"cuda_cores": 3.0, "tensor_cores_2_4": 1.0, "dense": 2.0}
    timed = []

    def fake_times(fns, **kwargs):
        timed.append(list(fns))
        return {name: {"median_ms": ms[name]} for name in fns}

    _pretend_gpu(monkeypatch)
    monkeypatch.setattr(sys.modules["escort_tf.convert"], "time_side_by_side", fake_times)
    converted, report = escort_tf.convert(model, autotune=True, autotune_whole_model=False,
                                          return_report=True)
    assert [report[n].structure for n in ("tc_a", "tc_b", "tc_c")] == ["2:4", "2:4", None]
    assert timed == [["cuda_cores", "tensor_cores_2_4", "dense"], ["cuda_cores"]]
    tc_b = report["tc_b"]
    assert (tc_b.sparse_ms, tc_b.tensor_cores_ms, tc_b.dense_ms) == (3.0, 1.0, 2.0)
    assert (tc_b.decision, tc_b.engine) == ("sparse", "tensor_cores_2_4")
    assert tc_b.reason == (
        "autotune at batch 1: cuda_cores 3.000 ms, tensor_cores_2_4 1.000 ms, dense 2.000 ms"
        "; cuda_cores timed on tc_a (same geometry, 2:4 filter)"
        "; tensor_cores_2_4 timed on tc_a (same geometry, 2:4 filter)"
        "; dense timed on tc_a (same geometry)")
    tc_c = report["tc_c"]
    assert (tc_c.sparse_ms, tc_c.dense_ms, tc_c.decision) == (3.0, 2.0, "dense")
    assert tc_c.reason.endswith("; dense timed on tc_a (same geometry)")
    assert converted.get_layer("tc_b").engine == "auto"


def test_autotune_skips_a_tensor_core_variant_that_fails(rng, monkeypatch):
    real = escort_tf.ops.csr_conv2d

    def no_tensor_cores(*args, engine="auto", **kwargs):
        # Fails when the graph runs, as the op does on a GPU without them.
        outputs = real(*args, engine=engine, **kwargs)
        if engine != "tensor_cores_2_4":
            return outputs
        check = tf.debugging.Assert(False, ["this GPU has no sparse tensor cores"])
        with tf.control_dependencies([check]):
            return tf.identity(outputs)

    _pretend_gpu(monkeypatch)
    monkeypatch.setattr(escort_tf.ops, "csr_conv2d", no_tensor_cores)
    model, reference = _model_2_4_and_reference(rng, "mixed_float16")
    converted, report = escort_tf.convert(model, autotune=True, autotune_budget_s=0.05,
                                          autotune_whole_model=False, return_report=True)
    tc = report["tc"]
    assert tc.sparse_ms > 0 and tc.dense_ms > 0 and tc.tensor_cores_ms is None
    assert tc.reason.endswith(
        "; tensor_cores_2_4 failed: assertion failed: [this GPU has no sparse tensor cores]")
    # What ran here wins: the CSR kernel is pinned, since "auto" would pick the failing one.
    assert tc.engine == ("cuda_cores" if tc.decision == "sparse" else None)
    if tc.decision == "sparse":
        assert converted.get_layer("tc").engine == "cuda_cores"
    _assert_matches_float32(converted, reference, "mixed_float16", rng)
