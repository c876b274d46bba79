"""Test set-up shared by every test module.

TFMOT works only with tf_keras, which TensorFlow picks when
TF_USE_LEGACY_KERAS=1 is set before it is first imported; pytest imports
conftest.py before any test module, so setting it here covers the suite.
The same holds for the TF32 switch below.
"""

import importlib.util
import os
import pathlib

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On a GPU, TensorFlow's default fp32 convolutions and matmuls round their
# inputs to TF32 (10-bit mantissa), so tf.nn.conv2d would be a poor
# reference: the suite compares in true fp32. cuDNN and cuBLAS read this at
# start-up, in this process and in the subprocesses that tests start.
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's name: reproducible per test."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def demo():
    """examples/demo.py as a module (examples/ is not a package)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    spec = importlib.util.spec_from_file_location("escort_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
