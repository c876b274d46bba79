"""Escort>CsrConv2D against tf.nn.conv2d, and every validation error it raises."""

import dataclasses
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import escort_tf
import pruned_models
from escort_tf import _loader


@dataclasses.dataclass
class Case:
    """One convolution: shapes, attributes and how sparse the filter is."""

    batch: int
    height: int
    width: int
    cin: int
    cout: int
    kh: int
    kw: int
    strides: tuple
    dilations: tuple
    padding: object  # "SAME", "VALID" or [[top, bottom], [left, right]]
    density: float
    data_format: str = "NHWC"
    use_bias: bool = True
    activation: object = None
    empty_rows: int = 0  # output channels whose filter is all zero


def random_case(rng) -> Case:
    kh, kw = (int(v) for v in rng.integers(1, 8, size=2))
    dilations = tuple(int(v) for v in rng.integers(1, 3, size=2))
    strides = tuple(int(v) for v in rng.integers(1, 4, size=2))
    padding = rng.choice(["SAME", "VALID", "EXPLICIT"])
    if padding == "EXPLICIT":
        padding = [[int(v) for v in rng.integers(0, 4, size=2)] for _ in range(2)]
    min_h = (kh - 1) * dilations[0] + 1
    min_w = (kw - 1) * dilations[1] + 1
    return Case(
        batch=int(rng.integers(1, 9)),
        height=int(rng.integers(min_h, min_h + 12)),
        width=int(rng.integers(min_w, min_w + 12)),
        cin=int(rng.choice([1, 2, 3, 5, 8, 16, 19])),
        cout=int(rng.choice([1, 2, 4, 7, 16, 33])),
        kh=kh, kw=kw, strides=strides, dilations=dilations, padding=padding,
        density=float(rng.choice([0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0])),
        data_format=str(rng.choice(["NHWC", "NCHW"])),
        use_bias=bool(rng.integers(0, 2)),
        activation=rng.choice([None, "relu", "relu6"]),
        empty_rows=int(rng.integers(0, 3)),
    )


NAMED_CASES = {
    "1x1_filter": Case(2, 5, 5, 8, 16, 1, 1, (1, 1), (1, 1), "SAME", 0.3),
    "7x7_stride2": Case(1, 23, 17, 3, 8, 7, 7, (2, 2), (1, 1), "SAME", 0.2),
    "one_input_channel": Case(3, 9, 9, 1, 4, 3, 3, (1, 1), (1, 1), "VALID", 0.5),
    "width_one": Case(2, 9, 1, 4, 4, 3, 1, (1, 1), (1, 1), "SAME", 0.5),
    "height_one": Case(2, 1, 9, 4, 4, 1, 3, (1, 1), (1, 1), "SAME", 0.5),
    "single_pixel_image": Case(1, 1, 1, 6, 5, 3, 3, (1, 1), (1, 1), "SAME", 0.7),
    "batch_one_large_channels": Case(1, 7, 7, 64, 96, 3, 3, (1, 1), (1, 1), "SAME", 0.05),
    "filter_larger_than_input_padded": Case(
        2, 2, 3, 3, 4, 5, 5, (1, 1), (1, 1), [[2, 2], [2, 2]], 0.4),
    "asymmetric_explicit_padding": Case(
        2, 8, 7, 3, 5, 3, 2, (2, 1), (1, 1), [[0, 3], [2, 0]], 0.4),
    "stride3_dilation2": Case(2, 15, 14, 4, 6, 3, 3, (3, 3), (2, 2), "SAME", 0.3),
    "dilated_valid": Case(1, 12, 12, 5, 5, 3, 3, (1, 1), (2, 2), "VALID", 0.3),
    "all_zero_filter": Case(2, 6, 6, 4, 8, 3, 3, (1, 1), (1, 1), "SAME", 0.0,
                            activation="relu"),
    "empty_rows": Case(2, 6, 6, 4, 8, 3, 3, (1, 1), (1, 1), "SAME", 0.5, empty_rows=5),
    "dense_filter": Case(2, 6, 6, 4, 8, 3, 3, (1, 1), (1, 1), "SAME", 1.0),
    "sparsity_99": Case(4, 10, 10, 32, 32, 3, 3, (1, 1), (1, 1), "SAME", 0.01),
    "nchw_relu6": Case(3, 8, 9, 6, 7, 3, 3, (2, 1), (1, 1), "SAME", 0.3,
                       data_format="NCHW", activation="relu6"),
    "nchw_no_bias": Case(2, 8, 8, 6, 7, 5, 5, (1, 1), (1, 1), "VALID", 0.3,
                         data_format="NCHW", use_bias=False),
}


