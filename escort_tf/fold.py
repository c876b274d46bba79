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

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import tf_keras

from escort_tf.activations import activation_layer_name
from escort_tf.csr import row_ids_of
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
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]  # unbuilt: an int
    return len(axis) == 1 and axis[0] in _CHANNEL_AXES[data_format]


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
    """Who reads each layer's output, from a model's config.

    `layers` maps each non-input layer's name in `config` to the layer that
    config entry describes (built or not): its type and attributes decide
    what folds.
    """

    def __init__(self, sequential: bool, config, layers: Dict[str, tf_keras.layers.Layer]):
        self.sequential = sequential
        self.layers = layers
        self.entries = {entry["config"]["name"]: entry for entry in config["layers"]}
        self.readers: Dict[str, List[str]] = {name: [] for name in self.entries}
        if self.sequential:
            names = list(layers)
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

    def sole_reader(self, name: str) -> Optional[str]:
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
        return reader


def _batch_norm_arrays(batch_norm, weights: List[np.ndarray]) -> Dict[str, np.ndarray]:
    """`batch_norm`'s weights by name, from its `get_weights()` order."""
    names = (["gamma"] if batch_norm.scale else []) + (["beta"] if batch_norm.center else [])
    return dict(zip(names + ["moving_mean", "moving_variance"], weights))


def _folded_weights(conv, conv_weights: List[np.ndarray], batch_norm,
                    batch_norm_weights: List[np.ndarray]) -> List[np.ndarray]:
    """`conv_weights` (its `get_weights()` order) with `batch_norm`'s inference map folded in.

    The folded convolution always has a bias.
    """
    dtype = conv.dtype  # the variables' dtype, also under a mixed policy
    bn = _batch_norm_arrays(batch_norm, batch_norm_weights)
    inv_std = 1.0 / np.sqrt(bn["moving_variance"].astype(np.float64) + batch_norm.epsilon)
    scale = inv_std * bn.get("gamma", 1.0)
    shift = bn.get("beta", 0.0)
    if isinstance(conv, SparseConv2D):
        row_offsets, column_indices, values = conv_weights[:3]
        bias = conv_weights[3].astype(np.float64) if conv.use_bias else 0.0
        folded_filter = [row_offsets, column_indices,
                         (values * scale[row_ids_of(row_offsets)]).astype(dtype)]
    else:
        bias = conv_weights[1].astype(np.float64) if conv.use_bias else 0.0
        folded_filter = [(conv_weights[0] * scale).astype(dtype)]
    return folded_filter + [((bias - bn["moving_mean"]) * scale + shift).astype(dtype)]


class _Link(NamedTuple):
    """What folds into one convolution: a batch norm, a ReLU/ReLU6 layer, or both (by name)."""

    batch_norm: Optional[str]
    activation_layer: Optional[str]

    def names(self) -> List[str]:
        return [name for name in (self.batch_norm, self.activation_layer) if name]


def _find_links(graph: _Graph) -> Dict[str, _Link]:
    links = {}
    for name, conv in graph.layers.items():
        if not (_is_foldable_conv(conv) and graph.called_once(name)):
            continue
        batch_norm = graph.sole_reader(name)
        if batch_norm is None or not _is_foldable_batch_norm(graph.layers[batch_norm],
                                                              conv.data_format):
            batch_norm = None
        activation_layer = graph.sole_reader(batch_norm or name)
        if activation_layer is None or activation_layer_name(
                graph.layers[activation_layer]) is None:
            activation_layer = None
        if batch_norm or activation_layer:
            links[name] = _Link(batch_norm, activation_layer)
    return links


def _model_graph(model) -> _Graph:
    config = model.get_config()
    sequential = isinstance(model, tf_keras.Sequential)
    return _Graph(sequential, config, {layer.name: layer for layer in model.layers
                                       if not isinstance(layer, tf_keras.layers.InputLayer)})


