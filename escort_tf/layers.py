"""`SparseConv2D`: a tf_keras layer running a pruned `Conv2D` on `Escort>CsrConv2D`.

The layer holds its filter as CSR variables (`row_offsets`, `column_indices`,
`values`) plus an optional `bias`, all non-trainable: the op is forward-only.
Their shapes follow from the config (`filters`, `nnz`) and the input channels,
so `get_config`/`from_config`, `load_weights`, SavedModel, `.h5` and `.keras`
all round-trip. The layer's bias and a `relu`/`relu6` activation are fused into
the op; any other activation is applied after it.

Example:

    dense = tf_keras.layers.Conv2D(16, 3, activation="relu")
    dense.build((None, 32, 32, 8))
    sparse = SparseConv2D.from_conv2d(dense, mask=pruning_mask)
    y = sparse(x)   # == dense conv with kernel * pruning_mask
"""

from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras

from escort_tf import ops
from escort_tf.activations import fused_name
from escort_tf.csr import SUPPORTED_DTYPES, CsrFilter

_DATA_FORMATS = {"channels_last": "NHWC", "channels_first": "NCHW"}


def unsupported_reason(layer) -> Optional[str]:
    """Says why `layer` can't become a `SparseConv2D`, or returns None if it can.

    Args:
        layer: any tf_keras layer.

    Returns:
        A short human-readable reason, or None for a built, ungrouped
        `Conv2D` whose compute dtype the op supports.
    """
    if not isinstance(layer, tf_keras.layers.Conv2D):
        return f"{type(layer).__name__} is not a Conv2D"
    if isinstance(layer, tf_keras.layers.Conv2DTranspose):
        return "Conv2DTranspose is not supported"
    if not layer.built:
        return "layer is not built (no kernel yet)"
    if layer.groups != 1:
        return f"groups={layer.groups} (grouped convolution) is not supported"
    if tf.as_dtype(layer.compute_dtype) not in SUPPORTED_DTYPES:
        names = "/".join(d.name for d in SUPPORTED_DTYPES)
        return f"compute dtype {layer.compute_dtype} is not supported (op takes {names})"
    return None


