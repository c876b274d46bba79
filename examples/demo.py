"""`make demo`: prune a CNN with TFMOT, convert it with escort_tf, compare, save, reload.

Part 1 trains a small CNN on scikit-learn's handwritten digits (real data that
ships inside the package; 8x8 images upsampled to 16x16 so the convolutions
have work to skip), prunes its conv layers to 90% with TFMOT while fine-tuning,
strips the wrappers and converts the model with `escort_tf.convert`. Accuracy
must be identical; prediction time is compared; the converted model goes
through a SavedModel round trip.

Part 2 prunes the same CNN to 2:4 structured sparsity with TFMOT
(`sparsity_m_by_n=(2, 4)`) while fine-tuning and converts it under a
`mixed_float16` policy: its 2:4 layers get the engine that runs them on a
GPU's sparse tensor cores. The converted accuracy must be within 0.5 points
of the pruned model's.

Part 3 times a ResNet-50 (tf_keras.applications, random weights) pruned to
SkimCaffe-like per-layer sparsity, dense vs converted, with the helpers of
`escort_tf.skimcaffe_models` and `escort_tf.model_timing`; and converted with
its batch norms and ReLUs folded into the convolutions (`convert(...,
fold_batch_norm=True)`).

    TF_USE_LEGACY_KERAS=1 .venv/bin/python examples/demo.py [--quick] [--skip-resnet]
"""

import argparse
import os
import sys
import tempfile
import time

# TFMOT only works with tf_keras; TensorFlow reads this when it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import escort_tf  # noqa: E402  (also registers the op for SavedModel loading)
from escort_tf import fold, model_timing, skimcaffe_models  # noqa: E402

TARGET_SPARSITY = 0.90
# The layers Part 2 prunes 2:4: their 32, 64 and 128 input channels suit the
# tensor-core kernel (multiples of 32). conv1's single input channel can't be
# 2:4: TFMOT would keep 2 of every 3 channels (here: the one it has).
LAYERS_2_4 = ("conv2", "conv3", "conv4")
# Part 2's bound on the accuracy lost by converting, as a fraction.
MAX_ACCURACY_LOSS_2_4 = 0.005
L = tf_keras.layers


def step(message):
    """Prints one progress line, flushed so `make` shows it at once."""
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_digits_images(upsample=2, seed=0):
    """scikit-learn's 8x8 digits as NHWC float32 images in [0, 1], split 80/20.

    Args:
        upsample: each pixel becomes an `upsample` x `upsample` block.
        seed: the split's random state.

    Returns:
        `(x_train, x_test, y_train, y_test)`.
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    images = np.kron(images, np.ones((1, upsample, upsample), np.float32))[..., None]
    return train_test_split(images, digits.target, test_size=0.2, random_state=seed,
                            stratify=digits.target)


def build_cnn(image_size=16, dtype=None):
    """A small VGG-style CNN; conv2..conv4 carry nearly all of its multiply-adds.

    Args:
        image_size: height and width of the input images.
        dtype: every layer's dtype policy, e.g. "mixed_float16"; None takes
            the global policy.
    """
    return tf_keras.Sequential([
        tf_keras.Input((image_size, image_size, 1)),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv1", dtype=dtype),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv2", dtype=dtype),
        L.MaxPooling2D(name="pool1", dtype=dtype),
        L.Conv2D(128, 3, padding="same", activation="relu", name="conv3", dtype=dtype),
        L.Conv2D(128, 3, padding="same", activation="relu", name="conv4", dtype=dtype),
        L.MaxPooling2D(name="pool2", dtype=dtype),
        L.Flatten(name="flatten", dtype=dtype),
        L.Dense(10, name="logits", dtype=dtype),
    ], name="digits_cnn")


def _compile(model, learning_rate):
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model, x, y):
    """Top-1 accuracy of `model`'s logits on `(x, y)`."""
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def train_dense(data, epochs=6, batch_size=32, verbose=2):
    """Trains the CNN.

    Args:
        data: `(x_train, x_test, y_train, y_test)` from `load_digits_images`.
        epochs: training epochs.
        batch_size: training batch size.
        verbose: Keras `fit` verbosity (2: one line per epoch).

    Returns:
        `(model, test_accuracy)`.
    """
    x_train, x_test, y_train, y_test = data
    model = _compile(build_cnn(x_train.shape[1]), 2e-3)
    step(f"training the dense CNN for {epochs} epochs on {len(x_train)} digits")
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    dense_accuracy = accuracy(model, x_test, y_test)
    step(f"dense test accuracy {dense_accuracy:.2%}")
    return model, dense_accuracy