def make_inputs(case: Case, rng, dtype=np.float32):
    kernel = rng.standard_normal((case.kh, case.kw, case.cin, case.cout))
    kernel *= rng.random(kernel.shape) < case.density
    kernel[..., :case.empty_rows] = 0
    x = rng.standard_normal((case.batch, case.height, case.width, case.cin)) * 3
    bias = rng.standard_normal(case.cout) if case.use_bias else None
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    return cast(x), cast(kernel), cast(bias)


def dense_reference(case: Case, x, kernel, bias):
    """tf.nn.conv2d in NHWC on float32, then bias and activation."""
    padding = case.padding
    if not isinstance(padding, str):
        padding = [[0, 0], padding[0], padding[1], [0, 0]]
    y = tf.nn.conv2d(x.astype(np.float32), kernel.astype(np.float32), case.strides,
                     padding, dilations=case.dilations)
    if bias is not None:
        y += bias.astype(np.float32)
    if case.activation == "relu":
        y = tf.nn.relu(y)
    elif case.activation == "relu6":
        y = tf.nn.relu6(y)
    return y.numpy()


def run_sparse(case: Case, x, kernel, bias):
    csr = escort_tf.CsrFilter.from_dense(kernel)
    inputs = x if case.data_format == "NHWC" else x.transpose(0, 3, 1, 2)
    y = escort_tf.sparse_conv2d(inputs, csr, bias=bias, strides=case.strides,
                                padding=case.padding, dilations=case.dilations,
                                data_format=case.data_format,
                                activation=case.activation).numpy()
    return y if case.data_format == "NHWC" else y.transpose(0, 2, 3, 1)


def assert_matches_dense(case: Case, rng, dtype=np.float32, rtol=1e-5):
    x, kernel, bias = make_inputs(case, rng, dtype)
    expected = dense_reference(case, x, kernel, bias)
    actual = run_sparse(case, x, kernel, bias)
    assert actual.shape == expected.shape
    assert actual.dtype == dtype
    # Sums of up to kh*kw*cin float32 products: tolerance scales with the
    # magnitude of what was summed.
    scale = np.abs(x).max() * np.abs(kernel).sum(axis=(0, 1, 2)).max() + 1.0
    np.testing.assert_allclose(actual.astype(np.float32), expected,
                               rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("seed", range(160))
def test_random_configuration_matches_tf_conv2d(seed):
    rng = np.random.default_rng(seed)
    assert_matches_dense(random_case(rng), rng)


@pytest.mark.parametrize("case", NAMED_CASES.values(), ids=NAMED_CASES.keys())
def test_named_case_matches_tf_conv2d(case, rng):
    assert_matches_dense(case, rng)


@pytest.mark.parametrize("dtype,rtol", [(tf.float16.as_numpy_dtype, 1e-2),
                                        (tf.bfloat16.as_numpy_dtype, 4e-2)],
                         ids=["float16", "bfloat16"])
def test_half_precision_matches_float32_conv(dtype, rtol, rng):
    case = Case(2, 9, 9, 8, 12, 3, 3, (1, 1), (1, 1), "SAME", 0.3, activation="relu")
    assert_matches_dense(case, rng, dtype=dtype, rtol=rtol)


def test_nan_in_input_reaches_only_outputs_that_read_it(rng):
    # A pruned weight is absent, so 0 * NaN is not propagated where the dense
    # conv would propagate it.
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1, 0, 0] = 1.0  # centre tap only
    x = rng.standard_normal((1, 5, 5, 1)).astype(np.float32)
    x[0, 2, 2, 0] = np.nan
    y = escort_tf.sparse_conv2d(x, escort_tf.CsrFilter.from_dense(kernel)).numpy()
    assert np.isnan(y[0, 2, 2, 0])
    assert np.isnan(y).sum() == 1
    assert np.isnan(tf.nn.conv2d(x, kernel, 1, "SAME").numpy()).sum() == 9


def test_empty_batch_gives_empty_output():
    csr = escort_tf.CsrFilter.from_dense(np.ones((3, 3, 2, 4), np.float32))
    y = escort_tf.sparse_conv2d(np.zeros((0, 5, 5, 2), np.float32), csr)
    assert y.shape == (0, 5, 5, 4)


