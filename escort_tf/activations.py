"""The activations `Escort>CsrConv2D` fuses, and how tf_keras spells them.

One table for the op's wrapper (`ops`), the layer (`layers.SparseConv2D`) and
batch-norm folding (`fold`).
"""

from typing import Optional

import tensorflow as tf
import tf_keras

# Activation name -> the op's `activation` attribute.
OP_ATTRS = {None: "NONE", "linear": "NONE", "relu": "RELU", "relu6": "RELU6"}

# Activation functions the op fuses, keyed by identity: a user function that
# merely shares a name (or a relu with other arguments) is not fused.
_FUSED_FUNCTIONS = {
    tf_keras.activations.linear: "linear",
    tf_keras.activations.relu: "relu",
    tf.nn.relu: "relu",
    tf.nn.relu6: "relu6",
    tf_keras.activations.get("relu6"): "relu6",
}


def fused_name(activation) -> Optional[str]:
    """The `OP_ATTRS` name of a tf_keras activation function the op fuses, else None.

    Example:

        fused_name(tf_keras.activations.get("relu"))   # -> "relu"
        fused_name(tf.nn.tanh)                          # -> None
    """
    try:
        return _FUSED_FUNCTIONS.get(activation)
    except TypeError:  # unhashable callables are never among them
        return None


def activation_layer_name(layer) -> Optional[str]:
    """"relu" or "relu6" if `layer` is exactly a layer computing that activation, else None.

    Covers `Activation("relu")`-style layers and plain `ReLU` layers (no
    negative slope or threshold; `max_value` None or 6).
    """
    if type(layer) is tf_keras.layers.Activation:
        name = fused_name(layer.activation)
        return name if name in ("relu", "relu6") else None
    if type(layer) is tf_keras.layers.ReLU:
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    return None
