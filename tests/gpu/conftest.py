"""Set-up of the GPU tests: they run only where TensorFlow sees a GPU.

The GPU op is built only in the CUDA flavour and runs only with a GPU, which
CI does not have; README ("GPU") says how to run these on a GPU machine.
References are float64, or fp32 with TF32 off (tests/conftest.py sets
NVIDIA_TF32_OVERRIDE=0).
"""

import os
import sys

import pytest
import tensorflow as tf

# The shared helpers (test_ops, pruned_models) live one directory up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
    if tf.config.list_physical_devices("GPU"):
        return
    skip = pytest.mark.skip(reason="TensorFlow sees no GPU")
    for item in items:
        if "tests/gpu/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(skip)
