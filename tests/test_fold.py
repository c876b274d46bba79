"""fold_batch_norm: batch norms and ReLUs folded into convolutions, outputs unchanged."""

import numpy as np
import pytest
import tf_keras

import escort_tf
from escort_tf.fold import fold_batch_norm, foldable_layers
from escort_tf.layers import SparseConv2D

L = tf_keras.layers
TOL = dict(rtol=1e-5, atol=1e-5)
SHAPE = (9, 9, 4)


def randomize(model, rng, sparsity=0.8):
    """Prunes every conv kernel and gives batch norms statistics far from identity."""
    for layer in model.layers:
        if isinstance(layer, L.Conv2D):
            weights = layer.get_weights()
            weights[0] = np.where(rng.random(weights[0].shape) < sparsity, 0, weights[0])
            layer.set_weights(weights)
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.2, 3.0, w.shape) if "variance" in w.name
                               or "gamma" in w.name else rng.standard_normal(w.shape)
                               for w in layer.weights])
    return model


def bottleneck(shortcut_conv=True):
    """A ResNet bottleneck block: conv-BN-ReLU twice, conv-BN, a shortcut, Add, ReLU."""
    x = tf_keras.Input(SHAPE)
    y = L.Conv2D(8, 1, name="c1")(x)
    y = L.BatchNormalization(name="c1_bn")(y)
    y = L.Activation("relu", name="c1_relu")(y)
    y = L.Conv2D(8, 3, padding="same", name="c2")(y)
    y = L.BatchNormalization(epsilon=1e-3, name="c2_bn")(y)
    y = L.ReLU(name="c2_relu")(y)
    y = L.Conv2D(6, 1, use_bias=False, name="c3")(y)
    y = L.BatchNormalization(name="c3_bn")(y)
    s = x
    if shortcut_conv:
        s = L.Conv2D(6, 1, name="c0")(x)
        s = L.BatchNormalization(center=False, scale=False, name="c0_bn")(s)
    else:
        s = L.Conv2D(6, 1, name="c0")(x)
    y = L.Add(name="add")([s, y])
    return tf_keras.Model(x, L.ReLU(6.0, name="out")(y), name="block")


def run(model, x):
    return model(x, training=False).numpy()


@pytest.mark.parametrize("min_sparsity", [0.5, 1.0], ids=["sparse", "dense_convs"])
def test_folds_a_bottleneck_block(rng, min_sparsity):
    model = randomize(bottleneck(), rng)
    x = rng.standard_normal((2, *SHAPE)).astype(np.float32)
    converted, report = escort_tf.convert(model, min_sparsity=min_sparsity,
                                          fold_batch_norm=True, return_report=True)
    np.testing.assert_allclose(run(converted, x), run(model, x), **TOL)
    assert {r.name: r.folded for r in report} == {
        "c1": ("c1_bn", "c1_relu"), "c2": ("c2_bn", "c2_relu"), "c3": ("c3_bn",),
        "c0": ("c0_bn",)}
    assert "folded c1_bn, c1_relu into it" in report["c1"].reason
    kept = {layer.name for layer in converted.layers if not isinstance(layer, L.InputLayer)}
    assert kept == {"c1", "c2", "c3", "c0", "add", "out"}
    conv_type = SparseConv2D if min_sparsity < 1 else L.Conv2D
    for name, activation in (("c1", "relu"), ("c2", "relu"), ("c3", "linear")):
        layer = converted.get_layer(name)
        assert type(layer) is conv_type and layer.use_bias
        assert tf_keras.activations.serialize(layer.activation) == activation


def test_foldable_layers_names_what_fold_would_remove(rng):
    model = randomize(bottleneck(), rng)
    converted = escort_tf.convert(model)
    layers = list(converted.layers)
    assert foldable_layers(converted) == fold_batch_norm(converted)[1] == {
        "c1": ["c1_bn", "c1_relu"], "c2": ["c2_bn", "c2_relu"], "c3": ["c3_bn"], "c0": ["c0_bn"]}
    assert converted.layers == layers


def test_default_keeps_every_layer(rng):
    model = randomize(bottleneck(), rng)
    converted, report = escort_tf.convert(model, return_report=True)
    assert len(converted.layers) == len(model.layers)
    assert all(row.folded == () for row in report)


