"""Escort>CsrConv2D on the GPU inside TensorFlow (skipped without a GPU).

Every test places the op on the GPU with soft placement off, so a missing GPU
kernel fails instead of silently running on the CPU. References are float64
convolutions computed on the CPU.
"""

import contextlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import escort_tf
import pruned_models
from escort_tf.layers import SparseConv2D
from test_concurrency import assert_bit_identical, run_threads
from test_ops import NAMED_CASES, Case, make_inputs, random_case

GPU = "/GPU:0"
F16 = tf.float16.as_numpy_dtype
BF16 = tf.bfloat16.as_numpy_dtype


@contextlib.contextmanager
def soft_placement(enabled):
    previous = tf.config.get_soft_device_placement()
    tf.config.set_soft_device_placement(enabled)
    try:
        yield
    finally:
        tf.config.set_soft_device_placement(previous)


@pytest.fixture(autouse=True)
def no_soft_placement():
    """Op calls must find a GPU kernel. Creating int32 variables (a layer's
    CSR indices, Keras's step counters) needs soft placement: TF keeps them on
    the host, which is where the op reads its indices."""
    with soft_placement(False):
        yield


def reference64(case: Case, x, kernel, bias):
    """The dense convolution in float64 on the CPU, NHWC, with bias and activation."""
    padding = case.padding
    if not isinstance(padding, str):
        padding = [[0, 0], padding[0], padding[1], [0, 0]]
    with tf.device("/CPU:0"):
        y = tf.nn.conv2d(x.astype(np.float64), kernel.astype(np.float64), case.strides,
                         padding, dilations=case.dilations).numpy()
    if bias is not None:
        y += bias.astype(np.float64)
    if case.activation == "relu":
        y = np.maximum(y, 0)
    elif case.activation == "relu6":
        y = np.clip(y, 0, 6)
    return y


def run_on_gpu(case: Case, x, kernel, bias):
    csr = escort_tf.CsrFilter.from_dense(kernel)
    inputs = x if case.data_format == "NHWC" else x.transpose(0, 3, 1, 2)
    with tf.device(GPU):
        y = escort_tf.sparse_conv2d(inputs, csr, bias=bias, strides=case.strides,
                                    padding=case.padding, dilations=case.dilations,
                                    data_format=case.data_format, activation=case.activation)
    assert "GPU" in y.device, y.device
    y = y.numpy()
    return y if case.data_format == "NHWC" else y.transpose(0, 2, 3, 1)


def assert_close_to_float64(actual, expected, x, kernel, rtol):
    """Relative to the size of the sums (cancellation makes single outputs tiny)."""
    assert actual.shape == expected.shape
    scale = np.abs(x.astype(np.float64)).max() * np.abs(
        kernel.astype(np.float64)).sum(axis=(0, 1, 2)).max() + 1.0
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol,
                               atol=rtol * scale)


@pytest.mark.parametrize("seed", range(120))
def test_random_configuration_matches_float64(seed):
    rng = np.random.default_rng(1000 + seed)
    case = random_case(rng)
    x, kernel, bias = make_inputs(case, rng)
    assert_close_to_float64(run_on_gpu(case, x, kernel, bias), reference64(case, x, kernel, bias),
                            x, kernel, rtol=1e-5)


@pytest.mark.parametrize("case", NAMED_CASES.values(), ids=NAMED_CASES.keys())
def test_named_case_matches_float64(case, rng):
    x, kernel, bias = make_inputs(case, rng)
    assert_close_to_float64(run_on_gpu(case, x, kernel, bias), reference64(case, x, kernel, bias),
                            x, kernel, rtol=1e-5)


@pytest.mark.parametrize("dtype,rtol", [(F16, 2e-3), (BF16, 1.6e-2)], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_half_precision_runs_on_gpu_and_sums_in_float32(dtype, rtol, data_format, rng):
    case = Case(3, 11, 10, 24, 20, 3, 3, (1, 1), (1, 1), "SAME", 0.3, activation="relu",
                data_format=data_format)
    x, kernel, bias = make_inputs(case, rng, dtype)
    actual = run_on_gpu(case, x, kernel, bias)
    assert actual.dtype == dtype
    # The inputs are already rounded to `dtype`; what is left is the output's
    # own rounding, a relative error of at most one half-ulp.
    expected = reference64(case, x, kernel, bias)
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max() * 1e-2 + 1e-6)


def test_float16_intermediate_overflow_cancels_on_gpu():
    kernel = np.array([100.0, -100.0], F16).reshape(1, 1, 2, 1)
    with tf.device(GPU):
        y = escort_tf.sparse_conv2d(np.full((1, 1, 1, 2), 1000.0, F16),
                                    escort_tf.CsrFilter.from_dense(kernel)).numpy()
    assert y.dtype == F16 and y[0, 0, 0, 0] == 0