def foldable_layers(model) -> Dict[str, List[str]]:
    """What `fold_batch_norm(model)` would fold: conv name -> folded layer names. Changes nothing.

    Example:

        n = sum(map(len, foldable_layers(model).values()))
    """
    return {conv: link.names() for conv, link in _find_links(_model_graph(model)).items()}


Replace = Callable[[tf_keras.layers.Layer], Tuple[tf_keras.layers.Layer, List[np.ndarray]]]


def rebuild(model, replace: Replace,
            fold: bool) -> Tuple[tf_keras.Model, Dict[str, List[str]]]:
    """Rebuilds `model` from its config with each layer replaced, folding in the same pass.

    One `from_config` of the edited config: cloning a model and then folding
    it would build every layer twice.

    Args:
        model: a built Sequential or functional tf_keras model. It is not modified.
        replace: `layer -> (new_layer, weights)` for each non-input layer: the
            rebuilt model gets a layer with `new_layer`'s class and config
            (and name) in its place, holding `weights` (`set_weights` order).
            `new_layer` need not be built; a nested model is rebuilt from its
            config the same way, and its weights are all of its weights.
        fold: fold batch norms and ReLUs into the convolutions before them,
            as `fold_batch_norm` describes.

    Returns:
        `(rebuilt_model, removed)`: `removed` names, for each convolution
        that absorbed layers, those layers in order (new names).
    """
    config = model.get_config()
    sequential = isinstance(model, tf_keras.Sequential)
    originals = {layer.name: layer for layer in model.layers
                 if not isinstance(layer, tf_keras.layers.InputLayer)}
    layers, weights, renames, entries = {}, {}, {}, []
    for entry in config["layers"]:
        original = originals.get(entry["config"]["name"])
        if original is None:  # an input layer
            entries.append(entry)
            continue
        new_layer, new_weights = replace(original)
        new_entry = tf_keras.layers.serialize(new_layer)
        if not sequential:
            new_entry.update(name=new_layer.name, inbound_nodes=entry["inbound_nodes"])
        entries.append(new_entry)
        renames[original.name] = new_layer.name
        layers[new_layer.name] = new_layer
        weights[new_layer.name] = new_weights
    config["layers"] = entries

    removed: Dict[str, List[str]] = {}
    graph = _Graph(sequential, _renamed_config(config, renames, sequential), layers)
    if fold:
        for conv, link in _find_links(graph).items():
            removed[conv] = link.names()
            conv_config = graph.entries[conv]["config"]
            if link.batch_norm:
                weights[conv] = _folded_weights(layers[conv], weights[conv],
                                                layers[link.batch_norm], weights[link.batch_norm])
                conv_config["use_bias"] = True
            if link.activation_layer:
                conv_config["activation"] = activation_layer_name(layers[link.activation_layer])
    folded_into = {name: conv for conv, names in removed.items() for name in names}
    _renamed_config(config, folded_into, sequential, drop=folded_into)

    # Classes by name, for custom layers that are not registered with Keras.
    custom_objects = {type(layer).__name__: type(layer) for layer in layers.values()}
    rebuilt = type(model).from_config(config, custom_objects=custom_objects)
    for name, layer_weights in weights.items():
        if name not in folded_into:
            rebuilt.get_layer(name).set_weights(layer_weights)
    return rebuilt, removed


def _renamed_config(config, names: Dict[str, str], sequential: bool, drop=()):
    """`config` (edited in place) without the entries of the layers in `drop`,
    and with references renamed by `names`."""
    config["layers"] = [entry for entry in config["layers"]
                        if entry["config"]["name"] not in drop]
    if not sequential:
        for entry in config["layers"]:
            entry["inbound_nodes"] = _renamed(entry["inbound_nodes"], names)
        for key in ("input_layers", "output_layers"):
            config[key] = _renamed(config[key], names)
    return config


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
    if not foldable_layers(model):
        return model, {}
    return rebuild(model, lambda layer: (layer, layer.get_weights()), fold=True)
