"""The 2:4 tensor-core engine of Escort>CsrConv2D on the GPU.

Skipped without a GPU of compute capability 8.0 or newer. Op calls run on the
GPU with soft placement off (test_gpu_op's autouse fixture), so nothing falls
back to the CPU unseen. References are float64 convolutions, on the CPU, of
the same 16-bit-rounded inputs and weights: what remains is the float32
summation and the one rounding of the result.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import escort_tf
import pruned_models
from escort_tf.layers import SparseConv2D
from test_gpu_op import GPU, no_soft_placement, reference64, soft_placement  # noqa: F401
from test_ops import Case

F16 = tf.float16.as_numpy_dtype
BF16 = tf.bfloat16.as_numpy_dtype
# dtype -> relative rounding of the result (half an ulp, with margin).
HALF = {"float16": (tf.float16, 2.0 ** -10), "bfloat16": (tf.bfloat16, 2.0 ** -7)}


def _compute_capability():
    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    return details.get("compute_capability", (0, 0))


pytestmark = pytest.mark.skipif(_compute_capability() < (8, 0),
                                reason="sparse tensor cores need compute capability 8.0+")


def _on_gpu(x, kernel, engine, **kwargs):
    with tf.device(GPU):
        y = escort_tf.sparse_conv2d(x, escort_tf.CsrFilter.from_dense(kernel), engine=engine,
                                    **kwargs)
    assert "GPU" in y.device, y.device
    return y.numpy()


def _conv(x, csr, dtype, case, engine, bias=None):
    with tf.device(GPU):
        y = escort_tf.ops.csr_conv2d(
            tf.constant(x, dtype), csr.row_offsets, csr.column_indices,
            tf.constant(csr.values, dtype), csr.filter_shape,
            bias=None if bias is None else tf.constant(bias, dtype), strides=case.strides,
            padding=case.padding, dilations=case.dilations, activation=case.activation,
            engine=engine)
    assert "GPU" in y.device, y.device
    return y


def _random_case(rng):
    kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
    dilations = tuple(int(v) for v in rng.integers(1, 3, size=2))
    min_h, min_w = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    padding = rng.choice(["SAME", "VALID", "EXPLICIT"])
    if padding == "EXPLICIT":
        padding = [[int(v) for v in rng.integers(0, 3, size=2)] for _ in range(2)]
    return Case(batch=int(rng.integers(1, 5)), height=int(rng.integers(min_h, min_h + 14)),
                width=int(rng.integers(min_w, min_w + 14)), cin=int(rng.choice([32, 64, 96])),
                cout=int(rng.choice([1, 8, 16, 24, 40, 130])), kh=kh, kw=kw,
                strides=tuple(int(v) for v in rng.integers(1, 3, size=2)), dilations=dilations,
                padding=padding, density=0.5, use_bias=bool(rng.integers(0, 2)),
                activation=rng.choice([None, "relu", "relu6"]))


def _check_case(case, dtype_name, rng):
    dtype, rounding = HALF[dtype_name]
    np_dtype = dtype.as_numpy_dtype
    kernel = pruned_models.kernel_2_4(rng, (case.kh, case.kw, case.cin, case.cout), np_dtype)
    kernel = kernel.astype(np.float64)
    x = (rng.standard_normal((case.batch, case.height, case.width, case.cin)) * 2)
    x = x.astype(np_dtype).astype(np.float64)
    bias = rng.standard_normal(case.cout).astype(np_dtype).astype(np.float64) \
        if case.use_bias else None
    csr = escort_tf.CsrFilter.from_dense(kernel.astype(np.float32))
    y = _conv(x, csr, dtype, case, "tensor_cores_2_4", bias).numpy().astype(np.float64)
    expected = reference64(case, x, kernel, bias)
    magnitude = reference64(dataclasses.replace(case, activation=None), np.abs(x),
                            np.abs(kernel), None if bias is None else np.abs(bias))
    np.testing.assert_array_less(np.abs(y - expected),
                                 rounding * np.abs(expected) + 1e-5 * magnitude + 1e-30)


@pytest.mark.parametrize("dtype_name", sorted(HALF))
@pytest.mark.parametrize("seed", range(20))
def test_random_configuration_matches_float64(seed, dtype_name):
    rng = np.random.default_rng(seed)
    _check_case(_random_case(rng), dtype_name, rng)


@pytest.mark.parametrize("dtype_name", sorted(HALF))
@pytest.mark.parametrize("case", [
    Case(1, 1, 1, 32, 16, 1, 1, (1, 1), (1, 1), "SAME", 0.5),
    Case(2, 9, 1, 32, 8, 3, 1, (1, 1), (1, 1), "SAME", 0.5, activation="relu6"),
    Case(1, 23, 23, 64, 40, 7, 7, (2, 2), (1, 1), "SAME", 0.5),
    Case(8, 30, 30, 64, 300, 3, 3, (1, 1), (1, 1), "SAME", 0.5, activation="relu"),
    # ResNet-50's res5 3x3 at batch 1: on Hopper a grid of 4 blocks, split-K
    # into 16 parts in the op's workspace, bias and ReLU added after the parts.
    Case(1, 7, 7, 512, 512, 3, 3, (1, 1), (1, 1), "SAME", 0.5, activation="relu"),
    # On Hopper, C >= 64 loads through the copy engine (im2col TMA): window
    # corners at the ends of its 8-bit range (-128, +127), tap offsets of
    # 254, C = 96 with strides and a partial channel block (K = 208); past
    # its ranges (stride 9) the kernel falls back to cp.async loads.
    Case(2, 3, 3, 64, 16, 1, 1, (1, 1), (1, 1), [[128, 127], [128, 127]], 0.5),
    Case(2, 4, 4, 64, 16, 3, 3, (1, 1), (127, 127), [[126, 126], [126, 126]], 0.5),
    Case(4, 30, 31, 96, 208, 3, 3, (2, 2), (1, 1), "SAME", 0.5, activation="relu"),
    Case(2, 40, 40, 64, 32, 3, 3, (9, 9), (1, 1), "SAME", 0.5),
], ids=["single_pixel", "width_one", "7x7_stride2", "large_grid", "split_k_small_grid",
        "tma_window_corner_limits", "tma_tap_offset_limit", "tma_c96_strided_partial_block",
        "stride9_cp_async_fallback"])
def test_named_case_matches_float64(case, dtype_name):
    _check_case(case, dtype_name, np.random.default_rng(3))


def test_auto_engine_takes_tensor_cores_for_2_4_filters(rng):
    """The two GPU kernels sum in different orders, so their results differ in
    the last bits; which one ran shows in bit-identity with the forced engine."""
    case = Case(2, 12, 12, 64, 48, 3, 3, (1, 1), (1, 1), "SAME", 0.5)
    x = rng.standard_normal((2, 12, 12, 64))
    csr = escort_tf.CsrFilter.from_dense(pruned_models.kernel_2_4(rng, (3, 3, 64, 48)))
    auto = _conv(x, csr, tf.float16, case, "auto").numpy()
    np.testing.assert_array_equal(auto, _conv(x, csr, tf.float16, case,
                                              "tensor_cores_2_4").numpy())
    assert not np.array_equal(auto, _conv(x, csr, tf.float16, case, "cuda_cores").numpy())


@pytest.mark.parametrize("cin,dtype,data_format,is_2_4,why", [
    (32, F16, "NHWC", False, "at most 2 in each aligned group of 4"),
    (48, F16, "NHWC", True, "must be a multiple of 32"),
    (32, np.float32, "NHWC", True, "needs float16 or bfloat16"),
    (32, F16, "NCHW", True, "needs data_format NHWC"),
], ids=["not_2_4", "cin48", "float32", "nchw"])
def test_tensor_cores_refuse_what_they_cannot_run_and_auto_falls_back(
        rng, cin, dtype, data_format, is_2_4, why):
    kernel = pruned_models.kernel_2_4(rng, (3, 3, cin, 16), dtype)
    if not is_2_4:
        kernel[1, 2, 4:7, 5] = 1
    x = rng.standard_normal((1, 8, 8, cin)).astype(dtype)
    inputs = x if data_format == "NHWC" else x.transpose(0, 3, 1, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"TENSOR_CORES_2_4.*{why}"):
        _on_gpu(inputs, kernel, "tensor_cores_2_4", data_format=data_format)
    # The CSR kernel on both: bit-identical.
    np.testing.assert_array_equal(_on_gpu(inputs, kernel, "auto", data_format=data_format),
                                  _on_gpu(inputs, kernel, "cuda_cores", data_format=data_format))


def _filter_variables_2_4(rng):
    """A 2:4 filter as variables where a layer keeps them (indices on the host,
    float16 values on the GPU), and a float16 input for it."""
    csr = escort_tf.CsrFilter.from_dense(pruned_models.kernel_2_4(rng, (3, 3, 32, 16)))
    x = tf.constant(rng.standard_normal((2, 8, 8, 32)), tf.float16)
    with tf.device("/CPU:0"):
        offsets = tf.Variable(csr.row_offsets)
        columns = tf.Variable(csr.column_indices)
    with tf.device(GPU):
        values = tf.Variable(tf.constant(csr.values, tf.float16))
    return csr, x, offsets, columns, values


def test_cached_filter_follows_new_values_and_checks_their_count(rng):
    """Same index variables, new values: the output follows; a values tensor of
    another length is rejected although the indices are the cached ones."""
    csr, x, offsets, columns, values = _filter_variables_2_4(rng)

    # One signature for both lengths: the same op instance, holding the cached filter.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float16)])
    def run(v):
        return escort_tf.ops.csr_conv2d(x, offsets, columns, v, csr.filter_shape,
                                        engine="tensor_cores_2_4")

    with tf.device(GPU):
        first = run(values).numpy().astype(np.float32)
        values.assign(values * 2)
        np.testing.assert_allclose(run(values).numpy().astype(np.float32), 2 * first,
                                   rtol=2e-3, atol=1e-2)
        with pytest.raises(tf.errors.InvalidArgumentError, match="values must have"):
            run(tf.concat([values, values[:1]], 0))


def _assert_updates_reach_the_output(conv, updates):
    """Runs `conv(engine)` on tensor cores after each update: the output must
    change, and match the CSR kernel's (which reads the variables anew each
    call, and float32 values unrounded)."""
    on_tensor_cores = tf.function(lambda: conv("tensor_cores_2_4"))
    on_cuda_cores = tf.function(lambda: conv("cuda_cores"))
    with tf.device(GPU):
        before = on_tensor_cores().numpy()
        for update in updates:
            update()
            after = on_tensor_cores().numpy()
            assert not np.array_equal(after, before)
            np.testing.assert_allclose(after.astype(np.float32),
                                       on_cuda_cores().numpy().astype(np.float32),
                                       rtol=2e-3, atol=2e-2)
            before = after


def test_packed_values_follow_in_place_updates(rng):
    """The op keeps the values it packed for the tensor cores while it is fed
    the same buffer: each way of updating the variable must reach the output."""
    csr, x, offsets, columns, values = _filter_variables_2_4(rng)

    def conv(engine):
        return escort_tf.ops.csr_conv2d(x, offsets, columns, values, csr.filter_shape,
                                        engine=engine)

    _assert_updates_reach_the_output(conv, [
        lambda: values.assign_add(tf.ones_like(values)),
        lambda: values.assign_sub(0.5 * values),
        lambda: values.scatter_nd_update([[0], [csr.nnz - 1]], tf.constant([3, -2], tf.float16)),
        lambda: values.assign(tf.reverse(values, [0])),
    ])


def test_float32_values_and_bias_follow_in_place_updates(rng):
    """Escort>CsrConv2DV2 (mixed precision) rounds float32 values and bias to
    the input's type once and keeps them while fed the same buffers: updates
    of either variable must reach the output."""
    csr, x, offsets, columns, _ = _filter_variables_2_4(rng)
    with tf.device(GPU):
        values = tf.Variable(tf.constant(csr.values, tf.float32))
        bias = tf.Variable(tf.constant(rng.standard_normal(csr.filter_shape[3]), tf.float32))

    def conv(engine):
        return escort_tf.ops.csr_conv2d(x, offsets, columns, values, csr.filter_shape,
                                        bias=bias, engine=engine)

    _assert_updates_reach_the_output(conv, [
        lambda: values.assign_add(tf.ones_like(values)),
        lambda: bias.assign_sub(2 * tf.ones_like(bias)),
        lambda: values.assign(tf.reverse(values, [0])),
    ])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_keras_layer_under_mixed_precision_runs_on_tensor_cores(rng, policy):
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        dense = tf_keras.layers.Conv2D(32, 3, padding="same", use_bias=False)
        dense.build((None, 10, 10, 64))
        dense.kernel.assign(pruned_models.kernel_2_4(rng, (3, 3, 64, 32)))
        sparse = SparseConv2D.from_conv2d(dense)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert sparse.engine == "auto"
    x = tf.constant(rng.standard_normal((4, 10, 10, 64)), tf.float32)
    with soft_placement(True):  # the int32 index variables live on the host
        sparse.build(x.shape)
    with tf.device(GPU):
        y = sparse(x)
        forced = escort_tf.ops.csr_conv2d(
            tf.cast(x, y.dtype), sparse.row_offsets, sparse.column_indices,
            tf.cast(sparse.values, y.dtype), sparse.filter_shape, padding="SAME",
            engine="tensor_cores_2_4")
    np.testing.assert_array_equal(y.numpy(), forced.numpy())


def test_digits_2_4_keeps_its_accuracy_on_tensor_cores(demo):
    # Issue #16's target where the tensor cores really run: the converted
    # mixed_float16 model within 0.5 points of the pruned float32 one.
    tf_keras.utils.set_random_seed(0)
    result = demo.run_digits_2_4("mixed_float16", epochs=4, fine_tune_epochs=2, upsample=2,
                                 verbose=0)
    assert all(result["is_2_4"].values())
    assert result["pruned_accuracy"] - result["converted_accuracy"] <= demo.MAX_ACCURACY_LOSS_2_4
    # "auto" took the tensor cores: pinning them gives the same predictions.
    converted = result["converted"]
    config = converted.get_config()
    for layer in config["layers"]:
        if layer["config"]["name"] in demo.LAYERS_2_4:
            layer["config"]["engine"] = "tensor_cores_2_4"
    pinned = tf_keras.Sequential.from_config(config)
    pinned.set_weights(converted.get_weights())
    x_test = demo.load_digits_images(upsample=2)[1]
    with tf.device(GPU):
        np.testing.assert_allclose(pinned(x_test[:64], training=False).numpy(),
                                   converted(x_test[:64], training=False).numpy(),
                                   rtol=1e-3, atol=1e-3)