def test_malformed_arrays_raise_invalid_argument_on_gpu(rng):
    kernel = rng.standard_normal((3, 3, 4, 6)).astype(np.float32)
    kernel[rng.random(kernel.shape) < 0.6] = 0
    csr = escort_tf.CsrFilter.from_dense(kernel)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    columns = np.array(csr.column_indices)
    bad = {
        "column_indices": (csr.row_offsets, np.where(columns == columns.max(), 3 * 3 * 4,
                                                     columns).astype(np.int32)),
        "row_offsets": (np.array(csr.row_offsets)[::-1].copy(), columns),
        "ascend": (csr.row_offsets, columns[::-1].copy()),
    }
    for name, (row_offsets, column_indices) in bad.items():
        with tf.device(GPU), pytest.raises(tf.errors.InvalidArgumentError):
            escort_tf.ops.csr_conv2d(x, row_offsets, column_indices, csr.values,
                                     kernel.shape).numpy()
        assert name  # each corruption raised on its own


def _random_pattern(rng, shape, density):
    kernel = rng.standard_normal(shape).astype(np.float32)
    kernel[rng.random(shape) >= density] = 0
    return kernel


def _layer_model(rng, kernel, shape=(10, 10)):
    conv = tf_keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], padding="same")
    conv.build((None, *shape, kernel.shape[2]))
    conv.set_weights([kernel, rng.standard_normal(kernel.shape[-1]).astype(np.float32)])
    return conv, SparseConv2D.from_conv2d(conv)


def _kernel_with_nnz(rng, shape, nnz):
    """A random kernel with exactly `nnz` nonzeros at random taps."""
    kernel = np.zeros(int(np.prod(shape)), np.float32)
    taps = rng.choice(kernel.size, size=nnz, replace=False)
    kernel[taps] = rng.uniform(0.5, 2.0, nnz) * rng.choice([-1, 1], nnz)
    return kernel.reshape(shape)


def _assign(layer, kernel):
    csr = escort_tf.CsrFilter.from_dense(kernel)
    layer.row_offsets.assign(csr.row_offsets)
    layer.column_indices.assign(csr.column_indices)
    layer.values.assign(csr.values)


def test_filter_cache_follows_assigned_variables(rng):
    """The kernel keeps the validated filter on the device; new arrays replace it."""
    shape, nnz = (3, 3, 8, 16), 300
    first, second = _kernel_with_nnz(rng, shape, nnz), _kernel_with_nnz(rng, shape, nnz)
    conv, sparse = _layer_model(rng, first)
    x = rng.standard_normal((2, 10, 10, 8)).astype(np.float32)
    with soft_placement(True):
        sparse(x)  # builds the variables

    def expected(kernel):
        return (tf.nn.conv2d(x, kernel, 1, "SAME") + conv.bias).numpy()

    with tf.device(GPU):
        call = tf.function(sparse.__call__)
        for kernel in (first, second, first, second):
            _assign(sparse, kernel)
            for _ in range(2):  # the second call is served from the cache
                np.testing.assert_allclose(call(x), expected(kernel), rtol=1e-5, atol=1e-4)
        # A corrupted index assigned to the variable is caught on the next call.
        broken = sparse.column_indices.numpy()
        broken[-1] = 10**6
        sparse.column_indices.assign(broken)
        with pytest.raises(tf.errors.InvalidArgumentError, match="column_indices"):
            call(x).numpy()
        _assign(sparse, first)
        np.testing.assert_allclose(call(x), expected(first), rtol=1e-5, atol=1e-4)


def test_eager_calls_with_fresh_index_arrays_follow_their_contents(rng):
    """Eager calls hand the op new index buffers every time. The kernel may
    reuse its validated filter for a new buffer only when its contents are
    equal: filters of the same sizes in turn, and then a corrupted copy of the
    last one, must each give their own result."""
    shape, nnz = (3, 3, 8, 16), 300
    kernels = [_kernel_with_nnz(rng, shape, nnz) for _ in range(2)]
    x = rng.standard_normal((2, 10, 10, 8)).astype(np.float32)

    def call(csr, column_indices=None):
        # Fresh numpy copies: a new host buffer for every argument.
        return escort_tf.ops.csr_conv2d(
            x, csr.row_offsets.copy(),
            (csr.column_indices if column_indices is None else column_indices).copy(),
            csr.values.copy(), shape).numpy()

    csrs = [escort_tf.CsrFilter.from_dense(kernel) for kernel in kernels]
    with tf.device(GPU):
        for i in (0, 0, 1, 1, 0, 1):
            with tf.device("/CPU:0"):
                expected = tf.nn.conv2d(x.astype(np.float64), kernels[i].astype(np.float64),
                                        1, "SAME").numpy()
            np.testing.assert_allclose(call(csrs[i]), expected, rtol=1e-5, atol=1e-4)
        broken = csrs[1].column_indices.copy()
        broken[-1] = 10**6
        with pytest.raises(tf.errors.InvalidArgumentError, match="column_indices"):
            call(csrs[1], broken)


