"""Tests for escort_tf.benchmark and the building blocks of examples/demo.py.

They check structure and correctness (outputs match, ratios finite), never
wall-clock thresholds: timings on a shared CI machine mean nothing here.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest
import tf_keras

import escort_tf
from escort_tf import benchmark

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_demo():
    spec = importlib.util.spec_from_file_location("escort_demo", ROOT / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def _finite_positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_layer_table_loads_from_the_source_tree():
    table = benchmark.load_layer_table()
    assert len(table.LAYERS) == 10
    assert table.UNIFORM_DENSITIES == (0.30, 0.10)


def test_layer_table_missing_path_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        benchmark.load_layer_table(tmp_path / "nope.py")


@pytest.mark.parametrize("density", [0.0, 0.07, 0.5, 1.0])
def test_random_sparse_kernel_has_exact_density(density, rng):
    kernel = benchmark.random_sparse_kernel((3, 3, 8, 16), density, rng)
    assert kernel.dtype == np.float32
    assert np.count_nonzero(kernel) == round(density * kernel.size)


def test_bench_layers_tiny(rng):
    table = benchmark.load_layer_table()
    tiny = table.ConvLayer("tiny", 7, 6, 5, 8, 3, 2, 1, 0.25)
    report = benchmark.bench_layers([tiny], [benchmark.SKIMCAFFE, 0.5], [1, 2], reps=1,
                                    warmup=1, progress=lambda line: None)
    rows = report["results"]
    assert [(r["density_label"], r["batch"]) for r in rows] == [
        ("skimcaffe", 1), ("skimcaffe", 2), ("0.50", 1), ("0.50", 2)]
    for row in rows:
        assert row["match"], row
        for key in ("sparse_ms", "dense_ms", "speedup", "sparse_effective_gflops",
                    "dense_gflops"):
            assert _finite_positive(row[key]), (key, row)
        assert row["nnz"] == round(row["density"] * 3 * 3 * 5 * 8)
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["sparse_ms"])
    assert set(report["geomeans"]) == {"skimcaffe", "0.50"}
    assert all(_finite_positive(v) for g in report["geomeans"].values() for v in g.values())
    assert "## Speedup" in benchmark.layers_markdown(report)


def test_bench_cli_writes_json_markdown_and_plot(tmp_path):
    paths = {ext: tmp_path / f"out.{ext}" for ext in ("json", "md", "png")}
    status = benchmark.main([
        "--layers", "resnet50_res5_3x3", "--densities", "skimcaffe", "--batches", "1",
        "--reps", "1", "--warmup", "1", "--json", str(paths["json"]),
        "--markdown", str(paths["md"]), "--plot", str(paths["png"])])
    assert status == 0
    report = json.loads(paths["json"].read_text())
    assert {"cpu_model", "usable_cores", "tensorflow", "date_utc"} <= set(report["machine"])
    (row,) = report["results"]
    assert row["layer"] == "resnet50_res5_3x3" and row["density"] == 0.02 and row["match"]
    assert math.isfinite(report["geomeans"]["skimcaffe"]["1"])
    assert "resnet50_res5_3x3" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_bench_cli_rejects_unknown_layer():
    with pytest.raises(SystemExit, match="unknown layer"):
        benchmark.main(["--layers", "no_such_layer"])


def test_resnet50_sparsity_is_skimcaffe_like():
    model = tf_keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3))
    levels = {layer.name: benchmark.resnet50_sparsity(layer) for layer in model.layers}
    assert levels["conv1_conv"] == 0.0 and levels["predictions"] == 0.0
    assert levels["conv2_block1_2_conv"] == 0.85 and levels["conv5_block3_2_conv"] == 0.98
    assert levels["conv3_block1_0_conv"] == levels["conv3_block1_1_conv"] == 0.80
    assert sum(v > 0 for v in levels.values()) == 52


def test_prune_convert_and_bench_model_tiny():
    demo = _load_demo()
    model = demo.build_cnn(image_size=8)
    pruned, measured = benchmark.prune_like_skimcaffe(
        model, lambda layer: 0.9 if layer.name in ("conv2", "conv3", "conv4") else 0.0)
    assert measured == pytest.approx({"conv2": 0.9, "conv3": 0.9, "conv4": 0.9}, abs=1e-3)
    assert demo.sparsity_table(pruned)["conv1"] == 0.0
    converted = escort_tf.convert(pruned, min_sparsity=0.5)
    assert sum(isinstance(l, escort_tf.layers.SparseConv2D) for l in converted.layers) == 3
    result = benchmark.bench_model("tiny", pruned, converted, batches=(1, 3), reps=1,
                                   predict_images=5, predict_batch=2, predict_reps=1,
                                   progress=lambda line: None)
    assert [c["batch"] for c in result["calls"]] == [1, 3]
    assert all(c["match"] and _finite_positive(c["speedup"]) for c in result["calls"])
    assert _finite_positive(result["predict"]["speedup"])


def test_demo_building_blocks(tmp_path):
    demo = _load_demo()
    x_train, x_test, y_train, y_test = demo.load_digits_images()
    assert x_train.shape[1:] == (16, 16, 1) and len(x_train) + len(x_test) == 1797
    subset = (x_train[:256], x_test[:64], y_train[:256], y_test[:64])
    _, pruned = demo.train_and_prune(subset, epochs=1, prune_epochs=2, verbose=0)
    assert min(demo.sparsity_table(pruned)[n] for n in ("conv2", "conv3", "conv4")) >= 0.5
    converted = escort_tf.convert(pruned)
    assert demo.accuracy(converted, subset[1], subset[3]) == demo.accuracy(
        pruned, subset[1], subset[3])
    reloaded = demo.save_and_reload(converted, str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.predict(subset[1], verbose=0),
                               pruned.predict(subset[1], verbose=0), rtol=1e-4, atol=1e-4)
