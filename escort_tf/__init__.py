"""escort-tf: pruned tf_keras conv nets made faster by direct sparse convolution.

Importing the package registers the `Escort>CsrConv2D` op with TensorFlow, so
SavedModels of converted models load (`tf.saved_model.load`,
`tf_keras.models.load_model`) after `import escort_tf`.

Typical use:
  >>> import escort_tf
  >>> fast_model = escort_tf.convert(pruned_model)      # TFMOT-pruned tf_keras model
  >>> fast_model.predict(images)
"""

import warnings as _warnings

from escort_tf import _loader
from escort_tf import layers
from escort_tf._version import __version__
from escort_tf.convert import convert, convert_checkpoint
from escort_tf.csr import CsrFilter
from escort_tf.ops import sparse_conv2d

__all__ = ["CsrFilter", "sparse_conv2d", "convert", "convert_checkpoint", "layers",
           "__version__"]

try:
    _loader.load_ops()
except _loader.OpLibraryError as _error:
    # Keep the package importable so the message is seen; every op call
    # raises the same error again.
    _warnings.warn(str(_error), RuntimeWarning, stacklevel=2)