def test_zero_size_spatial_dims_give_empty_output():
    csr = escort_tf.CsrFilter.from_dense(np.ones((3, 3, 2, 4), np.float32))
    y = escort_tf.sparse_conv2d(np.zeros((2, 0, 5, 2), np.float32), csr)
    assert y.shape == (2, 0, 5, 4)


def test_works_inside_tf_function_with_unknown_dims(rng):
    kernel = rng.standard_normal((3, 3, 4, 6)).astype(np.float32)
    csr = escort_tf.CsrFilter.from_dense(kernel)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32)])
    def conv(x):
        y = escort_tf.sparse_conv2d(x, csr, strides=2)
        assert y.shape.as_list() == [None, None, None, 6]
        return y

    x = rng.standard_normal((2, 9, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(conv(x), tf.nn.conv2d(x, kernel, 2, "SAME"),
                               rtol=1e-5, atol=1e-4)


def test_static_output_shape_is_inferred():
    csr = escort_tf.CsrFilter.from_dense(np.ones((3, 3, 4, 6), np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 11, 13], tf.float32)])
    def conv(x):
        return escort_tf.sparse_conv2d(x, csr, strides=(1, 2), padding="VALID",
                                       data_format="NCHW")

    assert conv.get_concrete_function().output_shapes.as_list() == [None, 6, 9, 6]


def test_results_are_identical_across_runs(rng):
    case = NAMED_CASES["batch_one_large_channels"]
    x, kernel, bias = make_inputs(case, rng)
    first = run_sparse(case, x, kernel, bias)
    for _ in range(3):
        np.testing.assert_array_equal(run_sparse(case, x, kernel, bias), first)


# --- Validation inside the op: malformed CSR arrays and attributes. ---------

def raw_op(mixed=False, **overrides):
    """Calls the generated op wrapper directly, bypassing Python checks;
    `mixed`: Escort>CsrConv2DV2 with a float16 input and float32 values."""
    args = dict(
        input=np.ones((1, 4, 4, 2), np.float32),
        row_offsets=np.array([0, 1, 2], np.int32),
        column_indices=np.array([0, 5], np.int32),
        values=np.array([1.0, 2.0], np.float32),
        bias=np.zeros([0], np.float32),
        filter_shape=[3, 3, 2, 2],
        strides=[1, 1], padding="SAME", explicit_paddings=[], dilations=[1, 1],
        data_format="NHWC", activation="NONE")
    if mixed:
        args["input"] = args["input"].astype(np.float16)
    args.update(overrides)
    ops = _loader.load_ops()
    return (ops.escort_csr_conv2dv2 if mixed else ops.escort_csr_conv2d)(**args)


def test_raw_op_valid_arguments_run():
    assert raw_op().shape == (1, 4, 4, 2)


