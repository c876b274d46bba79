"""`sparse_conv2d`: the Python face of the `Escort>CsrConv2D` op."""

from typing import Optional, Sequence, Union

import tensorflow as tf

from escort_tf import _loader
from escort_tf.activations import OP_ATTRS
from escort_tf.csr import SUPPORTED_DTYPES, CsrFilter

IntOrPair = Union[int, Sequence[int]]

# The `engine` argument's values; the op's attr is the same in upper case.
ENGINES = ("auto", "cuda_cores", "tensor_cores_2_4")


def int_pair(value: IntOrPair, name: str) -> list:
    """Normalises an int or a pair of ints to a list of two positive ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = [value, value]
    try:
        pair = [int(v) for v in value]
        if any(isinstance(v, bool) or int(v) != v for v in value):
            raise ValueError
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def conv_output_size(size: Optional[int], kernel: int, stride: int, dilation: int,
                     padding) -> Optional[int]:
    """Output length of a convolution along one spatial axis (None stays None).

    Args:
        size: input length, or None if unknown.
        kernel, stride, dilation: the filter's size, stride and dilation on this axis.
        padding: "SAME", "VALID" (either case) or an explicit `(before, after)` pair.

    Returns:
        `ceil(size / stride)` for SAME, else `(padded - (kernel - 1) * dilation - 1)
        // stride + 1`, at least 0.
    """
    if size is None:
        return None
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return -(-size // stride)
        padding = (0, 0)
    padded = size + padding[0] + padding[1]
    return max(0, (padded - (kernel - 1) * dilation - 1) // stride + 1)


def _spatial_axes(data_format: str):
    """Positions of height and width in a 4-entry per-dimension argument."""
    return (1, 2) if data_format == "NHWC" else (2, 3)


def _spatial_pair(value, name: str, data_format: str):
    """Accepts tf.nn.conv2d's 4-element form too (1 at batch and channels)."""
    if not isinstance(value, (int, str)) and hasattr(value, "__len__") and len(value) == 4:
        h, w = _spatial_axes(data_format)
        others = [v for i, v in enumerate(value) if i not in (h, w)]
        if any(isinstance(v, bool) or v != 1 for v in others):
            raise ValueError(f"{name} of 4 entries must be 1 at the batch and channel "
                             f"positions ({data_format}), got {value!r}")
        value = [value[h], value[w]]
    return int_pair(value, name)


_PADDING_FORMS = ('padding must be "SAME", "VALID", [[top, bottom], [left, right]] or '
                  "tf.nn.conv2d's 4 pairs with zeros at batch and channels")


def check_engine(engine) -> str:
    """Returns `engine` if it is one of `ENGINES`, else raises a ValueError naming it.

    Example:
      >>> check_engine("auto")
      'auto'
    """
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    return engine


