"""CsrFilter: the documented column order, dense round trips, immutability, validation."""

import re

import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import strategies as st

import pruned_models
from escort_tf import CsrFilter

BFLOAT16 = tf.bfloat16.as_numpy_dtype


def naive_csr(kernel):
    """The spec written out loop by loop: row o, column (r*kw + s)*cin + c."""
    kh, kw, cin, cout = kernel.shape
    offsets, columns, values = [0], [], []
    for o in range(cout):
        for r in range(kh):
            for s in range(kw):
                for c in range(cin):
                    if kernel[r, s, c, o] != 0:
                        columns.append((r * kw + s) * cin + c)
                        values.append(kernel[r, s, c, o])
        offsets.append(len(columns))
    return offsets, columns, values


def sparse_kernel(rng, shape, sparsity, dtype=np.float32):
    kernel = rng.standard_normal(shape).astype(np.float32)
    kernel[rng.random(shape) < sparsity] = 0
    return kernel.astype(dtype)


@pytest.mark.parametrize("shape,sparsity,dtype", [
    pytest.param((3, 3, 4, 8), 0.9, np.float32, id="3x3_90pct"),
    pytest.param((1, 1, 16, 5), 0.5, np.float32, id="1x1_50pct"),
    pytest.param((2, 5, 3, 1), 0.0, np.float32, id="rect_dense_single_cout"),
    pytest.param((3, 3, 2, 4), 1.0, np.float32, id="all_zero"),
    pytest.param((7, 7, 3, 2), 0.99, np.float32, id="7x7_99pct"),
    pytest.param((3, 3, 4, 8), 0.7, np.float16, id="float16"),
    pytest.param((3, 3, 4, 8), 0.7, BFLOAT16, id="bfloat16"),
])
def test_from_dense_matches_spec_and_round_trips(rng, shape, sparsity, dtype):
    kernel = sparse_kernel(rng, shape, sparsity, dtype)
    f = CsrFilter.from_dense(kernel)
    offsets, columns, values = naive_csr(kernel)
    np.testing.assert_array_equal(f.row_offsets, offsets)
    np.testing.assert_array_equal(f.column_indices, columns)
    np.testing.assert_array_equal(f.values, np.asarray(values, dtype))
    assert f.row_offsets.dtype == np.int32 and f.column_indices.dtype == np.int32
    assert f.values.dtype == dtype and f.dtype == tf.as_dtype(dtype)
    assert f.filter_shape == shape
    assert f.nnz == np.count_nonzero(kernel)
    assert f.density == pytest.approx(np.count_nonzero(kernel) / kernel.size)
    dense = f.to_dense()
    assert dense.dtype == dtype
    np.testing.assert_array_equal(dense, kernel)


def test_column_index_of_one_tap():
    kernel = np.zeros((3, 2, 5, 4), np.float32)
    kernel[2, 1, 3, 1] = 7.0  # r=2, s=1, c=3, o=1
    f = CsrFilter.from_dense(kernel)
    np.testing.assert_array_equal(f.row_offsets, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(f.column_indices, [(2 * 2 + 1) * 5 + 3])
    np.testing.assert_array_equal(f.values, [7.0])


@pytest.mark.parametrize("wrap", [
    pytest.param(lambda a: a, id="numpy"),
    pytest.param(tf.constant, id="tf_tensor"),
    pytest.param(tf.Variable, id="tf_variable"),
])
def test_from_dense_with_mask_drops_masked_entries(rng, wrap):
    kernel = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)  # no zeros: mask decides
    mask = (rng.random(kernel.shape) > 0.6).astype(np.float32)
    f = CsrFilter.from_dense(wrap(kernel), mask=wrap(mask))
    np.testing.assert_array_equal(f.to_dense(), kernel * mask)
    assert f.nnz == np.count_nonzero(mask)


def test_arrays_are_read_only_copies(rng):
    row_offsets = np.array([0, 1, 2], np.int32)
    column_indices = np.array([0, 3], np.int32)
    values = np.array([1.0, 2.0], np.float32)
    f = CsrFilter(row_offsets, column_indices, values, (1, 2, 2, 2))
    values[0] = 99.0
    column_indices[0] = 1
    assert f.values[0] == 1.0 and f.column_indices[0] == 0
    for array in (f.row_offsets, f.column_indices, f.values):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0
    with pytest.raises(AttributeError):
        f.values = values


def test_python_lists_become_float32_and_int32():
    f = CsrFilter([0, 1], [2], [0.5], (1, 1, 3, 1))
    assert f.values.dtype == np.float32 and f.row_offsets.dtype == np.int32