OP_ERRORS = {
    "row_offsets_too_short": (dict(row_offsets=np.array([0, 2], np.int32)),
                              "row_offsets must have cout + 1 = 3 entries"),
    "row_offsets_not_starting_at_zero": (dict(row_offsets=np.array([1, 1, 2], np.int32)),
                                         "row_offsets[0] must be 0"),
    "row_offsets_decreasing": (dict(row_offsets=np.array([0, 2, 1], np.int32)),
                               "must not decrease"),
    "row_offsets_negative": (dict(row_offsets=np.array([0, -1, 2], np.int32)),
                             "must not decrease"),
    "row_offsets_past_end": (dict(row_offsets=np.array([0, 3, 3], np.int32)),
                             "exceeds the number of column_indices"),
    "row_offsets_last_short": (dict(row_offsets=np.array([0, 1, 1], np.int32)),
                               "row_offsets[-1] = 1 must equal"),
    "column_index_negative": (dict(column_indices=np.array([0, -1], np.int32)),
                              "column_indices[1] = -1 is outside [0, kh*kw*cin = 18)"),
    "column_index_too_large": (dict(column_indices=np.array([0, 18], np.int32)),
                               "column_indices[1] = 18 is outside"),
    "column_indices_descending": (dict(row_offsets=np.array([0, 2, 2], np.int32),
                                       column_indices=np.array([5, 3], np.int32)),
                                  "strictly ascend"),
    "values_length": (dict(values=np.array([1.0], np.float32)),
                      "values has 1 entries but column_indices has 2"),
    "bias_length": (dict(bias=np.zeros([3], np.float32)),
                    "bias must be empty or have cout = 2 entries, got 3"),
    "input_channels": (dict(filter_shape=[3, 3, 3, 2]),
                       "3 input channels but the input has 2"),
    "input_rank": (dict(input=np.ones((4, 4, 2), np.float32)), "input must be 4-D"),
    "filter_shape_rank": (dict(filter_shape=[3, 3, 2]), "filter_shape must have 4 entries"),
    "filter_shape_zero": (dict(filter_shape=[0, 3, 2, 2]),
                          "filter_shape entries must be positive"),
    "strides_zero": (dict(strides=[0, 1]), "strides must be 2 positive integers"),
    "strides_length": (dict(strides=[1, 1, 1, 1]), "strides must be 2 positive integers"),
    "dilations_negative": (dict(dilations=[1, -2]), "dilations must be 2 positive integers"),
    "explicit_paddings_missing": (dict(padding="EXPLICIT"),
                                  "explicit_paddings must have 4 entries"),
    "explicit_paddings_negative": (dict(padding="EXPLICIT", explicit_paddings=[0, -1, 0, 0]),
                                   "explicit_paddings must be non-negative"),
    "explicit_paddings_without_explicit": (dict(explicit_paddings=[1, 1, 1, 1]),
                                           "must be empty unless padding is EXPLICIT"),
    "valid_window_larger_than_input": (dict(padding="VALID", filter_shape=[5, 5, 2, 2],
                                            column_indices=np.array([0, 5], np.int32)),
                                       "smaller than the dilated filter"),
    "int32_overflow": (dict(input=np.ones((1, 1, 1, 2), np.float32), padding="EXPLICIT",
                            explicit_paddings=[1, 1, 0, 2**30 + 1]),
                       "exceeds the supported maximum"),
    "output_overflow": (dict(input=np.ones((1, 1, 1, 2), np.float32), padding="EXPLICIT",
                             explicit_paddings=[2**16, 2**16, 2**16, 2**16]),
                        "more than the 2^31-1"),
}


@pytest.mark.parametrize("mixed", [False, True], ids=["v1", "v2_mixed"])
@pytest.mark.parametrize("overrides,message", OP_ERRORS.values(), ids=OP_ERRORS.keys())
def test_op_rejects_invalid_input(overrides, message, mixed):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=re.escape(message)):
        raw_op(mixed=mixed, **overrides)


def test_v2_op_has_no_kernel_for_values_of_another_16_bit_type():
    # U must be T or float32: bfloat16 values for a float16 input have no
    # kernel, on any device.
    with pytest.raises(tf.errors.NotFoundError, match="Escort>CsrConv2DV2"):
        raw_op(mixed=True, values=np.array([1.0, 2.0], tf.bfloat16.as_numpy_dtype),
               bias=np.zeros([0], tf.bfloat16.as_numpy_dtype))


def test_op_validates_inside_graph_with_unknown_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def conv(column_indices):
        return raw_op(column_indices=column_indices)

    with pytest.raises(tf.errors.InvalidArgumentError, match="column_indices"):
        conv(tf.constant([0, 99], tf.int32))


# --- Python-side argument checks. -------------------------------------------

def small_filter(dtype=np.float32):
    return escort_tf.CsrFilter.from_dense(np.ones((3, 3, 2, 4), dtype))