def _padding(padding, data_format: str):
    """Returns the op's (padding, explicit_paddings) attributes."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{_PADDING_FORMS}, got {padding!r}")
        return padding.upper(), []
    try:
        pairs = [[int(before), int(after)] for before, after in padding]
    except (TypeError, ValueError):
        raise ValueError(f"{_PADDING_FORMS}, got {padding!r}") from None
    if len(pairs) == 4:
        h, w = _spatial_axes(data_format)
        if any(pairs[i] != [0, 0] for i in range(4) if i not in (h, w)):
            raise ValueError(f"{_PADDING_FORMS}, got {padding!r}")
        pairs = [pairs[h], pairs[w]]
    if len(pairs) != 2:
        raise ValueError(f"{_PADDING_FORMS}, got {padding!r}")
    amounts = pairs[0] + pairs[1]
    if min(amounts) < 0:
        raise ValueError(f"padding amounts must be non-negative, got {padding!r}")
    return "EXPLICIT", amounts


# The wrappers below branch on Python values only (shapes, attrs), never on
# tensors, so autograph's conversion is pure cost: Keras converts every
# subclassed layer's `call` and everything it calls, once per traced call
# (each clone or trace of a converted model).
_no_autograph = tf.autograph.experimental.do_not_convert


@_no_autograph
def sparse_conv2d(input,  # pylint: disable=redefined-builtin
                  filters: CsrFilter,
                  bias=None,
                  strides: IntOrPair = 1,
                  padding="SAME",
                  dilations: IntOrPair = 1,
                  data_format: str = "NHWC",
                  activation: Optional[str] = None,
                  name: Optional[str] = None,
                  engine: str = "auto") -> tf.Tensor:
    """2-D convolution with a sparse (CSR) filter, computed directly.

    Equals `act(tf.nn.conv2d(input, filters.to_dense(), strides, padding,
    data_format=data_format, dilations=dilations) + bias)`, but only the
    filter's nonzeros are multiplied. One difference: a pruned (absent)
    weight contributes nothing even where the input is NaN or Inf, whereas a
    dense conv propagates `0 * NaN`.

    Example:
      >>> kernel = np.random.randn(3, 3, 16, 32).astype("float32")
      >>> kernel[np.abs(kernel) < 1.5] = 0          # ~87% sparse
      >>> csr = escort_tf.CsrFilter.from_dense(kernel)
      >>> y = escort_tf.sparse_conv2d(x, csr, strides=2, activation="relu")

    Args:
      input: 4-D float tensor in `data_format` (float32, float16 or bfloat16).
      filters: the `CsrFilter`; its values have the input's dtype, or are
        float32 for a float16/bfloat16 input (mixed precision: the op takes
        them as they are, with no cast per call).
      bias: optional `[cout]` vector added before the activation, of the
        values' dtype.
      strides: int, (stride_h, stride_w), or tf.nn.conv2d's 4-element form.
      padding: "SAME", "VALID", explicit `[[top, bottom], [left, right]]`,
        or tf.nn.conv2d's 4 pairs (zeros at batch and channels).
      dilations: int, (dilation_h, dilation_w), or the 4-element form.
      data_format: "NHWC" or "NCHW".
      activation: None, "relu" or "relu6", fused into the op.
      name: optional op name.
      engine: which GPU kernel computes the convolution; the CPU has one
        kernel and ignores it, so the choice never makes a graph unportable.
        "cuda_cores" is the direct CSR kernel, for any filter.
        "tensor_cores_2_4" runs float16/bfloat16 NHWC inputs on sparse
        tensor cores (compute capability 8.0+) and needs a filter that is
        2:4 along its input channels with `cin % 32 == 0`
        (`filters.tensor_core_eligible`); on a GPU the op fails with
        InvalidArgument otherwise. "auto" (the default) takes the tensor
        cores where all of that holds and the CSR kernel elsewhere: pin
        "cuda_cores" only where it measured faster (`convert(...,
        autotune=True)` does).

    Returns:
      The 4-D output tensor in `data_format`.

    Raises:
      TypeError: `filters` is not a CsrFilter, or dtypes disagree.
      ValueError: a shape or an argument is invalid.
    """
    if not isinstance(filters, CsrFilter):
        raise TypeError(f"filters must be an escort_tf.CsrFilter, got {type(filters).__name__}")
    return csr_conv2d(input, filters.row_offsets, filters.column_indices, filters.values,
                      filters.filter_shape, bias=bias, strides=strides, padding=padding,
                      dilations=dilations, data_format=data_format,
                      activation=activation, name=name, engine=engine)


@_no_autograph
def csr_conv2d(input,  # pylint: disable=redefined-builtin
               row_offsets,
               column_indices,
               values,
               filter_shape: Sequence[int],
               bias=None,
               strides: IntOrPair = 1,
               padding="SAME",
               dilations: IntOrPair = 1,
               data_format: str = "NHWC",
               activation: Optional[str] = None,
               name: Optional[str] = None,
               engine: str = "auto") -> tf.Tensor:
    """`sparse_conv2d` over CSR arrays given as tensors or variables.

    For callers that hold the filter in variables (the Keras layer); the
    arrays follow `CsrFilter`'s format and the op checks their contents.
    Other arguments as in `sparse_conv2d`.
    """
    if data_format not in ("NHWC", "NCHW"):
        raise ValueError(f'data_format must be "NHWC" or "NCHW", got {data_format!r}')
    strides = _spatial_pair(strides, "strides", data_format)
    dilations = _spatial_pair(dilations, "dilations", data_format)
    padding_attr, explicit_paddings = _padding(padding, data_format)
    if activation not in OP_ATTRS:
        raise ValueError(f'activation must be None, "relu" or "relu6", got {activation!r}')
    check_engine(engine)
    filter_shape = [int(size) for size in filter_shape]
    if len(filter_shape) != 4 or min(filter_shape) < 1:
        raise ValueError(f"filter_shape must be 4 positive sizes (kh, kw, cin, cout), "
                         f"got {filter_shape}")
    kh, kw, cin, cout = filter_shape

    with tf.name_scope(name or "sparse_conv2d"):
        input = tf.convert_to_tensor(input, name="input")
        if input.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"input must be float32, float16 or bfloat16, got {input.dtype.name}")
        if input.shape.rank is not None and input.shape.rank != 4:
            raise ValueError(f"input must be 4-D, got shape {input.shape}")
        values = tf.convert_to_tensor(values, name="values")
        mixed = values.dtype == tf.float32 and input.dtype != tf.float32
        if values.dtype != input.dtype and not mixed:
            raise TypeError(f"filter values are {values.dtype.name} but input is "
                            f"{input.dtype.name}: values must have the input's dtype, or "
                            f"be float32 (mixed precision); cast one of them explicitly")
        channels = input.shape[-1 if data_format == "NHWC" else 1]
        if channels is not None and channels != cin:
            raise ValueError(f"input has {channels} channels but filter_shape "
                             f"{tuple(filter_shape)} expects {cin}")
        if bias is None:
            bias = tf.zeros([0], values.dtype)
        else:
            bias = tf.convert_to_tensor(bias, name="bias")
            if bias.dtype != values.dtype:
                raise TypeError(f"bias is {bias.dtype.name} but filter values are "
                                f"{values.dtype.name}; they must match")
            if bias.shape.rank is not None and bias.shape.as_list() not in ([cout], [None]):
                raise ValueError(f"bias must have shape [{cout}], got {bias.shape}")
        # Escort>CsrConv2DV2 is the op with float32 values and bias for a
        # 16-bit input; everything else keeps the first op, which every
        # saved graph of this package holds.
        ops_module = _loader.load_ops()
        op = ops_module.escort_csr_conv2dv2 if mixed else ops_module.escort_csr_conv2d
        return op(
            input=input,
            row_offsets=tf.convert_to_tensor(row_offsets, tf.int32, name="row_offsets"),
            column_indices=tf.convert_to_tensor(column_indices, tf.int32,
                                                name="column_indices"),
            values=values,
            bias=bias,
            filter_shape=filter_shape,
            strides=strides,
            padding=padding_attr,
            explicit_paddings=explicit_paddings,
            dilations=dilations,
            data_format=data_format,
            activation=OP_ATTRS[activation],
            engine=engine.upper())
