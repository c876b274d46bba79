"""`fold_batch_norm`: BatchNormalization and ReLU folded into the convolution before them.

At inference a `BatchNormalization` right after a convolution is a per-channel
affine map of the convolution's output, so it can be folded into the filter
and bias: `scale = gamma / sqrt(moving_variance + epsilon)`, filter columns
times `scale`, `bias = (bias - moving_mean) * scale + beta`. A ReLU or ReLU6
that then follows becomes the convolution's activation, which `SparseConv2D`
fuses into the op (and TF's graph optimizer into a dense `Conv2D`). Each
folded layer saves a full pass over an activation tensor: on a pruned
ResNet-50 at batch 8 the unfolded batch norms take about 40% of the converted
model's time.

Only links with nothing else attached are folded: the convolution is called
once with a linear activation, and its output feeds that one layer and
nothing else (no other layer, no model output). The model is rebuilt from its
edited config, so layer names stay and the removed layers are reported. The
folded model computes the batch norms' inference mode even when called with
`training=True`.

Example:

    folded, removed = fold_batch_norm(converted_model)
    removed   # {"conv1_conv": ["conv1_bn", "conv1_relu"], ...}
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import tf_keras

from escort_tf.activations import activation_layer_name
from escort_tf.layers import SparseConv2D

# The channel axis of each data format, in both signs BatchNormalization accepts.
_CHANNEL_AXES = {"channels_last": (-1, 3), "channels_first": (1, -3)}


def _is_foldable_conv(layer) -> bool:
    # Exact Conv2D: subclasses (depthwise, transposed) map channels differently.
    is_conv = isinstance(layer, SparseConv2D) or (
        type(layer) is tf_keras.layers.Conv2D and layer.groups == 1)
    return is_conv and layer.activation is tf_keras.activations.linear


def _is_foldable_batch_norm(layer, data_format: str) -> bool:
    if type(layer) is not tf_keras.layers.BatchNormalization:
        return False
    if layer.renorm or layer.virtual_batch_size or layer.adjustment or layer.synchronized:
        return False  # inference is not the plain per-channel affine map
    return len(layer.axis) == 1 and layer.axis[0] in _CHANNEL_AXES[data_format]


def _is_ref(item) -> bool:
    """Whether a config item is a tensor reference `[layer_name, node_index, tensor_index, ...]`."""
    return (isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str)
            and isinstance(item[1], int) and isinstance(item[2], int))


def _refs(item):
    """Every tensor reference in a config's nested lists and dicts."""
    if _is_ref(item):
        yield item
        item = item[3:]  # the call kwargs may reference tensors too
    if isinstance(item, dict):
        item = list(item.values())
    if isinstance(item, list):
        for sub in item:
            yield from _refs(sub)


def _renamed(item, renames: Dict[str, str]):
    """`item` with references to removed layers pointed at the convolution they folded into."""
    if _is_ref(item):
        name = renames.get(item[0], item[0])
        return [name, *item[1:3], *(_renamed(sub, renames) for sub in item[3:])]
    if isinstance(item, dict):
        return {key: _renamed(value, renames) for key, value in item.items()}
    if isinstance(item, list):
        return [_renamed(sub, renames) for sub in item]
    return item


class _Graph:
    """Who reads each layer's output, from a model's config."""

    def __init__(self, model, config):
        self.sequential = isinstance(model, tf_keras.Sequential)
        self.layers = {layer.name: layer for layer in model.layers}
        self.entries = {entry["config"]["name"]: entry for entry in config["layers"]}
        self.readers: Dict[str, List[str]] = {name: [] for name in self.entries}
        if self.sequential:
            names = [layer.name for layer in model.layers]
            for name, reader in zip(names, names[1:]):
                self.readers[name].append(reader)
            return
        for name, entry in self.entries.items():
            for ref in _refs(entry["inbound_nodes"]):
                self.readers[ref[0]].append(name)
        for ref in config["output_layers"]:
            self.readers[ref[0]].append(None)  # a model output

    def called_once(self, name: str) -> bool:
        return self.sequential or len(self.entries[name]["inbound_nodes"]) == 1

    def sole_reader(self, name: str):
        """The layer that alone reads `name`'s output, as its only input, or None.

        Both must be called once, and the call may pass `training=False` at most.
        """
        readers = self.readers[name]
        if len(readers) != 1 or readers[0] is None:
            return None
        reader = readers[0]
        if not (self.called_once(name) and self.called_once(reader)):
            return None
        if not self.sequential:
            (node,) = self.entries[reader]["inbound_nodes"]
            if len(node) != 1 or node[0][3:] not in ([], [{}], [{"training": False}]):
                return None
        return self.layers[reader]