PYTHON_ERRORS = {
    "filters_not_csr": (dict(filters=np.ones((3, 3, 2, 4), np.float32)), TypeError,
                        "filters must be an escort_tf.CsrFilter"),
    "strides_zero": (dict(strides=0), ValueError, "strides must be positive"),
    "strides_triple": (dict(strides=(1, 1, 1)), ValueError, "strides must be an int or a pair"),
    "strides_float": (dict(strides=1.5), TypeError, "strides must be an int or a pair"),
    "dilations_bool": (dict(dilations=True), TypeError, "dilations must be an int"),
    "padding_word": (dict(padding="FULL"), ValueError, "padding must be"),
    "padding_negative": (dict(padding=[[0, -1], [0, 0]]), ValueError, "non-negative"),
    "padding_shape": (dict(padding=[1, 1]), ValueError, "padding must be"),
    "padding_batch": (dict(padding=[[1, 0], [1, 1], [1, 1], [0, 0]]), ValueError,
                      "padding must be"),
    "strides_batch": (dict(strides=[2, 1, 1, 1]), ValueError,
                      "1 at the batch and channel positions"),
    "dilations_channel": (dict(dilations=[1, 1, 1, 2]), ValueError,
                          "1 at the batch and channel positions"),
    "data_format": (dict(data_format="NWHC"), ValueError, "data_format must be"),
    "activation": (dict(activation="gelu"), ValueError, "activation must be"),
    "input_rank": (dict(input=np.ones((4, 4, 2), np.float32)), ValueError, "input must be 4-D"),
    "input_dtype": (dict(input=np.ones((1, 4, 4, 2), np.int32)), TypeError,
                    "input must be float32"),
    "dtype_mismatch": (dict(filters=small_filter(np.float16),
                            input=np.ones((1, 4, 4, 2), tf.bfloat16.as_numpy_dtype)), TypeError,
                       "filter values are float16 but input is bfloat16"),
    "float32_input_with_16_bit_values": (dict(filters=small_filter(np.float16)), TypeError,
                                         "filter values are float16 but input is float32"),
    "channels": (dict(input=np.ones((1, 4, 4, 3), np.float32)), ValueError,
                 "input has 3 channels"),
    "bias_shape": (dict(bias=np.ones(3, np.float32)), ValueError, r"bias must have shape \[4\]"),
    "bias_dtype": (dict(bias=np.ones(4, np.float64)), TypeError,
                   "bias is float64 but filter values are float32"),
    "mixed_bias_dtype": (dict(input=np.ones((1, 4, 4, 2), np.float16),
                              bias=np.ones(4, np.float16)), TypeError,
                         "bias is float16 but filter values are float32"),
    "engine_upper_case": (dict(engine="AUTO"), ValueError,
                          "engine must be one of 'auto', 'cuda_cores', 'tensor_cores_2_4', "
                          "got 'AUTO'"),
    "engine_unknown": (dict(engine="tensor_cores"), ValueError, "engine must be one of"),
    "engine_none": (dict(engine=None), ValueError, "engine must be one of .*got None"),
}


@pytest.mark.parametrize("overrides,error,message", PYTHON_ERRORS.values(),
                         ids=PYTHON_ERRORS.keys())
def test_sparse_conv2d_rejects_bad_arguments(overrides, error, message):
    args = dict(input=np.ones((1, 4, 4, 2), np.float32), filters=small_filter())
    args.update(overrides)
    with pytest.raises(error, match=message):
        escort_tf.sparse_conv2d(**args)


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_accepts_tf_nn_conv2d_four_element_arguments(data_format, rng):
    # Code written for tf.nn.conv2d passes strides, dilations and explicit
    # padding with entries for the batch and channel dimensions too.
    x = rng.standard_normal((2, 9, 8, 3) if data_format == "NHWC" else (2, 3, 9, 8))
    kernel = rng.standard_normal((3, 3, 3, 4)) * (rng.random((3, 3, 3, 4)) < 0.4)
    csr = escort_tf.CsrFilter.from_dense(kernel.astype(np.float32))
    spatial = (1, 2) if data_format == "NHWC" else (2, 3)

    def four(h, w, fill):
        out = [fill] * 4
        out[spatial[0]], out[spatial[1]] = h, w
        return out

    short = escort_tf.sparse_conv2d(x.astype(np.float32), csr, strides=(2, 1),
                                    padding=[[1, 0], [2, 1]], dilations=(1, 2),
                                    data_format=data_format)
    full = escort_tf.sparse_conv2d(x.astype(np.float32), csr, strides=four(2, 1, 1),
                                   padding=four([1, 0], [2, 1], [0, 0]),
                                   dilations=four(1, 2, 1), data_format=data_format)
    np.testing.assert_array_equal(short.numpy(), full.numpy())


def test_gpu_kernel_registration_matches_build_flavour():
    # The CUDA flavour registers a GPU kernel even on a machine without a
    # GPU; it is compiled and linked but cannot run here.
    from tensorflow.python.framework import kernels  # pylint: disable=import-outside-toplevel
    expected_gpu = os.environ.get("ESCORT_TF_EXPECT_CUDA")
    for op in ("Escort>CsrConv2D", "Escort>CsrConv2DV2"):
        devices = {k.device_type for k in kernels.get_registered_kernels_for_op(op).kernel}
        assert "CPU" in devices
        if expected_gpu is not None:
            assert ("GPU" in devices) == (expected_gpu == "1")


