"""The 60-second tutorial: prune -> convert -> predict -> SavedModel -> CLI.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python examples/tutorial.py
"""

import os
import tempfile

# TFMOT only works with tf_keras; TensorFlow reads this when it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

import escort_tf  # noqa: E402  (registers the op: needed before loading a converted model)
import escort_tf.cli  # noqa: E402

rng = np.random.default_rng(0)
x = rng.random((256, 16, 16, 8), dtype=np.float32)
y = rng.integers(0, 10, 256)

# 1. Prune with TFMOT as usual: wrap, train with UpdatePruningStep.
model = tf_keras.Sequential([
    tf_keras.Input((16, 16, 8)),
    tf_keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
    tf_keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
    tf_keras.layers.GlobalAveragePooling2D(),
    tf_keras.layers.Dense(10),
])
pruned = tfmot.sparsity.keras.prune_low_magnitude(
    model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.9, begin_step=0, frequency=1))
pruned.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
pruned.fit(x, y, epochs=1, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])

# 2. Convert: every Conv2D at least 50% sparse runs on the sparse op.
#    (The wrapped model or tfmot.sparsity.keras.strip_pruning(pruned) both work.)
fast, report = escort_tf.convert(pruned, min_sparsity=0.5, return_report=True)
print(report)

# 3. Predict: same outputs as the pruned dense model.
stripped = tfmot.sparsity.keras.strip_pruning(pruned)
np.testing.assert_allclose(fast.predict(x, verbose=0), stripped.predict(x, verbose=0),
                           rtol=1e-4, atol=1e-4)

with tempfile.TemporaryDirectory() as tmp:
    # 4. SavedModel: loads anywhere `import escort_tf` ran first.
    fast.save(os.path.join(tmp, "fast"), save_format="tf")
    reloaded = tf_keras.models.load_model(os.path.join(tmp, "fast"))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), fast.predict(x, verbose=0))

    # 5. CLI: the same conversion from a saved pruned model, in the shell:
    #    escort-tf convert pruned.h5 fast_savedmodel
    pruned.save(os.path.join(tmp, "pruned.h5"))
    escort_tf.cli.main(["convert", os.path.join(tmp, "pruned.h5"), os.path.join(tmp, "cli")])
print("tutorial done")
