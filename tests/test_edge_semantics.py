"""Edge semantics documented in the README's "Robustness" section.

Empty batch, zero-size height and the NaN-in-input case are in test_ops.py;
these are the rest: zero-size width, an all-zero filter, non-finite inputs
and weights, float16 range, and the cost of a huge dilation.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import escort_tf

F16 = tf.float16.as_numpy_dtype
BF16 = tf.bfloat16.as_numpy_dtype


def conv(x, kernel, **kwargs):
    return escort_tf.sparse_conv2d(x, escort_tf.CsrFilter.from_dense(kernel), **kwargs).numpy()


@pytest.mark.parametrize("padding", ["SAME", "VALID", [[1, 1], [1, 1]]],
                         ids=["same", "valid", "explicit"])
def test_zero_width_gives_empty_output(padding):
    kernel = np.ones((3, 3, 2, 4), np.float32)
    y = conv(np.zeros((2, 5, 0, 2), np.float32), kernel, padding=padding)
    assert y.size == 0 and y.shape[0] == 2 and y.shape[3] == 4


def test_empty_batch_nchw_gives_empty_output():
    kernel = np.ones((3, 3, 2, 4), np.float32)
    assert conv(np.zeros((0, 2, 5, 5), np.float32), kernel, data_format="NCHW").shape == (0, 4, 5, 5)


@pytest.mark.parametrize("activation,expected", [(None, [-1.5, 0.25, 9.0]),
                                                 ("relu", [0.0, 0.25, 9.0]),
                                                 ("relu6", [0.0, 0.25, 6.0])])
def test_all_zero_filter_gives_activation_of_bias(activation, expected):
    # nnz = 0: every output is exactly act(bias), whatever the input holds,
    # NaN included (no weight reads it).
    kernel = np.zeros((3, 3, 2, 3), np.float32)
    x = np.full((1, 4, 4, 2), np.nan, np.float32)
    y = conv(x, kernel, bias=np.array([-1.5, 0.25, 9.0], np.float32), activation=activation)
    np.testing.assert_array_equal(y, np.broadcast_to(np.float32(expected), y.shape))


def test_inf_in_input_is_read_only_by_stored_taps():
    kernel = np.zeros((1, 1, 2, 2), np.float32)
    kernel[0, 0, 0, 0] = 2.0  # output 0 reads channel 0 only
    kernel[0, 0, 1, 1] = 3.0  # output 1 reads channel 1 only
    x = np.ones((1, 2, 2, 2), np.float32)
    x[0, 0, 0, 1] = np.inf  # channel 1: pruned for output 0
    y = conv(x, kernel)
    assert np.all(np.isfinite(y[..., 0]))  # dense conv: 0 * inf = NaN here
    assert y[0, 0, 0, 1] == np.inf
    assert np.isnan(tf.nn.conv2d(x, kernel, 1, "SAME").numpy()[0, 0, 0, 0])


def test_opposite_infinities_give_nan():
    kernel = np.ones((1, 2, 1, 1), np.float32)
    x = np.array([np.inf, -np.inf], np.float32).reshape(1, 1, 2, 1)
    assert np.isnan(conv(x, kernel, padding="VALID")).all()


def test_nan_weight_poisons_every_output_reading_it_in_bounds():
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1, 0, 0] = np.nan  # centre tap: always in bounds
    assert np.isnan(conv(np.ones((1, 4, 4, 1), np.float32), kernel)).all()


@pytest.mark.parametrize("dilations", [(1, 1), (10_000_000, 1)],
                         ids=["band_buffer_path", "direct_path"])
@pytest.mark.parametrize("weight", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_weight_multiplies_the_zero_padding(weight, dilations):
    # Padding is zeros that get multiplied, as in a dense conv over a
    # zero-padded input: 0 * NaN = NaN even where the tap lies in the padding.
    # (tf.nn.conv2d's oneDNN kernel skips padded taps and stays finite there;
    # the README says so.) Both CPU paths must agree, so this runs on the CPU
    # also where a GPU is present (tests/gpu has the GPU kernel's case).
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[0, 0, 0, 0] = weight  # top-left tap: in the padding on the first row/column
    with tf.device("/CPU:0"):
        y = conv(np.ones((1, 4, 4, 1), np.float32), kernel, dilations=dilations)
    assert np.isnan(y[0, 0, :, 0]).all() and np.isnan(y[0, :, 0, 0]).all()


def test_float16_result_beyond_range_is_inf():
    # Half inputs are computed in float32 and the result cast back: one term
    # of 300 * 300 = 90000 > 65504 (float16 max) becomes +inf.
    kernel = np.full((1, 1, 1, 2), [300.0, -300.0], F16)
    y = conv(np.full((1, 1, 1, 1), 300.0, F16), kernel)
    assert y.dtype == F16
    assert y[0, 0, 0, 0] == np.inf and y[0, 0, 0, 1] == -np.inf


def test_float16_intermediate_overflow_cancels_in_float32():
    # 1000 * 100 - 1000 * 100: each term overflows float16 but not the
    # float32 accumulator, so the exact 0 comes back.
    kernel = np.array([100.0, -100.0], F16).reshape(1, 1, 2, 1)
    y = conv(np.full((1, 1, 1, 2), 1000.0, F16), kernel)
    assert y.dtype == F16 and y[0, 0, 0, 0] == 0


def test_bfloat16_has_float32_range():
    kernel = np.full((1, 1, 1, 1), 1e20, BF16)
    y = conv(np.full((1, 1, 1, 1), 1e15, BF16), kernel)
    assert np.isfinite(y.astype(np.float32)).all() and y.astype(np.float32)[0, 0, 0, 0] > 9e34


_DILATION_SCRIPT = textwrap.dedent("""
    import resource
    import numpy as np
    import tensorflow as tf
    import escort_tf
    tf.config.set_visible_devices([], "GPU")  # the CPU kernel's band buffer is measured
    kernel = np.zeros((5, 1, 4, 5), np.float32)
    kernel[0, 0, 0, 0] = 1.0
    csr = escort_tf.CsrFilter.from_dense(kernel)
    x = np.ones((1, 8, 4, 4), np.float32)
    escort_tf.sparse_conv2d(x, csr, dilations=(1, 1)).numpy()  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    escort_tf.sparse_conv2d(x, csr, dilations=(1_000_000, 1)).numpy()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
""")


def test_huge_dilation_costs_memory_of_the_output_not_of_the_padding():
    # A subprocess, so the peak RSS is this call's alone.
    result = subprocess.run([sys.executable, "-c", _DILATION_SCRIPT], capture_output=True,
                            text=True, check=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    peak_growth_mib = int(result.stdout.split()[-1])
    assert peak_growth_mib < 64, f"one call on a 1x8x4x4 input raised peak RSS {peak_growth_mib} MiB"
