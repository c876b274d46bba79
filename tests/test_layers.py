"""SparseConv2D: equal to the dense Conv2D it came from, serializable every way."""

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from escort_tf import CsrFilter
from escort_tf.layers import SparseConv2D, unsupported_reason

L = tf_keras.layers


@dataclasses.dataclass
class Case:
    kernel_size: object = 3
    strides: object = 1
    padding: str = "same"
    dilation_rate: object = 1
    activation: object = None
    use_bias: bool = True
    filters: int = 6
    input_shape: tuple = (7, 8, 4)


CASES = {
    "relu_same": Case(activation="relu"),
    "relu6_valid_stride2": Case(activation=tf.nn.relu6, padding="valid", strides=2),
    "tanh_unfused": Case(activation="tanh"),
    "sigmoid_no_bias": Case(activation="sigmoid", use_bias=False),
    "linear_dilated": Case(dilation_rate=2, padding="valid"),
    "1x1": Case(kernel_size=1, filters=3),
    "1x3_stride_2x1": Case(kernel_size=(1, 3), strides=(2, 1), padding="valid"),
    "5x5_odd_input": Case(kernel_size=5, input_shape=(11, 5, 3)),
}


def pruned_conv(case, rng, sparsity=0.8, **kwargs):
    """A built Conv2D with random weights and ~`sparsity` zeros in its kernel."""
    conv = L.Conv2D(case.filters, case.kernel_size, strides=case.strides, padding=case.padding,
                    dilation_rate=case.dilation_rate, activation=case.activation,
                    use_bias=case.use_bias, **kwargs)
    conv.build((None, *case.input_shape))
    kernel = rng.standard_normal(conv.kernel.shape).astype(np.float32)
    kernel[rng.random(kernel.shape) < sparsity] = 0
    conv.kernel.assign(kernel)
    if case.use_bias:
        conv.bias.assign(rng.standard_normal(conv.bias.shape).astype(np.float32))
    return conv


def inputs(rng, case, batch=2):
    return rng.standard_normal((batch, *case.input_shape)).astype(np.float32)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_from_conv2d_matches_dense(rng, case):
    conv = pruned_conv(case, rng)
    x = inputs(rng, case)
    sparse = SparseConv2D.from_conv2d(conv)
    y = sparse(x).numpy()
    np.testing.assert_allclose(y, conv(x).numpy(), rtol=1e-5, atol=1e-5)
    assert tuple(sparse.compute_output_shape(x.shape)) == y.shape
    assert sparse.csr_filter == CsrFilter.from_dense(conv.kernel)
    assert sparse.trainable_weights == []