def test_equality_and_repr(rng):
    kernel = sparse_kernel(rng, (3, 3, 2, 4), 0.5)
    a, b = CsrFilter.from_dense(kernel), CsrFilter.from_dense(kernel.copy())
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    kernel[kernel != 0] *= 2
    assert a != CsrFilter.from_dense(kernel)
    assert a != CsrFilter.from_dense(kernel.astype(np.float16))
    assert re.fullmatch(r"CsrFilter\(filter_shape=\(3, 3, 2, 4\), nnz=\d+, density=0\.\d{3}, "
                        r"dtype=float32\)", repr(a))


GOOD = dict(row_offsets=[0, 2, 3], column_indices=[1, 4, 0], values=np.float32([1, 2, 3]),
            filter_shape=(1, 3, 2, 2))


@pytest.mark.parametrize("change,error,match", [
    pytest.param(dict(filter_shape=(3, 3, 2)), ValueError, "filter_shape", id="shape_rank"),
    pytest.param(dict(filter_shape=(1, 3, 0, 2)), ValueError, "filter_shape.*positive",
                 id="shape_zero_dim"),
    pytest.param(dict(filter_shape=(1, 3, 2.0, 2)), TypeError, "filter_shape", id="shape_float"),
    pytest.param(dict(filter_shape=5), ValueError, "filter_shape", id="shape_scalar"),
    pytest.param(dict(row_offsets=[0, 2]), ValueError, r"row_offsets.*cout \+ 1 = 3",
                 id="offsets_length"),
    pytest.param(dict(row_offsets=[1, 2, 3]), ValueError, r"row_offsets\[0\]",
                 id="offsets_start"),
    pytest.param(dict(row_offsets=[0, 3, 2], column_indices=[1, 4], values=np.float32([1, 2])),
                 ValueError, "non-decreasing", id="offsets_decreasing"),
    pytest.param(dict(row_offsets=[[0, 2, 3]]), ValueError, "row_offsets.*1-D",
                 id="offsets_2d"),
    pytest.param(dict(row_offsets=[0.0, 2.0, 3.0]), TypeError, "row_offsets.*integers",
                 id="offsets_float"),
    pytest.param(dict(row_offsets=[0, 2, 2**33]), ValueError, "row_offsets.*int32",
                 id="offsets_overflow"),
    pytest.param(dict(column_indices=[1, 4]), ValueError, "column_indices.*3 entries",
                 id="columns_length"),
    pytest.param(dict(column_indices=[1, 6, 0]), ValueError, r"column_indices\[1\].*\[0, .*6\)",
                 id="columns_too_large"),
    pytest.param(dict(column_indices=[-1, 4, 0]), ValueError, r"column_indices\[0\]",
                 id="columns_negative"),
    pytest.param(dict(column_indices=[4, 1, 0]), ValueError, "ascending", id="columns_unsorted"),
    pytest.param(dict(column_indices=[1, 1, 0]), ValueError, "ascending",
                 id="columns_duplicate"),
    pytest.param(dict(values=np.float32([1, 2])), ValueError, "values.*3 entries",
                 id="values_length"),
    pytest.param(dict(values=np.float64([1, 2, 3])), TypeError, "values.*float64",
                 id="values_float64"),
    pytest.param(dict(values=np.int32([1, 2, 3])), TypeError, "values.*int32", id="values_int"),
    pytest.param(dict(values=np.float32([[1, 2, 3]])), ValueError, "values.*1-D",
                 id="values_2d"),
])
def test_constructor_rejects(change, error, match):
    with pytest.raises(error, match=match):
        CsrFilter(**{**GOOD, **change})


def test_constructor_accepts_the_good_case_and_empty_rows():
    f = CsrFilter(**GOOD)
    assert f.nnz == 3
    empty = CsrFilter([0, 0, 0], [], np.zeros([0], np.float32), (1, 3, 2, 2))
    assert empty.nnz == 0 and empty.density == 0.0
    np.testing.assert_array_equal(empty.to_dense(), np.zeros((1, 3, 2, 2)))


