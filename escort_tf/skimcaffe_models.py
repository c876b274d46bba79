"""ResNet-50 and VGG-16 pruned with TFMOT to SkimCaffe-like per-layer sparsity.

The whole models `escort-tf bench --models`, the benchmark scripts of the
source tree (`benchmarks/cpu/`, `benchmarks/gpu_tf/`), the demo and the tests
prune: tf_keras applications with random weights (`weights=None`), each layer
pruned by TFMOT's magnitude pruning to the level SkimCaffe's pruned models
have there (`resnet50_sparsity`, `vgg16_sparsity`), or uniformly
(`uniform_sparsity_of`), and stripped of the pruning wrappers.

Example:

    build, sparsity_of = MODELS["resnet50"]
    pruned, sparsities = prune_like_skimcaffe(build(224), sparsity_of)
"""

from typing import Callable, Dict, Optional

import numpy as np
import tf_keras

from escort_tf.convert import is_pruning_wrapper

# SkimCaffe's pruned ResNet-50 keeps 3x3 (branch2b) layers 81-88 / 91-95.5 /
# 96.6-97.5 / 97.8-98% sparse in res2..res5; 1x1 and shortcut layers are pruned
# less here, the 7x7 stem (3 input channels) not at all.
RESNET50_3X3 = {2: 0.85, 3: 0.93, 4: 0.97, 5: 0.98}
RESNET50_1X1 = {2: 0.70, 3: 0.80, 4: 0.85, 5: 0.85}
# VGG-16 convs ~90% sparse; conv1_1 has 3 input channels, so only half.
VGG16_SPARSITY = 0.90
VGG16_FIRST = 0.50


def resnet50_sparsity(layer) -> float:
    """SkimCaffe-like sparsity for a tf_keras ResNet50 layer (0.0: leave dense).

    Names look like `conv3_block2_2_conv`: stage 3, `_2_` is the 3x3 conv.
    """
    name = layer.name
    if not isinstance(layer, tf_keras.layers.Conv2D) or not name.startswith(("conv2_", "conv3_",
                                                                             "conv4_", "conv5_")):
        return 0.0
    stage = int(name[4])
    return RESNET50_3X3[stage] if layer.kernel_size == (3, 3) else RESNET50_1X1[stage]


def vgg16_sparsity(layer) -> float:
    """SkimCaffe-like sparsity for a tf_keras VGG16 layer (0.0: leave dense)."""
    if not isinstance(layer, tf_keras.layers.Conv2D):
        return 0.0
    return VGG16_FIRST if layer.name == "block1_conv1" else VGG16_SPARSITY


def uniform_sparsity_of(sparsity_of: Callable[[object], float],
                        sparsity: float) -> Callable[[object], float]:
    """A per-layer profile pruning the layers `sparsity_of` prunes, all to `sparsity`.

    Keeps the profile's choice of layers (e.g. ResNet-50's 3-channel stem and
    the classifier stay dense) and only replaces its levels, so a uniform run
    differs from the SkimCaffe-like one in sparsity alone.

    Args:
        sparsity_of: layer -> sparsity, e.g. `resnet50_sparsity`.
        sparsity: the fraction of zero weights for every pruned layer, in (0, 1).

    Returns:
        layer -> `sparsity` where `sparsity_of(layer) > 0`, else 0.0.

    Raises:
        ValueError: `sparsity` is not in (0, 1).

    Example:

        pruned, _ = prune_like_skimcaffe(model, uniform_sparsity_of(resnet50_sparsity, 0.7))
    """
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"uniform sparsity must be in (0, 1), got {sparsity!r}")
    return lambda layer: sparsity if sparsity_of(layer) > 0.0 else 0.0


def _resnet50(image_size):
    return tf_keras.applications.ResNet50(weights=None, input_shape=(image_size, image_size, 3),
                                          classifier_activation=None)


def _vgg16(image_size):
    return tf_keras.applications.VGG16(weights=None, input_shape=(image_size, image_size, 3),
                                       classifier_activation=None)


# name -> (builder(image_size), per-layer sparsity); classifier_activation=None
# so outputs are logits, which the match check compares meaningfully.
MODELS = {
    "resnet50": (_resnet50, resnet50_sparsity),
    "vgg16": (_vgg16, vgg16_sparsity),
}