def test_mask_is_applied_to_a_dense_kernel(rng):
    case = Case(activation="relu")
    conv = pruned_conv(case, rng, sparsity=0.0)
    mask = (rng.random(conv.kernel.shape) > 0.7).astype(np.float32)
    sparse = SparseConv2D.from_conv2d(conv, mask=mask)
    x = inputs(rng, case)
    expected = tf.nn.relu(tf.nn.conv2d(x, conv.kernel * mask, 1, "SAME") + conv.bias)
    np.testing.assert_allclose(sparse(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert sparse.csr_filter.nnz == np.count_nonzero(mask)


def test_a_given_csr_filter_is_stored_instead_of_the_kernel(rng):
    case = Case(activation="relu")
    conv = pruned_conv(case, rng, sparsity=0.0)  # the kernel itself is dense
    mask = (rng.random(conv.kernel.shape) > 0.7).astype(np.float32)
    csr = CsrFilter.from_dense(conv.kernel.numpy() * mask)
    sparse = SparseConv2D.from_conv2d(conv, csr_filter=csr)
    x = inputs(rng, case)
    expected = tf.nn.relu(tf.nn.conv2d(x, conv.kernel * mask, 1, "SAME") + conv.bias)
    np.testing.assert_allclose(sparse(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert sparse.csr_filter == csr


@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_a_csr_filter_unlike_the_kernel_is_refused(rng, change):
    conv = pruned_conv(Case(), rng)
    kernel = conv.kernel.numpy()
    if change == "shape":
        kernel = kernel[:, :, :, :-1]
    else:
        kernel = kernel.astype(np.float16)
    with pytest.raises(ValueError, match="`csr_filter` is a .* but layer .* has a float32 kernel"):
        SparseConv2D.from_conv2d(conv, csr_filter=CsrFilter.from_dense(kernel))


def test_channels_first_matches_dense(rng):
    case = Case(activation="relu", strides=2, input_shape=(4, 7, 8))
    conv = pruned_conv(case, rng, data_format="channels_first")
    sparse = SparseConv2D.from_conv2d(conv)
    x = inputs(rng, case)
    y = sparse(x).numpy()
    # The dense layer in NHWC: TF runs NCHW convolutions on CPU only through
    # oneDNN, which it enables by default on some CPUs only.
    nhwc = L.Conv2D.from_config({**conv.get_config(), "data_format": "channels_last"})
    nhwc.build((None, 7, 8, 4))
    nhwc.set_weights(conv.get_weights())
    expected = tf.transpose(nhwc(tf.transpose(x, [0, 2, 3, 1])), [0, 3, 1, 2])
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert y.shape == (2, 6, 4, 4) == tuple(sparse.compute_output_shape(x.shape))


@pytest.mark.parametrize("policy,dtype", [("mixed_float16", tf.float16),
                                          ("mixed_bfloat16", tf.bfloat16)])
def test_mixed_policy_runs_in_16_bits_on_the_float32_variables(policy, dtype, rng):
    case = Case(activation="relu")
    conv = pruned_conv(case, rng, dtype=policy)
    sparse = SparseConv2D.from_conv2d(conv)
    x = inputs(rng, case)
    y = sparse(x)
    assert y.dtype == dtype and sparse.values.dtype == tf.float32
    tolerance = 1e-2 if dtype == tf.float16 else 5e-2
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(),
                               tf.cast(conv(x), tf.float32).numpy(), rtol=tolerance,
                               atol=tolerance)
    # The op reads the float32 variables themselves: no cast per call.
    graph = tf.function(sparse).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    (op,) = [op for op in graph.get_operations() if op.type.startswith("Escort>")]
    assert op.type == "Escort>CsrConv2DV2" and op.get_attr("U") == tf.float32
    assert [t.op.type for t in op.inputs[3:]] == ["ReadVariableOp"] * 2


def test_from_config_then_set_weights_round_trips(rng):
    case = CASES["tanh_unfused"]
    sparse = SparseConv2D.from_conv2d(pruned_conv(case, rng))
    x = inputs(rng, case)
    y = sparse(x).numpy()
    config = sparse.get_config()
    assert config["nnz"] == sparse.csr_filter.nnz and config["activation"] == "tanh"
    clone = SparseConv2D.from_config(config)
    clone.build(x.shape)
    assert [w.shape for w in clone.weights] == [w.shape for w in sparse.weights]
    clone.set_weights(sparse.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), y)
    deserialized = tf_keras.layers.deserialize(tf_keras.layers.serialize(sparse))
    assert isinstance(deserialized, SparseConv2D)


def _sequential(sparse, case):
    return tf_keras.Sequential([tf_keras.Input(case.input_shape), sparse, L.Flatten()])


def _functional(sparse, case):
    x = tf_keras.Input(case.input_shape)
    y = sparse(x)
    return tf_keras.Model(x, L.Add()([y, L.ReLU()(y)]))


@pytest.mark.parametrize("build", [_sequential, _functional], ids=["sequential", "functional"])
@pytest.mark.parametrize("file_name", ["model.h5", "model.keras", "saved_model"])
def test_model_save_and_load(rng, tmp_path, build, file_name):
    case = CASES["relu6_valid_stride2"]
    model = build(SparseConv2D.from_conv2d(pruned_conv(case, rng)), case)
    x = inputs(rng, case)
    expected = model(x).numpy()
    path = str(tmp_path / file_name)
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert any(isinstance(layer, SparseConv2D) for layer in loaded.layers)
    np.testing.assert_array_equal(loaded(x).numpy(), expected)


def test_save_weights_load_weights(rng, tmp_path):
    case = CASES["relu_same"]
    model = _sequential(SparseConv2D.from_conv2d(pruned_conv(case, rng)), case)
    x = inputs(rng, case)
    model.save_weights(str(tmp_path / "w.h5"))
    fresh = tf_keras.Sequential.from_config(model.get_config())
    fresh.load_weights(str(tmp_path / "w.h5"))
    np.testing.assert_array_equal(fresh(x).numpy(), model(x).numpy())


def _built(layer, shape=(None, 6, 6, 4)):
    layer.build(shape)
    return layer


@pytest.mark.parametrize("layer,match", [
    pytest.param(L.Conv2D(4, 3), "not built", id="unbuilt"),
    pytest.param(_built(L.Conv2D(4, 3, groups=2)), "groups=2", id="grouped"),
    pytest.param(_built(L.Conv2DTranspose(4, 3)), "Conv2DTranspose", id="transpose"),
    pytest.param(_built(L.DepthwiseConv2D(3)), "DepthwiseConv2D is not a Conv2D", id="depthwise"),
    pytest.param(_built(L.Dense(3), (None, 4)), "Dense is not a Conv2D", id="dense"),
    pytest.param(_built(L.Conv2D(4, 3, dtype="float64")), "compute dtype float64", id="float64"),
])
def test_unsupported_layers_are_refused_with_the_reason(layer, match):
    assert re.search(match, unsupported_reason(layer))
    with pytest.raises(ValueError, match=f"Can't convert layer '{layer.name}': .*{match}"):
        SparseConv2D.from_conv2d(layer)


@pytest.mark.parametrize("kwargs,match", [
    pytest.param(dict(filters=0), "filters", id="filters_zero"),
    pytest.param(dict(nnz=-1), "nnz", id="nnz_negative"),
    pytest.param(dict(padding="causal"), "padding", id="padding_causal"),
    pytest.param(dict(strides=(1, 0)), "strides", id="strides_zero"),
    pytest.param(dict(kernel_size=(3, 3, 3)), "kernel_size", id="kernel_size_rank"),
    pytest.param(dict(data_format="NHWC"), "data_format", id="data_format_tf_style"),
    pytest.param(dict(engine="TENSOR_CORES_2_4"), "engine must be one of", id="engine_upper"),
])
def test_constructor_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseConv2D(**{"filters": 4, "kernel_size": 3, "nnz": 5, **kwargs})


def test_build_rejects_other_input_channels(rng):
    sparse = SparseConv2D.from_conv2d(pruned_conv(Case(), rng))
    with pytest.raises(ValueError, match="filter shape .* does not match the input's 5 channels"):
        sparse(np.zeros((1, 7, 8, 5), np.float32))


def test_csr_filter_needs_a_built_layer():
    with pytest.raises(ValueError, match="not built"):
        SparseConv2D(4, 3, nnz=0).csr_filter


def _engine_attrs(layer, x):
    graph = tf.function(layer.__call__).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    return [op.get_attr("engine") for op in graph.get_operations()
            if op.type == "Escort>CsrConv2D"]


@pytest.mark.parametrize("engine", ["cuda_cores", "tensor_cores_2_4"])
def test_engine_round_trips_through_config_and_saving(rng, tmp_path, engine):
    case = CASES["relu_same"]
    sparse = SparseConv2D.from_conv2d(pruned_conv(case, rng), engine=engine)
    x = inputs(rng, case)
    assert sparse.get_config()["engine"] == engine
    assert _engine_attrs(sparse, x) == [engine.upper().encode()]
    clone = SparseConv2D.from_config(sparse.get_config())
    assert clone.engine == engine and _engine_attrs(clone, x) == [engine.upper().encode()]
    model = _sequential(sparse, case)
    model.save(str(tmp_path / "model.keras"))
    loaded = tf_keras.models.load_model(str(tmp_path / "model.keras"))
    assert loaded.layers[0].engine == engine
    # On a GPU, TENSOR_CORES_2_4 rightly refuses float32; the CPU kernel ignores the engine.
    with tf.device("/CPU:0"):
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_config_without_engine_loads_as_auto(rng):
    # Configs saved before the engine existed.
    case = CASES["relu_same"]
    sparse = SparseConv2D.from_conv2d(pruned_conv(case, rng))
    x = inputs(rng, case)
    y = sparse(x).numpy()
    config = sparse.get_config()
    assert config.pop("engine") == "auto"
    old = SparseConv2D.from_config(config)
    assert old.engine == "auto"
    old.build(x.shape)
    old.set_weights(sparse.get_weights())
    np.testing.assert_array_equal(old(x).numpy(), y)
