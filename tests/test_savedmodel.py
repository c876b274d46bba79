"""A converted model's SavedModel, loaded in a fresh process: works after `import escort_tf`,
and fails with TF's own "Op type not registered" message without it."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import escort_tf
import pruned_models
from escort_tf.layers import SparseConv2D

LOAD_AND_COMPARE = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    import tf_keras
    import escort_tf

    path, x, expected = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
    serving = tf.saved_model.load(path).signatures["serving_default"]
    (raw,) = serving(tf.constant(x)).values()
    model = tf_keras.models.load_model(path)
    sparse = [layer.name for layer in model.layers
              if isinstance(layer, escort_tf.layers.SparseConv2D)]
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    print("OK", ",".join(sparse))
""")

LOAD_WITHOUT_ESCORT = textwrap.dedent("""
    import sys
    import tensorflow as tf
    tf.saved_model.load(sys.argv[1])
""")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A converted functional model saved as a SavedModel, its input and outputs."""
    rng = np.random.default_rng(5)
    directory = tmp_path_factory.mktemp("savedmodel")
    pruned = pruned_models.prune(pruned_models.functional(), 0.8, rng)
    x = pruned_models.random_input(rng)
    converted = escort_tf.convert(pruned)
    converted.save(str(directory / "model"), save_format="tf")
    np.save(directory / "x.npy", x)
    np.save(directory / "expected.npy", pruned_models.masked_reference(pruned, x))
    sparse = [layer.name for layer in converted.layers if isinstance(layer, SparseConv2D)]
    return directory, sparse


def run_python(code, *args):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_fresh_process_loads_after_import_escort_tf(saved):
    directory, sparse = saved
    result = run_python(LOAD_AND_COMPARE, directory / "model", directory / "x.npy",
                        directory / "expected.npy")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["OK", ",".join(sparse)]
    assert sparse == ["conv_a", "conv_b", "conv_c"]


def test_fresh_process_without_import_fails_with_tf_message(saved):
    directory, _ = saved
    result = run_python(LOAD_WITHOUT_ESCORT, directory / "model")
    assert result.returncode != 0
    assert "Op type not registered 'Escort>CsrConv2D'" in result.stderr
