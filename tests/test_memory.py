"""Repeated op calls do not grow the process: no leak per call or per shape."""

import os

import numpy as np
import tensorflow as tf

import escort_tf

CALLS = 1000
# Leaking each call's output would add ~96 MiB over CALLS calls (the 500
# same-shape outputs alone are 128 KiB each); a second pass over the same
# shapes after a warm-up measured ~0.1 MiB (allocator pools and the Python
# heap are already grown). 50 MiB sits between the two, far from both.
MAX_GROWTH_BYTES = 50 * 2**20


def _rss_bytes():
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _calls(rng):
    """CALLS (input, filter, strides) triples: half one shape, half ever-changing ones."""
    kernel = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    kernel[rng.random(kernel.shape) < 0.7] = 0
    csr = escort_tf.CsrFilter.from_dense(kernel)
    same = rng.standard_normal((2, 32, 32, 8)).astype(np.float32)
    calls = [(same, csr, 1)] * (CALLS // 2)
    # Changing height, width and stride: a new geometry (plan, offsets,
    # buffer sizes) on every call.
    for i in range(CALLS - len(calls)):
        height, width = 24 + i % 17, 24 + (i * 7) % 19
        calls.append((same[:, :height, :width], csr, 1 + i % 2))
    return calls


def _run(calls):
    for x, csr, strides in calls:
        escort_tf.sparse_conv2d(x, csr, strides=strides, activation="relu")


def test_repeated_calls_have_bounded_rss_growth(rng):
    calls = _calls(rng)
    _run(calls)  # warm-up: TF caches, allocator pools, every shape once
    before = _rss_bytes()
    _run(calls)
    growth = _rss_bytes() - before
    assert growth < MAX_GROWTH_BYTES, f"RSS grew {growth / 2**20:.1f} MiB over {CALLS} calls"


def test_repeated_calls_in_tf_function_have_bounded_rss_growth(rng):
    # Graph mode: one trace with unknown spatial dims serves every shape, so
    # the executor, not eager dispatch, owns the tensors.
    calls = _calls(rng)
    csr = calls[0][1]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 8], tf.float32)])
    def conv(x):
        return escort_tf.sparse_conv2d(x, csr, strides=2, activation="relu")

    def run():
        for x, _, _ in calls:
            conv(x)

    run()
    before = _rss_bytes()
    run()
    growth = _rss_bytes() - before
    assert growth < MAX_GROWTH_BYTES, f"RSS grew {growth / 2**20:.1f} MiB over {CALLS} calls"