@pytest.mark.parametrize("kernel,mask,error,match", [
    pytest.param(np.zeros((3, 3, 2), np.float32), None, ValueError, "kernel.*4-D", id="rank3"),
    pytest.param(np.zeros((1, 1, 2, 2)), None, TypeError, "kernel.*float64", id="float64"),
    pytest.param(np.zeros((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 3)), ValueError,
                 "mask.*shape", id="mask_shape"),
])
def test_from_dense_rejects(kernel, mask, error, match):
    with pytest.raises(error, match=match):
        CsrFilter.from_dense(kernel, mask)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=4, max_dims=4, max_side=4),
    elements=st.sampled_from([0.0, 0.0, 0.0, -1.5, 2.0, 3.25])))
def test_round_trip_property(kernel):
    f = CsrFilter.from_dense(kernel)
    np.testing.assert_array_equal(f.to_dense(), kernel)
    rebuilt = CsrFilter(f.row_offsets, f.column_indices, f.values, f.filter_shape)
    assert rebuilt == f


# --- 2:4 structure along the input channels. ---------------------------------

def is_2_4_dense(kernel):
    """The definition on the dense kernel: at most 2 nonzeros per aligned group of 4 channels."""
    kh, kw, cin, cout = kernel.shape
    return cin % 4 == 0 and (kernel.reshape(kh, kw, cin // 4, 4, cout) != 0).sum(3).max() <= 2


@pytest.mark.parametrize("shape", [(3, 3, 32, 16), (1, 1, 4, 1), (5, 3, 8, 7), (1, 1, 64, 64),
                                   (2, 2, 12, 3)], ids=str)
def test_random_2_4_filters_are_detected(rng, shape):
    f = CsrFilter.from_dense(pruned_models.kernel_2_4(rng, shape))
    assert f.is_2_4
    assert 0.45 < 1 - f.density <= 1.0  # 2:4 is at least half zeros


@pytest.mark.parametrize("tap,group", [((0, 0), 0), ((1, 2), 3), ((2, 2), 7)],
                         ids=["first_group", "middle_group", "last_group"])
def test_a_group_with_three_weights_is_not_2_4(rng, tap, group):
    kernel = pruned_models.kernel_2_4(rng, (3, 3, 32, 5))
    kernel[tap[0], tap[1], 4 * group:4 * group + 4, 4] = [1.0, -2.0, 0.0, 3.0]
    assert not CsrFilter.from_dense(kernel).is_2_4


def test_groups_are_aligned_and_per_output_channel():
    kernel = np.zeros((1, 1, 8, 2), np.float32)
    kernel[0, 0, 2:6, 0] = 1.0  # 4 channels in a row, but 2 in each aligned group
    kernel[0, 0, 4:6, 1] = 1.0  # the same group, next output channel: counted apart
    assert CsrFilter.from_dense(kernel).is_2_4
    kernel[0, 0, 6, 0] = 1.0  # 3 in output 0's group of channels 4..7
    assert not CsrFilter.from_dense(kernel).is_2_4


@pytest.mark.parametrize("cin", [1, 3, 6, 33])
def test_input_channels_not_a_multiple_of_4_are_never_2_4(cin):
    kernel = np.zeros((3, 3, cin, 4), np.float32)
    kernel[1, 1, 0, 0] = 1.0  # a single weight: would be 2:4 if cin allowed groups
    f = CsrFilter.from_dense(kernel)
    assert not f.is_2_4 and not f.tensor_core_eligible


@pytest.mark.parametrize("cin,eligible", [(32, True), (48, False), (64, True), (16, False)])
def test_tensor_cores_need_32_input_channels_per_step(rng, cin, eligible):
    f = CsrFilter.from_dense(pruned_models.kernel_2_4(rng, (3, 3, cin, 8)))
    assert f.is_2_4 and f.tensor_core_eligible == eligible


def test_tensor_cores_need_the_2_4_pattern(rng):
    kernel = pruned_models.kernel_2_4(rng, (3, 3, 32, 8))
    kernel[0, 0, :3, 0] = 1.0
    f = CsrFilter.from_dense(kernel)
    assert not f.is_2_4 and not f.tensor_core_eligible


def test_stored_zeros_count_as_in_the_gpu_kernel():
    f = CsrFilter([0, 3], [0, 1, 2], np.float32([1.0, 0.0, 2.0]), (1, 1, 4, 1))
    assert not f.is_2_4


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(hnp.arrays(
    np.float32, st.tuples(st.integers(1, 3), st.integers(1, 3), st.sampled_from([4, 8, 6]),
                          st.integers(1, 4)),
    elements=st.sampled_from([0.0, 0.0, 0.0, 1.0])))
def test_is_2_4_matches_the_definition(kernel):
    assert CsrFilter.from_dense(kernel).is_2_4 == is_2_4_dense(kernel)