def test_many_geometries_in_one_model(rng):
    """Layers of many shapes, and one layer at several input sizes, in one graph."""
    specs = [(3, 8, 3, 1, 1), (8, 16, 3, 2, 1), (16, 16, 1, 1, 1), (16, 32, 3, 1, 2),
             (32, 24, 5, 1, 1), (24, 40, 3, 2, 1), (40, 40, 1, 1, 1), (40, 8, 7, 1, 1)]
    layers, kernels = [], []
    for cin, cout, k, stride, dilation in specs:
        kernel = _random_pattern(rng, (k, k, cin, cout), 0.25)
        csr = escort_tf.CsrFilter.from_dense(kernel)
        layers.append((csr, stride, dilation))
        kernels.append(kernel)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def sparse_net(x):
        for csr, stride, dilation in layers:
            x = escort_tf.sparse_conv2d(x, csr, strides=stride, dilations=dilation,
                                        activation="relu")
        return x

    def dense_net(x):
        with tf.device("/CPU:0"):
            x = tf.constant(x, tf.float64)
            for kernel, (_, stride, dilation) in zip(kernels, layers):
                x = tf.nn.relu(tf.nn.conv2d(x, kernel.astype(np.float64), stride, "SAME",
                                            dilations=dilation))
            return x.numpy()

    with tf.device(GPU):
        for _ in range(3):
            for size in [(1, 17, 17), (4, 32, 24), (2, 9, 30)]:
                x = rng.standard_normal((*size, 3)).astype(np.float32)
                expected = dense_net(x)
                np.testing.assert_allclose(sparse_net(x).numpy(), expected, rtol=1e-4,
                                           atol=1e-4 * np.abs(expected).max())


@pytest.fixture(scope="module")
def converted():
    """A converted TFMOT-pruned model, its input and the masked dense outputs."""
    rng = np.random.default_rng(11)
    pruned = pruned_models.prune(pruned_models.functional(), 0.8, rng)
    x = pruned_models.random_input(rng, batch=4)
    with tf.device("/CPU:0"):
        expected = pruned_models.masked_reference(pruned, x)
    return escort_tf.convert(pruned), x, expected


def test_converted_keras_model_runs_on_gpu(converted):
    model, x, expected = converted
    with tf.device(GPU):
        np.testing.assert_allclose(model(x, training=False), expected, rtol=1e-4, atol=1e-4)
        with soft_placement(True):  # predict creates an int32 step counter
            np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-4,
                                       atol=1e-4)


def test_savedmodel_reloaded_runs_on_gpu(converted, tmp_path):
    model, x, expected = converted
    model.save(str(tmp_path / "model"), save_format="tf")
    serving = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    with tf.device(GPU):
        (raw,) = serving(tf.constant(x)).values()
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_threads_sharing_a_model_on_gpu_match_single_thread(converted):
    model, _, _ = converted
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((4, 9, 9, 3)).astype(np.float32) for _ in range(8)]
    call = tf.function(lambda t: model(t, training=False))

    def on_gpu(x):
        with tf.device(GPU):  # device scopes are per thread
            return call(x).numpy()

    expected = [on_gpu(x) for x in inputs]
    # The kernel has no atomics: every repeat in every thread is bit-identical.
    assert_bit_identical(run_threads(on_gpu, inputs), expected)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_model_runs_the_op_on_gpu(policy, rng):
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        conv = tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu")
        model = tf_keras.Sequential([tf_keras.Input((12, 12, 8)), conv,
                                     tf_keras.layers.Activation("linear", dtype="float32")])
        kernel = _random_pattern(rng, (3, 3, 8, 16), 0.2)
        conv.set_weights([kernel, np.zeros(16, np.float32)])
        fast, report = escort_tf.convert(model, return_report=True)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert report[conv.name].decision == "sparse"
    x = rng.standard_normal((2, 12, 12, 8)).astype(np.float32)
    with tf.device(GPU):  # soft placement is off: no silent CPU fallback
        y = fast(x, training=False).numpy()
    half = x.astype(tf.as_dtype(policy.split("_")[1]).as_numpy_dtype).astype(np.float64)
    with tf.device("/CPU:0"):
        expected = tf.nn.relu(tf.nn.conv2d(half, kernel.astype(np.float64), 1, "SAME")).numpy()
    np.testing.assert_allclose(y, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


def test_window_too_large_for_the_gpu_tile_is_a_clear_error():
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[0, 0, 0, 0] = 1.0
    with tf.device(GPU), pytest.raises(tf.errors.InvalidArgumentError,
                                       match="too large for the GPU kernel.*CPU"):
        escort_tf.sparse_conv2d(np.ones((1, 4, 4, 1), np.float32),
                                escort_tf.CsrFilter.from_dense(kernel),
                                dilations=(100_000, 1)).numpy()


@pytest.mark.parametrize("weight", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_weight_multiplies_the_zero_padding_on_gpu(weight):
    # As on the CPU (README, "Non-finite values"): the GPU tile stages the
    # padding as zeros that get multiplied, so 0 * NaN = NaN there too.
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[0, 0, 0, 0] = weight
    with tf.device(GPU):
        y = escort_tf.sparse_conv2d(np.ones((1, 4, 4, 1), np.float32),
                                    escort_tf.CsrFilter.from_dense(kernel)).numpy()
    assert np.isnan(y[0, 0, :, 0]).all() and np.isnan(y[0, :, 0, 0]).all()