@tf_keras.utils.register_keras_serializable(package="Escort")
class SparseConv2D(tf_keras.layers.Layer):
    """A 2-D convolution with a fixed sparse (CSR) filter; forward only.

    Computes `activation(conv2d(inputs, filter) + bias)` like `Conv2D`, with the
    filter stored as CSR. Build it from a trained dense layer with
    `SparseConv2D.from_conv2d`; the constructor alone creates zero weights to be
    filled by `load_weights` (as `from_config` does).

    Args:
        filters: number of output channels (`cout`).
        kernel_size: int or `(kh, kw)`.
        nnz: number of stored weights.
        strides: int or pair.
        padding: "valid" or "same".
        data_format: "channels_last" or "channels_first"; defaults to
            `tf_keras.backend.image_data_format()`.
        dilation_rate: int or pair.
        activation: a Keras activation; relu/relu6/linear are fused.
        use_bias: whether the layer has a bias variable.
        engine: the op's GPU kernel, "auto", "cuda_cores" or
            "tensor_cores_2_4" (see `escort_tf.sparse_conv2d`); the CPU
            ignores it.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Example:

        sparse = SparseConv2D.from_conv2d(trained_conv)
        model = tf_keras.Sequential([tf_keras.Input((28, 28, 1)), sparse,
                                     tf_keras.layers.Flatten()])
        same = SparseConv2D.from_config(sparse.get_config())  # zeros until load_weights
    """

    def __init__(self, filters, kernel_size, nnz, strides=1, padding="valid",
                 data_format=None, dilation_rate=1, activation=None, use_bias=True,
                 engine="auto", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(f"`filters` must be a positive int, got {filters!r}.")
        if not isinstance(nnz, (int, np.integer)) or nnz < 0:
            raise ValueError(f"`nnz` must be a non-negative int, got {nnz!r}.")
        self.filters = int(filters)
        self.kernel_size = tuple(ops.int_pair(kernel_size, "kernel_size"))
        self.nnz = int(nnz)
        self.strides = tuple(ops.int_pair(strides, "strides"))
        self.dilation_rate = tuple(ops.int_pair(dilation_rate, "dilation_rate"))
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same', got {padding!r}.")
        self.data_format = data_format or tf_keras.backend.image_data_format()
        if self.data_format not in _DATA_FORMATS:
            raise ValueError(
                f"`data_format` must be 'channels_last' or 'channels_first', got {data_format!r}.")
        self.activation = tf_keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.engine = ops.check_engine(engine)
        self.input_spec = tf_keras.layers.InputSpec(ndim=4)
        # Set by from_conv2d and consumed by build(): the trained weights.
        self._initial_filter = None
        self._initial_bias = None

    @classmethod
    def from_conv2d(cls, layer, mask=None, engine="auto", *, csr_filter=None):
        """Builds a `SparseConv2D` equal to a built dense `Conv2D`.

        Args:
            layer: a built `tf_keras.layers.Conv2D` (not `Conv2DTranspose`, no groups).
            mask: optional pruning mask of the kernel's shape; the stored
                filter is `layer.kernel * mask` (zeros are dropped).
            engine: the new layer's `engine`.
            csr_filter: optional `CsrFilter.from_dense(layer.kernel, mask)`
                computed before, stored instead of computing it again (what
                `convert` does when it clones a layer several times); then
                `mask` is not used.

        Returns:
            An unbuilt `SparseConv2D` with the same name, geometry, bias,
            activation and dtype policy, whose weights are created on first call.

        Raises:
            ValueError: `layer` can't be converted (see `unsupported_reason`).
        """
        reason = unsupported_reason(layer)
        if reason:
            raise ValueError(f"Can't convert layer {layer.name!r}: {reason}.")
        csr = CsrFilter.from_dense(layer.kernel, mask) if csr_filter is None else csr_filter
        kernel_dtype = np.dtype(layer.kernel.dtype.as_numpy_dtype)
        if csr.filter_shape != tuple(layer.kernel.shape) or csr.values.dtype != kernel_dtype:
            raise ValueError(
                f"`csr_filter` is a {csr.values.dtype} filter of shape {csr.filter_shape}, but "
                f"layer {layer.name!r} has a {kernel_dtype} kernel of shape "
                f"{tuple(layer.kernel.shape)}.")
        sparse = cls(filters=layer.filters, kernel_size=layer.kernel_size, nnz=csr.nnz,
                     strides=layer.strides, padding=layer.padding,
                     data_format=layer.data_format, dilation_rate=layer.dilation_rate,
                     activation=layer.activation, use_bias=layer.use_bias, engine=engine,
                     name=layer.name, dtype=layer.dtype_policy)
        sparse._initial_filter = csr
        sparse._initial_bias = layer.bias.numpy() if layer.use_bias else None
        return sparse

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 4:
            raise ValueError(f"{self.name}: input must be 4-D, got shape {input_shape}.")
        cin = input_shape[self._channel_axis]
        if cin is None:
            raise ValueError(f"{self.name}: the input's channel dimension must be known, "
                             f"got shape {input_shape}.")
        self.filter_shape = (*self.kernel_size, int(cin), self.filters)
        initial = self._initial_filter
        if initial is not None and tuple(initial.filter_shape) != self.filter_shape:
            raise ValueError(f"{self.name}: filter shape {initial.filter_shape} does not match "
                             f"the input's {cin} channels.")

        def init(array):
            if array is None:  # from_config: load_weights fills these in
                return "zeros"
            return lambda shape, dtype=None, **_: tf.constant(array, dtype=dtype)

        # Plain variables, not mixed precision's autocasting ones: under a
        # mixed policy the op takes the float32 values and bias as they are
        # (Escort>CsrConv2DV2), with no cast per call.
        def weight(name, shape, array, dtype=None):
            return self.add_weight(name, shape=shape, dtype=dtype, trainable=False,
                                   initializer=init(array), autocast=False)

        offsets, columns, values = ((initial.row_offsets, initial.column_indices, initial.values)
                                    if initial is not None else (None, None, None))
        self.row_offsets = weight("row_offsets", (self.filters + 1,), offsets, tf.int32)
        self.column_indices = weight("column_indices", (self.nnz,), columns, tf.int32)
        self.values = weight("values", (self.nnz,), values)
        self.bias = None
        if self.use_bias:
            self.bias = weight("bias", (self.filters,), self._initial_bias)
        self.input_spec = tf_keras.layers.InputSpec(ndim=4, axes={self._channel_axis: int(cin)})
        self._initial_filter = self._initial_bias = None  # the variables own them now
        super().build(input_shape)

    def call(self, inputs):
        # A relu/relu6/linear activation runs inside the op; any other after it.
        fused = fused_name(self.activation)
        outputs = ops.csr_conv2d(
            inputs, self.row_offsets, self.column_indices, self.values, self.filter_shape,
            bias=self.bias, strides=self.strides, padding=self.padding.upper(),
            dilations=self.dilation_rate, data_format=_DATA_FORMATS[self.data_format],
            activation=fused, engine=self.engine)
        return self.activation(outputs) if fused is None else outputs

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        spatial = [1, 2] if self.data_format == "channels_last" else [2, 3]
        for axis, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate):
            shape[axis] = ops.conv_output_size(shape[axis], k, s, d, self.padding)
        shape[self._channel_axis] = self.filters
        return tf.TensorShape(shape)

    @property
    def csr_filter(self):
        """The layer's current filter as a `CsrFilter` (eager; the layer must be built)."""
        if not self.built:
            raise ValueError(f"{self.name}: the layer is not built yet; call it on an input first.")
        return CsrFilter(self.row_offsets.numpy(), self.column_indices.numpy(),
                         self.values.numpy(), self.filter_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, nnz=self.nnz,
            strides=self.strides, padding=self.padding, data_format=self.data_format,
            dilation_rate=self.dilation_rate,
            activation=tf_keras.activations.serialize(self.activation),
            use_bias=self.use_bias, engine=self.engine)
        return config