def test_source_model_is_untouched(rng):
    model = randomize(bottleneck(), rng)
    before = [w.copy() for w in model.get_weights()]
    layers = list(model.layers)
    fold_batch_norm(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.layers == layers


def test_sequential_model(rng):
    model = randomize(tf_keras.Sequential([
        tf_keras.Input(SHAPE),
        L.Conv2D(8, 3, name="conv"), L.BatchNormalization(name="bn"), L.ReLU(name="relu"),
        L.Conv2D(4, 3, name="conv_last"), L.BatchNormalization(name="bn_last"),
    ]), rng)
    x = rng.standard_normal((3, *SHAPE)).astype(np.float32)
    folded, removed = fold_batch_norm(escort_tf.convert(model))
    assert isinstance(folded, tf_keras.Sequential)
    assert removed == {"conv": ["bn", "relu"], "conv_last": ["bn_last"]}
    assert [layer.name for layer in folded.layers] == ["conv", "conv_last"]
    np.testing.assert_allclose(run(folded, x), run(model, x), **TOL)


def _branching(x):
    a = L.Conv2D(4, 3, padding="same", name="conv")(x)
    b = L.BatchNormalization(name="bn")(a)
    return [L.Add(name="add")([a, b])]  # the conv's output also feeds the Add


def _bn_in_training_mode(x):
    a = L.Conv2D(4, 3, padding="same", name="conv")(x)
    return [L.BatchNormalization(name="bn")(a, training=True)]


def _nonlinear_conv(x):
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    return [L.BatchNormalization(name="bn")(a)]


def _bn_over_rows(x):
    a = L.Conv2D(4, 3, padding="same", name="conv")(x)
    return [L.BatchNormalization(axis=1, name="bn")(a)]


def _shared_conv(x):
    conv = L.Conv2D(4, 3, padding="same", name="conv")
    return [L.BatchNormalization(name="bn")(conv(x)), conv(x)]


def _conv_output_is_a_model_output(x):
    a = L.Conv2D(4, 3, padding="same", name="conv")(x)
    return [L.BatchNormalization(name="bn")(a), a]


def _renorm(x):
    a = L.Conv2D(4, 3, padding="same", name="conv")(x)
    return [L.BatchNormalization(renorm=True, name="bn")(a)]


@pytest.mark.parametrize("build", [_branching, _bn_in_training_mode, _nonlinear_conv,
                                   _bn_over_rows, _shared_conv,
                                   _conv_output_is_a_model_output, _renorm])
def test_links_with_anything_else_attached_stay(rng, build):
    x = tf_keras.Input(SHAPE)
    model = randomize(tf_keras.Model(x, build(x)), rng)
    folded, removed = fold_batch_norm(escort_tf.convert(model))
    assert removed == {}
    assert {layer.name for layer in folded.layers} == {layer.name for layer in model.layers}
    data = rng.standard_normal((2, *SHAPE)).astype(np.float32)
    for got, want in zip(folded(data, training=False), model(data, training=False)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)


@pytest.mark.parametrize("activation,fused", [
    (L.LeakyReLU(0.1, name="act"), None), (L.ReLU(threshold=0.5, name="act"), None),
    (L.ReLU(max_value=4.0, name="act"), None), (L.Activation("tanh", name="act"), None),
    (L.ReLU(max_value=6.0, name="act"), "relu6"), (L.Activation("relu6", name="act"), "relu6"),
])
def test_only_relu_and_relu6_are_fused(rng, activation, fused):
    x = tf_keras.Input(SHAPE)
    y = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(x))
    model = randomize(tf_keras.Model(x, activation(y)), rng)
    folded, removed = fold_batch_norm(escort_tf.convert(model))
    assert removed == {"conv": ["bn", "act"] if fused else ["bn"]}
    data = 3 * rng.standard_normal((2, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(run(folded, data), run(model, data), **TOL)


def test_relu_fused_without_a_batch_norm(rng):
    x = tf_keras.Input(SHAPE)
    model = randomize(tf_keras.Model(x, L.ReLU(name="relu")(L.Conv2D(4, 3, name="conv")(x))),
                      rng)
    folded, removed = fold_batch_norm(escort_tf.convert(model))
    assert removed == {"conv": ["relu"]}
    data = rng.standard_normal((2, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(run(folded, data), run(model, data), **TOL)


def test_zero_gamma_keeps_the_filter_structure(rng):
    x = tf_keras.Input(SHAPE)
    model = randomize(tf_keras.Model(x, L.BatchNormalization(name="bn")(
        L.Conv2D(4, 3, name="conv")(x))), rng)
    bn = model.get_layer("bn")
    gamma = bn.gamma.numpy()
    gamma[1] = 0.0
    bn.gamma.assign(gamma)
    converted = escort_tf.convert(model)
    folded, _ = fold_batch_norm(converted)
    before, after = converted.get_layer("conv").csr_filter, folded.get_layer("conv").csr_filter
    np.testing.assert_array_equal(after.row_offsets, before.row_offsets)
    np.testing.assert_array_equal(after.column_indices, before.column_indices)
    data = rng.standard_normal((2, *SHAPE)).astype(np.float32)
    out = run(folded, data)
    np.testing.assert_allclose(out, run(model, data), **TOL)
    np.testing.assert_allclose(out[..., 1], bn.beta.numpy()[1], **TOL)


def test_folded_model_round_trips_through_keras_format(rng, tmp_path):
    model = randomize(bottleneck(), rng)
    converted = escort_tf.convert(model, fold_batch_norm=True)
    path = str(tmp_path / "folded.keras")
    converted.save(path)
    loaded = tf_keras.models.load_model(path)
    x = rng.standard_normal((1, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(run(loaded, x), run(model, x), **TOL)
