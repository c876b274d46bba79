"""2:4 structured sparsity from TFMOT to a converted, saved and reloaded model, on the CPU.

TFMOT's `prune_low_magnitude(..., sparsity_m_by_n=(2, 4))` keeps the 2
largest of every 4 consecutive input channels of a `Conv2D` at each tap and
output channel, which is what the GPU's 2:4 tensor-core kernel reads. It
sets the masks once, at the first training step. The CPU runs one kernel
whatever the engine, so these tests check the conversion, not the speed;
tests/gpu/test_gpu_sparse24.py runs the tensor cores.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

import escort_tf
from escort_tf.layers import SparseConv2D

L = tf_keras.layers


def _m_by_n(layer):
    return tfmot.sparsity.keras.prune_low_magnitude(layer, sparsity_m_by_n=(2, 4))


def _model(prune_whole_model):
    """A 3-channel stem, then 2:4 candidates with 32 and 64 input channels."""
    stem = L.Conv2D(32, 3, padding="same", activation="relu", name="stem")
    conv_a = L.Conv2D(64, 3, padding="same", activation="relu", name="conv_a")
    conv_b = L.Conv2D(32, 1, activation="relu", name="conv_b")
    if prune_whole_model:
        model = tf_keras.Sequential([tf_keras.Input((8, 8, 3)), stem, conv_a, conv_b,
                                     L.GlobalAveragePooling2D(), L.Dense(10)])
        return _m_by_n(model)
    # The stem's 3 input channels can't be 2:4: only the later layers are pruned.
    return tf_keras.Sequential([tf_keras.Input((8, 8, 3)), stem, _m_by_n(conv_a),
                                _m_by_n(conv_b), L.GlobalAveragePooling2D(), L.Dense(10)])


@pytest.mark.parametrize("prune_whole_model", [False, True], ids=["later_layers", "whole_model"])
def test_tfmot_2_4_model_converts_saves_and_reloads(tmp_path, prune_whole_model):
    tf_keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    pruned = _model(prune_whole_model)
    pruned.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = rng.random((32, 8, 8, 3), dtype=np.float32)
    pruned.fit(x, rng.integers(0, 10, 32), batch_size=8, epochs=1, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    converted, report = escort_tf.convert(stripped, return_report=True)

    for name in ("conv_a", "conv_b"):
        kernel = stripped.get_layer(name).kernel.numpy()
        kh, kw, cin, cout = kernel.shape
        assert (kernel.reshape(kh, kw, cin // 4, 4, cout) != 0).sum(3).max() == 2
        assert report[name].structure == "2:4" and report[name].sparsity == 0.5
        layer = converted.get_layer(name)
        assert isinstance(layer, SparseConv2D) and layer.csr_filter.is_2_4
        # float32: the CSR kernel, and the report says what tensor cores would need.
        assert report[name].engine == "cuda_cores" and "mixed_float16" in report[name].reason
    stem = report["stem"]
    assert stem.structure is None and stem.decision == "dense"
    if prune_whole_model:
        # TFMOT pads each group of 3 channels to 4 and keeps 2: a third is zero, not 2:4.
        assert (stripped.get_layer("stem").kernel.numpy() != 0).sum(axis=2).max() == 2
        assert stem.sparsity == pytest.approx(1 / 3)
    else:
        assert stem.sparsity == 0.0

    expected = stripped.predict(x, verbose=0)
    np.testing.assert_allclose(converted.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "saved")
    converted.save(path, save_format="tf")
    reloaded = tf_keras.models.load_model(path)  # escort_tf, imported above, registers the op
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    (served,) = tf.saved_model.load(path).signatures["serving_default"](tf.constant(x)).values()
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_digits_2_4_keeps_its_accuracy_after_conversion(demo):
    # Issue #16: within 0.5 points of the pruned model. Small settings (8x8
    # images, few epochs); tests/gpu runs the same on the tensor cores.
    tf_keras.utils.set_random_seed(0)
    result = demo.run_digits_2_4("mixed_float16", epochs=3, fine_tune_epochs=1, upsample=1,
                                 batch_size=64, verbose=0)
    assert result["is_2_4"] == {name: True for name in demo.LAYERS_2_4}
    assert all(result["report"][name].engine == "tensor_cores_2_4" for name in demo.LAYERS_2_4)
    assert result["pruned_accuracy"] > 0.9  # fine-tuning worked at all
    assert result["pruned_accuracy"] - result["converted_accuracy"] <= demo.MAX_ACCURACY_LOSS_2_4
