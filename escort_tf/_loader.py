"""Loads _escort_ops.so once and explains failures in terms a user can act on.

The op library is compiled against one TensorFlow minor version; TF's C++ ABI
changes between minors, so a mismatch shows up as an unreadable "undefined
symbol" error. We catch that and say what to do instead.
"""

import os
import threading
import warnings

import tensorflow as tf

# The TF minor this release is built and tested with (setup.py pins it).
TESTED_TF_MINOR = "2.21"
# Points at another build of the op library, e.g. one made by Bazel.
LIBRARY_ENV_VAR = "ESCORT_TF_OPS_LIBRARY"

_lock = threading.Lock()
_ops_module = None


class OpLibraryError(ImportError):
    """The op library could not be loaded; the message says why and what to do."""


def library_path() -> str:
    """Returns the path of the op library that load_ops() loads."""
    return os.environ.get(LIBRARY_ENV_VAR) or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "_escort_ops.so")


def _running_tf_minor() -> str:
    return ".".join(tf.__version__.split(".")[:2])


def load_ops():
    """Loads the op library (once, thread-safe) and returns its op module.

    Returns:
      The module returned by `tf.load_op_library`, whose `escort_csr_conv2d`
      is the generated wrapper of `Escort>CsrConv2D`.

    Raises:
      OpLibraryError: the library is missing (package not built) or was built
        for another TensorFlow version.
    """
    global _ops_module
    with _lock:
        if _ops_module is not None:
            return _ops_module
        path = library_path()
        if not os.path.exists(path):
            raise OpLibraryError(
                f"escort_tf's op library {path} does not exist. Build it with "
                "`pip install .` (or `make build` in a source checkout).")
        try:
            _ops_module = tf.load_op_library(path)
        except (tf.errors.NotFoundError, OSError) as error:
            hint = (
                f"escort_tf is built for TensorFlow {TESTED_TF_MINOR}.x but "
                f"TensorFlow {tf.__version__} is installed; install "
                f"'tensorflow=={TESTED_TF_MINOR}.*' or rebuild escort_tf from "
                "source against your TensorFlow (pip install --no-binary "
                "escort-tf escort-tf)."
                if _running_tf_minor() != TESTED_TF_MINOR else
                "Rebuild it (pip install --force-reinstall .) if the file is stale.")
            raise OpLibraryError(
                f"Could not load escort_tf's op library {path}: {error}\n{hint}"
            ) from error
        if _running_tf_minor() != TESTED_TF_MINOR:
            warnings.warn(
                f"escort_tf is tested with TensorFlow {TESTED_TF_MINOR}.x; you run "
                f"{tf.__version__}. The op library loaded, but results are untested.",
                RuntimeWarning, stacklevel=2)
        return _ops_module
