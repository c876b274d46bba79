"""`CsrFilter`: a pruned convolution filter in the CSR layout the op reads.

A dense HWIO filter of shape `(kh, kw, cin, cout)` is stored as the CSR matrix
of `reshape(transpose(kernel, [3, 0, 1, 2]), [cout, kh * kw * cin])`: row `o`
holds output channel `o`, and column `j = (r * kw + s) * cin + c` is filter tap
`(r, s, c)`. Column indices ascend within each row. Zeros are not stored, so a
pruned weight is absent rather than a stored zero.

Example:

    kernel = np.zeros((3, 3, 2, 4), np.float32)
    kernel[1, 1, 0, 2] = 0.5
    f = CsrFilter.from_dense(kernel)
    f.nnz, f.column_indices   # -> 1, array([8], dtype=int32)
    np.array_equal(f.to_dense(), kernel)   # -> True
"""

import numpy as np
import tensorflow as tf

# Value dtypes the `Escort>CsrConv2D` op accepts (its attr `T`).
SUPPORTED_DTYPES = (tf.float32, tf.float16, tf.bfloat16)

# The GPU's 2:4 tensor-core kernel takes this many input channels per step.
TENSOR_CORE_CHANNELS = 32


def _as_numpy(value, name):
    """Returns `value` (numpy, tf.Tensor or tf.Variable) as a numpy array."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        try:
            return value.numpy()
        except (AttributeError, NotImplementedError) as e:
            raise TypeError(f"`{name}` must be a concrete value, got a symbolic tensor.") from e
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as e:  # e.g. ragged nested lists
        raise TypeError(f"`{name}` must be array-like, got {type(value).__name__}: {e}") from e


def _frozen(array):
    array = np.array(array, copy=True)  # never alias the caller's buffer
    array.flags.writeable = False
    return array


def _check_value_dtype(dtype, name):
    try:
        tf_dtype = tf.as_dtype(dtype)
    except TypeError as e:
        raise TypeError(f"`{name}` has dtype {dtype}, which is not a float type.") from e
    if tf_dtype not in SUPPORTED_DTYPES:
        names = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise TypeError(f"`{name}` has dtype {tf_dtype.name}; supported: {names}.")


def _index_array(value, name):
    array = _as_numpy(value, name)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integers, got dtype {array.dtype}.")
    if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise ValueError(f"`{name}` has entries outside the int32 range.")
    return array.astype(np.int32)


def row_ids_of(row_offsets) -> np.ndarray:
    """int64 `[nnz]`: the row of each stored weight, from CSR row offsets."""
    return np.repeat(np.arange(len(row_offsets) - 1), np.diff(row_offsets))


class CsrFilter:
    """An immutable sparse conv filter in CSR form (see the module docstring).

    Attributes:
        row_offsets: int32 `[cout + 1]`, non-decreasing from 0 to `nnz`.
        column_indices: int32 `[nnz]`, in `[0, kh * kw * cin)`, ascending per row.
        values: `[nnz]` nonzero weights (float32, float16 or bfloat16).
        filter_shape: `(kh, kw, cin, cout)` of the dense HWIO filter.

    The arrays are read-only copies; a `CsrFilter` never aliases its inputs.

    Example:

        f = CsrFilter(row_offsets=[0, 1, 1], column_indices=[3],
                      values=np.float32([2.0]), filter_shape=(1, 2, 2, 2))
        f.to_dense()[0, 1, 1, 0]   # -> 2.0
    """

    __slots__ = ("_row_offsets", "_column_indices", "_values", "_filter_shape")

    def __init__(self, row_offsets, column_indices, values, filter_shape):
        """Validates and stores the CSR arrays.

        Args:
            row_offsets: integer array-like `[cout + 1]`.
            column_indices: integer array-like `[nnz]`.
            values: float array `[nnz]`; its dtype is kept (float32, float16 or
                bfloat16); a Python list or tuple becomes float32.
            filter_shape: `(kh, kw, cin, cout)`, positive ints.

        Raises:
            TypeError: an argument has the wrong type or dtype.
            ValueError: the arrays are inconsistent; the message names the argument.
        """
        try:
            shape = tuple(filter_shape)
        except TypeError:
            shape = ()
        if len(shape) != 4:
            raise ValueError(f"`filter_shape` must be (kh, kw, cin, cout), got {filter_shape!r}.")
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
            raise TypeError(f"`filter_shape` must hold ints, got {filter_shape!r}.")
        shape = tuple(int(d) for d in shape)
        if min(shape) <= 0:
            raise ValueError(f"`filter_shape` dims must be positive, got {shape}.")
        kh, kw, cin, cout = shape
        columns = kh * kw * cin

        row_offsets = _index_array(row_offsets, "row_offsets")
        column_indices = _index_array(column_indices, "column_indices")
        if isinstance(values, (list, tuple)):
            values = np.asarray(values, np.float32)  # plain Python floats carry no dtype
        else:
            values = _as_numpy(values, "values")
        if values.ndim != 1:
            raise ValueError(f"`values` must be 1-D, got shape {values.shape}.")
        _check_value_dtype(values.dtype, "values")

        if row_offsets.shape[0] != cout + 1:
            raise ValueError(
                f"`row_offsets` must have cout + 1 = {cout + 1} entries for filter_shape "
                f"{shape}, got {row_offsets.shape[0]}.")
        if row_offsets[0] != 0:
            raise ValueError(f"`row_offsets[0]` must be 0, got {row_offsets[0]}.")
        steps = np.diff(row_offsets)
        if (steps < 0).any():
            row = int(np.argmax(steps < 0))
            raise ValueError(
                f"`row_offsets` must be non-decreasing; row_offsets[{row + 1}]="
                f"{row_offsets[row + 1]} < row_offsets[{row}]={row_offsets[row]}.")
        nnz = int(row_offsets[-1])
        if column_indices.shape[0] != nnz:
            raise ValueError(
                f"`column_indices` must have row_offsets[-1] = {nnz} entries, got "
                f"{column_indices.shape[0]}.")
        if values.shape[0] != nnz:
            raise ValueError(
                f"`values` must have row_offsets[-1] = {nnz} entries, got {values.shape[0]}.")
        if nnz:
            bad = (column_indices < 0) | (column_indices >= columns)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"`column_indices[{i}]` = {column_indices[i]} is outside [0, kh*kw*cin = "
                    f"{columns}).")
            # Ascending within a row: every step is positive except across row starts.
            rising = np.diff(column_indices) > 0
            row_starts = row_offsets[1:-1]
            rising[row_starts[(row_starts > 0) & (row_starts < nnz)] - 1] = True
            if not rising.all():
                i = int(np.argmax(~rising))
                raise ValueError(
                    f"`column_indices` must be strictly ascending within a row; "
                    f"column_indices[{i + 1}]={column_indices[i + 1]} follows "
                    f"column_indices[{i}]={column_indices[i]}.")

        self._row_offsets = _frozen(row_offsets)
        self._column_indices = _frozen(column_indices)
        self._values = _frozen(values)
        self._filter_shape = shape

    @classmethod
    def from_dense(cls, kernel, mask=None):
        """Builds a `CsrFilter` from a dense HWIO kernel, dropping zeros.

        Args:
            kernel: `(kh, kw, cin, cout)` float array, `tf.Tensor` or `tf.Variable`.
            mask: optional array of the same shape (e.g. a TFMOT pruning mask);
                entries where it is zero are dropped even if the kernel holds a
                nonzero there, so `kernel * mask` is what gets stored.

        Returns:
            The `CsrFilter` with the kernel's dtype.

        Example:

            f = CsrFilter.from_dense(layer.kernel, mask=wrapper.pruning_vars[0][1])
        """
        kernel = _as_numpy(kernel, "kernel")
        if kernel.ndim != 4:
            raise ValueError(f"`kernel` must be 4-D (kh, kw, cin, cout), got shape {kernel.shape}.")
        _check_value_dtype(kernel.dtype, "kernel")
        keep = kernel != 0
        if mask is not None:
            mask = _as_numpy(mask, "mask")
            if mask.shape != kernel.shape:
                raise ValueError(
                    f"`mask` shape {mask.shape} must equal the kernel shape {kernel.shape}.")
            keep &= mask != 0
        kh, kw, cin, cout = kernel.shape
        rows = np.transpose(kernel, [3, 0, 1, 2]).reshape(cout, kh * kw * cin)
        rows_keep = np.transpose(keep, [3, 0, 1, 2]).reshape(cout, kh * kw * cin)
        # np.nonzero walks row-major, so columns come out ascending within each row.
        row_ids, column_indices = np.nonzero(rows_keep)
        row_offsets = np.zeros(cout + 1, np.int64)
        np.cumsum(np.bincount(row_ids, minlength=cout), out=row_offsets[1:])
        return cls(row_offsets, column_indices, rows[row_ids, column_indices], kernel.shape)

    def to_dense(self):
        """Returns the dense HWIO kernel as a numpy array of `self.dtype`."""
        kh, kw, cin, cout = self._filter_shape
        rows = np.zeros((cout, kh * kw * cin), self._values.dtype)
        rows[self.row_ids, self._column_indices] = self._values
        return np.transpose(rows.reshape(cout, kh, kw, cin), [1, 2, 3, 0])

    @property
    def row_ids(self):
        """int64 `[nnz]`: the row (output channel) of each stored weight."""
        return row_ids_of(self._row_offsets)

    @property
    def row_offsets(self):
        return self._row_offsets

    @property
    def column_indices(self):
        return self._column_indices

    @property
    def values(self):
        return self._values

    @property
    def filter_shape(self):
        return self._filter_shape

    @property
    def dtype(self):
        """The values' dtype as a `tf.DType`."""
        return tf.as_dtype(self._values.dtype)

    @property
    def nnz(self):
        """Number of stored (nonzero) weights."""
        return int(self._values.shape[0])

    @property
    def density(self):
        """`nnz / (kh * kw * cin * cout)`, in [0, 1]."""
        return self.nnz / float(np.prod(self._filter_shape))

    @property
    def is_2_4(self):
        """Whether the filter is 2:4 sparse along its input channels.

        True when `cin % 4 == 0` and, for every output channel and tap
        `(r, s)`, each aligned group of 4 consecutive input channels holds at
        most 2 stored weights: the pattern of TFMOT's
        `prune_low_magnitude(..., sparsity_m_by_n=(2, 4))` on a `Conv2D`.
        Stored entries count, as in the GPU kernel, even if a value is zero.
        """
        kh, kw, cin, _ = self._filter_shape
        if cin % 4:
            return False
        # With cin % 4 == 0, column j lies in group j // 4 of its row. Columns
        # ascend within a row and rows follow one another, so (row, group)
        # keys never decrease: a group with 3 or more entries shows up as
        # equal keys two places apart.
        keys = self.row_ids * (kh * kw * cin // 4) + self._column_indices // 4
        return not np.any(keys[2:] == keys[:-2])

    @property
    def tensor_core_eligible(self):
        """Whether the GPU's 2:4 tensor-core kernel can take this filter.

        `is_2_4` and `cin` a multiple of 32 (`TENSOR_CORE_CHANNELS`). The call
        must also be float16/bfloat16 and NHWC on a GPU of compute capability
        8.0 or newer; see `sparse_conv2d`'s `engine`.
        """
        return self.is_2_4 and self._filter_shape[2] % TENSOR_CORE_CHANNELS == 0

    def __eq__(self, other):
        if not isinstance(other, CsrFilter):
            return NotImplemented
        return (self._filter_shape == other._filter_shape
                and self._values.dtype == other._values.dtype
                and np.array_equal(self._row_offsets, other._row_offsets)
                and np.array_equal(self._column_indices, other._column_indices)
                and np.array_equal(self._values, other._values))

    def __hash__(self):
        return hash((self._filter_shape, self._values.dtype.str, self._row_offsets.tobytes(),
                     self._column_indices.tobytes(), self._values.tobytes()))

    def __repr__(self):
        return (f"CsrFilter(filter_shape={self._filter_shape}, nnz={self.nnz}, "
                f"density={self.density:.3f}, dtype={self.dtype.name})")