def train_and_prune(data, epochs=6, prune_epochs=6, batch_size=32, verbose=2):
    """Trains the CNN, then prunes conv2..conv4 to 90% with TFMOT while fine-tuning.

    conv1 (one input channel, 288 weights) and the classifier stay dense: they
    hold almost no work and are the most sensitive to pruning.

    Args:
        data: `(x_train, x_test, y_train, y_test)` from `load_digits_images`.
        epochs: dense training epochs.
        prune_epochs: fine-tuning epochs under pruning; sparsity ramps from
            50% to 90% (PolynomialDecay) over all but the last of them.
        batch_size: training batch size.
        verbose: Keras `fit` verbosity (2: one line per epoch).

    Returns:
        `(dense_accuracy, pruned_model)`: the test accuracy before pruning and
        the stripped (plain tf_keras) pruned model.
    """
    x_train, _, y_train, _ = data
    model, dense_accuracy = train_dense(data, epochs, batch_size, verbose)

    steps_per_epoch = -(-len(x_train) // batch_size)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.5, final_sparsity=TARGET_SPARSITY, begin_step=0,
        end_step=max(1, prune_epochs - 1) * steps_per_epoch, frequency=steps_per_epoch // 4 or 1)
    pruned = _compile(skimcaffe_models.wrap_for_pruning(
        model, lambda layer: schedule if layer.name in ("conv2", "conv3", "conv4") else None),
        5e-4)
    step(f"pruning conv2..conv4 to {TARGET_SPARSITY:.0%} with TFMOT while fine-tuning "
         f"{prune_epochs} epochs")
    pruned.fit(x_train, y_train, batch_size=batch_size, epochs=prune_epochs, verbose=verbose,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return dense_accuracy, tfmot.sparsity.keras.strip_pruning(pruned)


def sparsity_table(model):
    """Layer name -> fraction of zero kernel weights, for each Conv2D."""
    return {layer.name: float(np.mean(layer.kernel.numpy() == 0)) for layer in model.layers
            if isinstance(layer, L.Conv2D)}


def save_and_reload(model, directory):
    """Saves `model` as a SavedModel in `directory` and loads it back with tf_keras."""
    model.save(directory, save_format="tf", include_optimizer=False)
    return tf_keras.models.load_model(directory, compile=False)


def run_digits(epochs=6, prune_epochs=6, timing_reps=5, verbose=2):
    """Part 1: digits CNN trained, pruned, converted, compared, saved and reloaded.

    Returns:
        A dict of the measured results (accuracies, sparsities, timings).
    """
    data = load_digits_images()
    x_test, y_test = data[1], data[3]
    dense_accuracy, pruned = train_and_prune(data, epochs, prune_epochs, verbose=verbose)
    sparsities = sparsity_table(pruned)
    step("conv sparsity after pruning: " +
         ", ".join(f"{name} {s:.0%}" for name, s in sparsities.items()))

    converted, report = escort_tf.convert(pruned, min_sparsity=0.5, return_report=True)
    step("escort_tf.convert:\n" + str(report))
    pruned_accuracy = accuracy(pruned, x_test, y_test)
    converted_accuracy = accuracy(converted, x_test, y_test)
    step(f"test accuracy: dense {dense_accuracy:.2%}, pruned {pruned_accuracy:.2%}, "
         f"converted {converted_accuracy:.2%} (pruned == converted: "
         f"{pruned_accuracy == converted_accuracy})")

    step("timing pruned dense model vs converted model")
    timing = model_timing.bench_model("digits_cnn", pruned, converted, batches=(1, 64),
                                      reps=timing_reps, predict_images=len(x_test),
                                      predict_batch=64, predict_reps=max(2, timing_reps // 2),
                                      progress=lambda line: step(line))

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits_escort")
        reloaded = save_and_reload(converted, path)
        same = np.array_equal(reloaded.predict(x_test, verbose=0),
                              converted.predict(x_test, verbose=0))
        step(f"SavedModel round trip ({path}): predictions identical: {same}")
    return {"dense_accuracy": dense_accuracy, "pruned_accuracy": pruned_accuracy,
            "converted_accuracy": converted_accuracy, "sparsity": sparsities,
            "timing": timing, "reload_identical": bool(same)}


def run_digits_2_4(policy="mixed_float16", epochs=6, fine_tune_epochs=3, upsample=2,
                   batch_size=32, verbose=2):
    """Part 2: digits CNN trained, pruned 2:4 while fine-tuning, converted under `policy`.

    TFMOT's `sparsity_m_by_n=(2, 4)` keeps the 2 largest of every 4
    consecutive input channels of `LAYERS_2_4`, at each tap and output
    channel; it fixes the masks at the first fine-tuning step (it takes no
    schedule). Training runs under the global policy; the stripped weights
    then go into the same CNN built under `policy`, whose 2:4 layers
    `escort_tf.convert` gives the engine for sparse tensor cores (float16 or
    bfloat16 on a GPU of compute capability 8.0+; the CPU kernel elsewhere).

    Args:
        policy: the dtype policy of the converted model, e.g. "mixed_float16",
            "mixed_bfloat16" or "float32" (which keeps the layers off the
            tensor cores).
        epochs: dense training epochs.
        fine_tune_epochs: fine-tuning epochs under 2:4 pruning.
        upsample: see `load_digits_images`.
        batch_size: training batch size.
        verbose: Keras `fit` verbosity.

    Returns:
        A dict: "pruned_accuracy" (the stripped model, under the global
        policy), "converted_accuracy" (under `policy`), "is_2_4" (layer name
        -> whether its converted filter is 2:4), "converted" (the model) and
        "report" (its `ConversionReport`).
    """
    data = load_digits_images(upsample)
    x_train, x_test, y_train, y_test = data
    model, _ = train_dense(data, epochs, batch_size, verbose)
    wrapped = _compile(skimcaffe_models.wrap_for_pruning(
        model, lambda layer: (tfmot.sparsity.keras.ConstantSparsity(0.5, 0)
                              if layer.name in LAYERS_2_4 else None),
        sparsity_m_by_n=(2, 4)), 5e-4)
    step(f"pruning {', '.join(LAYERS_2_4)} to 2:4 with TFMOT while fine-tuning "
         f"{fine_tune_epochs} epochs")
    wrapped.fit(x_train, y_train, batch_size=batch_size, epochs=fine_tune_epochs,
                verbose=verbose, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    pruned = tfmot.sparsity.keras.strip_pruning(wrapped)

    # A model's policy is fixed when its layers are built: rebuild, then copy.
    served = build_cnn(x_train.shape[1], dtype=policy)
    served.set_weights(pruned.get_weights())
    converted, report = escort_tf.convert(served, return_report=True)
    step(f"escort_tf.convert under {policy}:\n{report}")
    is_2_4 = {name: converted.get_layer(name).csr_filter.is_2_4 for name in LAYERS_2_4}
    pruned_accuracy = accuracy(pruned, x_test, y_test)
    converted_accuracy = accuracy(converted, x_test, y_test)
    step(f"test accuracy: pruned 2:4 {pruned_accuracy:.2%}, converted ({policy}) "
         f"{converted_accuracy:.2%}; filters 2:4: {is_2_4}")
    return {"pruned_accuracy": pruned_accuracy, "converted_accuracy": converted_accuracy,
            "is_2_4": is_2_4, "converted": converted, "report": report}


def run_resnet50(image_size=224, reps=2):
    """Part 3: ResNet-50 pruned SkimCaffe-like, dense vs converted (and folded) timing."""
    step(f"ResNet-50 at {image_size}x{image_size}: building, pruning with TFMOT "
         f"(3x3 layers 85/93/97/98% in res2..res5), converting")
    dense, sparse, info = model_timing.prune_and_convert("resnet50", image_size,
                                                         progress=lambda line: step(line))
    step(f"conv weights {info['conv_weight_sparsity']:.1%} sparse; "
         f"{info['converted_layers']} of {info['conv_layers']} conv layers converted")
    # What convert(..., fold_batch_norm=True) would have returned.
    folded, removed = fold.fold_batch_norm(sparse)
    step(f"fold_batch_norm=True folds {sum(map(len, removed.values()))} batch norm and ReLU "
         f"layers into {len(removed)} convolutions")
    timing = model_timing.bench_model("resnet50", dense, sparse, batches=(1, 8), reps=reps,
                                      predict_images=16, predict_batch=8, predict_reps=2,
                                      progress=lambda line: step(line),
                                      variants={"sparse_folded": folded})
    return {**info, **timing}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer epochs and repetitions, ResNet-50 at 112x112")
    parser.add_argument("--skip-resnet", action="store_true", help="only the digits part")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tf_keras.utils.set_random_seed(0)
    digits = run_digits(epochs=3 if args.quick else 6, prune_epochs=3 if args.quick else 6,
                        timing_reps=3 if args.quick else 5)
    ok = digits["pruned_accuracy"] == digits["converted_accuracy"] and digits["reload_identical"]
    sparse24 = run_digits_2_4(epochs=3 if args.quick else 6,
                              fine_tune_epochs=2 if args.quick else 3)
    ok = ok and all(sparse24["is_2_4"].values()) and (
        sparse24["pruned_accuracy"] - sparse24["converted_accuracy"] <= MAX_ACCURACY_LOSS_2_4)
    if not args.skip_resnet:
        resnet = run_resnet50(image_size=112 if args.quick else 224)
        ok = ok and all(call["match"] for call in resnet["calls"])
    step(f"done in {time.perf_counter() - start:.0f} s" + ("" if ok else " -- CHECKS FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