def _folded_weights(conv, batch_norm) -> Dict[str, np.ndarray]:
    """The weights of `conv` with `batch_norm`'s inference map folded in, by attribute name.

    The folded convolution always has a bias.
    """
    dtype = conv.dtype  # the variables' dtype, also under a mixed policy
    inv_std = 1.0 / np.sqrt(batch_norm.moving_variance.numpy().astype(np.float64)
                            + batch_norm.epsilon)
    scale = inv_std * (batch_norm.gamma.numpy() if batch_norm.scale else 1.0)
    shift = batch_norm.beta.numpy() if batch_norm.center else 0.0
    bias = conv.bias.numpy().astype(np.float64) if conv.use_bias else 0.0
    folded_bias = ((bias - batch_norm.moving_mean.numpy()) * scale + shift).astype(dtype)
    if isinstance(conv, SparseConv2D):
        csr = conv.csr_filter
        return {"row_offsets": csr.row_offsets, "column_indices": csr.column_indices,
                "values": (csr.values * scale[csr.row_ids]).astype(dtype), "bias": folded_bias}
    return {"kernel": (conv.kernel.numpy() * scale).astype(dtype), "bias": folded_bias}


class _Link(NamedTuple):
    """What folds into one convolution: a batch norm, a ReLU/ReLU6 layer, or both."""

    batch_norm: Optional[tf_keras.layers.Layer]
    activation_layer: Optional[tf_keras.layers.Layer]

    def names(self) -> List[str]:
        return [layer.name for layer in (self.batch_norm, self.activation_layer) if layer]


def _find_links(model, graph: _Graph) -> Dict[str, _Link]:
    links = {}
    for conv in model.layers:
        if not (_is_foldable_conv(conv) and graph.called_once(conv.name)):
            continue
        batch_norm = graph.sole_reader(conv.name)
        if batch_norm is None or not _is_foldable_batch_norm(batch_norm, conv.data_format):
            batch_norm = None
        activation_layer = graph.sole_reader(batch_norm.name if batch_norm else conv.name)
        if activation_layer is None or activation_layer_name(activation_layer) is None:
            activation_layer = None
        if batch_norm or activation_layer:
            links[conv.name] = _Link(batch_norm, activation_layer)
    return links


def foldable_layers(model) -> Dict[str, List[str]]:
    """What `fold_batch_norm(model)` would fold: conv name -> folded layer names. Changes nothing.

    Example:

        n = sum(map(len, foldable_layers(model).values()))
    """
    graph = _Graph(model, model.get_config())
    return {conv: link.names() for conv, link in _find_links(model, graph).items()}


def fold_batch_norm(model) -> Tuple[tf_keras.Model, Dict[str, List[str]]]:
    """Folds each batch norm and ReLU that alone follows a convolution into it.

    Args:
        model: a built Sequential or functional tf_keras model (e.g. one that
            `escort_tf.convert` returned). It is not modified. Nested models
            are copied as they are.

    Returns:
        `(folded_model, removed)`: a new model of the same class (`model`
        itself if nothing folds), and for each convolution that absorbed
        layers, their names in order.

    Example:

        folded, removed = fold_batch_norm(model)
    """
    config = model.get_config()
    graph = _Graph(model, config)
    links = _find_links(model, graph)
    if not links:
        return model, {}
    removed = {conv: link.names() for conv, link in links.items()}
    folded_weights: Dict[str, Dict[str, np.ndarray]] = {}
    for conv, link in links.items():
        conv_config = graph.entries[conv]["config"]
        if link.batch_norm:
            folded_weights[conv] = _folded_weights(graph.layers[conv], link.batch_norm)
            conv_config["use_bias"] = True
        if link.activation_layer:
            conv_config["activation"] = activation_layer_name(link.activation_layer)

    renames = {name: conv for conv, names in removed.items() for name in names}
    config["layers"] = [_renamed(entry, renames) for entry in config["layers"]
                        if entry["config"]["name"] not in renames]
    if not graph.sequential:
        config["output_layers"] = _renamed(config["output_layers"], renames)
    # Classes by name, for custom layers that are not registered with Keras.
    custom_objects = {type(layer).__name__: type(layer) for layer in model.layers}
    folded = type(model).from_config(config, custom_objects=custom_objects)
    for layer in folded.layers:
        weights = folded_weights.get(layer.name)
        if weights is None:
            layer.set_weights(graph.layers[layer.name].get_weights())
            continue
        for name, value in weights.items():
            getattr(layer, name).assign(value)
    return folded, removed
