"""Tiny TFMOT-pruned tf_keras models shared by the converter, CLI and SavedModel tests.

Masks are set directly (no training) and the kernels are left dense, as in a
restored checkpoint: the converter must use `kernel * mask`, not the kernel.
"""

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from escort_tf.convert import is_pruning_wrapper

L = tf_keras.layers
INPUT_SHAPE = (9, 9, 3)


def sequential():
    """Conv layers covering fused, unfused and no activation, stride and dilation."""
    return tf_keras.Sequential([
        tf_keras.Input(INPUT_SHAPE),
        L.Conv2D(8, 3, padding="same", activation="relu", name="conv_relu"),
        L.Conv2D(6, (3, 1), strides=2, activation="tanh", name="conv_tanh"),
        L.Conv2D(4, 2, dilation_rate=2, use_bias=False, name="conv_linear"),
        L.Flatten(name="flatten"),
        L.Dense(3, name="dense"),
    ], name="seq")


def functional():
    """Two branches joined by Add, a 1x1 conv and a relu6 conv."""
    x = tf_keras.Input(INPUT_SHAPE)
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    b = L.Conv2D(8, 3, padding="same", activation=tf.nn.relu6, name="conv_b")(a)
    c = L.Conv2D(8, 1, name="conv_c")(a)
    y = L.Add(name="add")([b, c])
    y = L.GlobalAveragePooling2D(name="pool")(y)
    return tf_keras.Model(x, L.Dense(3, name="dense")(y), name="func")


BUILDERS = {"sequential": sequential, "functional": functional}


def prune(model, sparsity, rng):
    """Wraps `model` for pruning and gives every wrapper a random mask of `sparsity`.

    Args:
        model: a built tf_keras model.
        sparsity: a float for all layers, or a dict layer name -> float.
        rng: numpy Generator.
    """
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    for wrapper in pruned.layers:
        if is_pruning_wrapper(wrapper):
            level = sparsity.get(wrapper.layer.name, 0.0) if isinstance(sparsity, dict) else sparsity
            for _, mask, _ in wrapper.pruning_vars:
                mask.assign((rng.random(mask.shape) >= level).astype(np.float32))
    return pruned


def masked_reference(pruned, x):
    """What the pruned model computes once TFMOT has written `kernel * mask` back."""
    reference = tf_keras.models.clone_model(pruned)
    reference.set_weights(pruned.get_weights())
    for wrapper in reference.layers:
        if is_pruning_wrapper(wrapper):
            wrapper.pruning_obj.weight_mask_op()  # eager: assigns kernel * mask
    return reference(x).numpy()


def random_input(rng, batch=2, shape=INPUT_SHAPE):
    return rng.standard_normal((batch, *shape)).astype(np.float32)


def kernel_2_4(rng, shape, dtype=np.float32):
    """A random HWIO kernel, 2:4 along the input channels (`shape[2] % 4 == 0`).

    Each aligned group of 4 input channels keeps 2 random weights at each tap
    and output channel, as TFMOT's `sparsity_m_by_n=(2, 4)` does; about one
    group in ten is pruned further, since 2:4 allows fewer than 2.
    """
    kh, kw, cin, cout = shape
    # A random permutation of each group's 4 positions: positions 0 and 1 land at random.
    permutation = rng.random((kh, kw, cin // 4, 4, cout)).argsort(axis=3)
    keep = (permutation < 2) & (rng.random(permutation.shape) > 0.05)
    kernel = rng.standard_normal(keep.shape) * keep
    return kernel.reshape(shape).astype(dtype)