# --- engine: which GPU kernel; the CPU runs one kernel for all of them. -------

@pytest.mark.parametrize("engine", escort_tf.ops.ENGINES)
def test_engine_is_passed_to_the_op_in_upper_case(engine):
    csr = small_filter()
    conv = tf.function(lambda x: escort_tf.sparse_conv2d(x, csr, engine=engine))
    graph = conv.get_concrete_function(tf.TensorSpec([1, 4, 4, 2], tf.float32)).graph
    (op,) = [op for op in graph.get_operations() if op.type == "Escort>CsrConv2D"]
    assert op.get_attr("engine") == engine.upper().encode()


def test_op_rejects_an_unknown_engine_attr():
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="engine"):
        raw_op(engine="FASTEST")


@pytest.mark.parametrize("pattern", ["2_4", "unstructured"])
# Half precision is summed in float32 and rounded once: at most half an ulp.
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (tf.float16.as_numpy_dtype, 2**-11),
                                        (tf.bfloat16.as_numpy_dtype, 2**-8)],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("engine", escort_tf.ops.ENGINES)
def test_every_engine_matches_tf_conv2d_on_cpu(engine, dtype, rtol, pattern, rng):
    # Even "tensor_cores_2_4" with a filter it could not take on a GPU: the
    # CPU ignores the engine, so a graph pinned to one still runs here.
    shape = (3, 3, 32, 8)
    kernel = (pruned_models.kernel_2_4(rng, shape) if pattern == "2_4" else
              rng.standard_normal(shape) * (rng.random(shape) < 0.6)).astype(dtype)
    x = rng.standard_normal((2, 7, 6, 32)).astype(dtype)
    bias = rng.standard_normal(8).astype(dtype)
    with tf.device("/CPU:0"):
        y = escort_tf.sparse_conv2d(x, escort_tf.CsrFilter.from_dense(kernel), bias=bias,
                                    activation="relu", engine=engine).numpy()
        expected = tf.nn.relu(tf.nn.conv2d(x.astype(np.float32), kernel.astype(np.float32), 1,
                                           "SAME") + bias.astype(np.float32)).numpy()
    assert y.dtype == dtype
    # Plus float32 summation in another order than tf.nn.conv2d's.
    scale = np.abs(x.astype(np.float32)).max() * np.abs(kernel.astype(np.float32)).sum(
        axis=(0, 1, 2)).max()
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=rtol, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype,rtol", [(tf.float16, 2**-11), (tf.bfloat16, 2**-8)],
                         ids=["float16", "bfloat16"])
def test_float32_values_with_a_16_bit_input_run_on_v2_without_casts(dtype, rtol, rng):
    # Mixed precision: float32 values and bias go to Escort>CsrConv2DV2 as
    # they are (no Cast op in the graph), and the CPU computes with them
    # unrounded, so the result is the float32 convolution of the 16-bit
    # input rounded once.
    kernel = (rng.standard_normal((3, 3, 8, 5)) * (rng.random((3, 3, 8, 5)) < 0.5)).astype(
        np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    x = tf.cast(rng.standard_normal((2, 6, 7, 8)), dtype)
    csr = escort_tf.CsrFilter.from_dense(kernel)
    conv = tf.function(lambda x: escort_tf.sparse_conv2d(x, csr, bias=bias, activation="relu"))
    graph = conv.get_concrete_function(tf.TensorSpec(x.shape, dtype)).graph
    (op,) = [op for op in graph.get_operations() if op.type.startswith("Escort>")]
    assert op.type == "Escort>CsrConv2DV2" and op.get_attr("U") == tf.float32
    assert op.get_attr("T") == dtype
    assert not [o for o in graph.get_operations() if o.type == "Cast"]
    with tf.device("/CPU:0"):
        y = conv(x)
    assert y.dtype == dtype
    x64 = tf.cast(x, tf.float64)
    expected = tf.nn.relu(tf.nn.conv2d(x64, kernel.astype(np.float64), 1, "SAME") + bias)
    scale = np.abs(x64.numpy()).max() * np.abs(kernel).sum(axis=(0, 1, 2)).max()
    np.testing.assert_allclose(tf.cast(y, tf.float64).numpy(), expected.numpy(), rtol=rtol,
                               atol=1e-6 * scale)