def wrap_for_pruning(model, schedule_of: Callable[[object], object], **prune_kwargs):
    """Wraps chosen layers of `model` in TFMOT `prune_low_magnitude`, keeping weights.

    Args:
        model: a built functional or Sequential tf_keras model (not modified).
        schedule_of: layer -> a TFMOT `PruningSchedule`, or None to leave the
            layer unwrapped.
        **prune_kwargs: more `prune_low_magnitude` arguments for every wrapped
            layer, e.g. `sparsity_m_by_n=(2, 4)` (TFMOT then sets the masks at
            the first training step and ignores the schedule).

    Returns:
        The pruning-wrapped copy, holding `model`'s weights; train it with the
        `tfmot.sparsity.keras.UpdatePruningStep()` callback.

    Example:

        schedule = tfmot.sparsity.keras.ConstantSparsity(0.9, begin_step=0)
        wrapped = wrap_for_pruning(
            model, lambda l: schedule if isinstance(l, tf_keras.layers.Conv2D) else None)
    """
    import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        schedule = schedule_of(layer)
        if schedule is None:
            return copy
        return tfmot.sparsity.keras.prune_low_magnitude(copy, pruning_schedule=schedule,
                                                        **prune_kwargs)

    wrapped = tf_keras.models.clone_model(model, clone_function=clone)
    originals = {layer.name: layer for layer in model.layers}
    for layer in wrapped.layers:
        # A wrapper adds mask variables of its own: copy into the layer inside.
        inner = layer.layer if is_pruning_wrapper(layer) else layer
        inner.set_weights(originals[inner.name].get_weights())
    return wrapped


def prune_like_skimcaffe(model, sparsity_of: Callable[[object], float]):
    """Prunes `model` with TFMOT to a per-layer sparsity and strips the wrappers.

    Each layer with `sparsity_of(layer) > 0` is wrapped by
    `prune_low_magnitude` with `ConstantSparsity(sparsity, begin_step=0,
    frequency=1)`; then TFMOT's own magnitude mask update runs once per
    wrapper (what the first training step with `UpdatePruningStep` does,
    without the training), the masks are applied to the kernels, and
    `strip_pruning` removes the wrappers.

    Args:
        model: a built functional or Sequential tf_keras model (not modified).
        sparsity_of: layer -> target fraction of zero weights (0.0: not pruned).

    Returns:
        `(stripped_model, sparsities)`: the pruned tf_keras model with plain
        layers, and layer name -> measured sparsity of each pruned kernel.

    Example:

        model = tf_keras.applications.ResNet50(weights=None)
        pruned, sparsities = prune_like_skimcaffe(model, resnet50_sparsity)
    """
    import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel

    def schedule_of(layer):
        level = sparsity_of(layer)
        if level <= 0.0:
            return None
        return tfmot.sparsity.keras.ConstantSparsity(level, begin_step=0, frequency=1)

    wrapped = wrap_for_pruning(model, schedule_of)
    measured = {}
    for wrapper in wrapped.layers:
        if not is_pruning_wrapper(wrapper):
            continue
        # UpdatePruningStep sets the step to 0 before the first batch; at step
        # 0 the schedule says "prune now", and the update computes the masks.
        wrapper.pruning_step.assign(0)
        wrapper.pruning_obj.conditional_mask_update()
        wrapper.pruning_obj.weight_mask_op()  # kernel := kernel * mask
        kernel = wrapper.layer.kernel.numpy()
        measured[wrapper.layer.name] = float(np.mean(kernel == 0))
    return tfmot.sparsity.keras.strip_pruning(wrapped), measured


def profile_description(uniform_sparsity: Optional[float] = None) -> Dict[str, object]:
    """The sparsity profile a model benchmark pruned with, as its report records it.

    Args:
        uniform_sparsity: the level of a uniform run (see `uniform_sparsity_of`),
            or None for the SkimCaffe-like per-layer levels.

    Returns:
        A JSON-serialisable dict: "sparsity_profile" ("skimcaffe" or
        "uniform") and the levels or the layers pruned.
    """
    if uniform_sparsity is None:
        return {"sparsity_profile": "skimcaffe",
                "resnet50_sparsity": {"3x3": RESNET50_3X3, "1x1": RESNET50_1X1,
                                      "conv1": 0.0},
                "vgg16_sparsity": {"block1_conv1": VGG16_FIRST, "other convs":
                                   VGG16_SPARSITY, "dense layers": 0.0}}
    return {"sparsity_profile": "uniform",
            "pruned_layers": "those the SkimCaffe-like profile prunes (ResNet-50: "
                             "all convs but conv1; VGG-16: all convs), each to "
                             "uniform_sparsity"}
