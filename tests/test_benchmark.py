"""Tests for `escort-tf bench`, benchmarks/harness.py and the building blocks of examples/demo.py.

They check structure and correctness (outputs match, ratios finite), never
wall-clock thresholds: timings on a shared CI machine mean nothing here.
"""

import dataclasses
import gc
import importlib.resources
import importlib.util
import json
import logging
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import escort_tf
from escort_tf import (benchmark, layer_table, layer_timing, measurement, model_timing,
                       skimcaffe_models, timing)
from escort_tf.convert import pick_whole_model

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load("escort_harness", "benchmarks/harness.py")


def _finite_positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_layer_table_ships_in_the_package(tmp_path, monkeypatch):
    # From elsewhere, as an installed `escort-tf bench` runs: no benchmarks/ to fall back on.
    monkeypatch.chdir(tmp_path)
    table = layer_timing.load_layer_table()
    assert table is layer_table
    assert importlib.resources.files("escort_tf").joinpath("layer_table.py").is_file()
    assert len(table.LAYERS) == 10
    assert table.UNIFORM_DENSITIES == (0.30, 0.10)


def test_benchmarks_layers_is_the_packaged_table():
    source_tree = _load("escort_benchmarks_layers", "benchmarks/layers.py")
    assert [dataclasses.astuple(l) for l in source_tree.LAYERS] == [
        dataclasses.astuple(l) for l in layer_table.LAYERS]
    assert source_tree.UNIFORM_DENSITIES == layer_table.UNIFORM_DENSITIES


def test_layer_table_missing_path_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        layer_timing.load_layer_table(tmp_path / "nope.py")


@pytest.mark.parametrize("density", [0.0, 0.07, 0.5, 1.0])
def test_random_sparse_kernel_has_exact_density(density, rng):
    kernel = layer_timing.random_sparse_kernel((3, 3, 8, 16), density, rng)
    assert kernel.dtype == np.float32
    assert np.count_nonzero(kernel) == round(density * kernel.size)


def test_bench_layers_tiny(rng):
    table = layer_timing.load_layer_table()
    tiny = table.ConvLayer("tiny", 7, 6, 5, 8, 3, 2, 1, 0.25)
    report = layer_timing.bench_layers([tiny], [layer_timing.SKIMCAFFE, 0.5], [1, 2], reps=1,
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
    assert "## Speedup" in harness.layers_markdown(report)


def test_harness_writes_json_markdown_and_plot(tmp_path):
    paths = {ext: tmp_path / f"out.{ext}" for ext in ("json", "md", "png")}
    status = harness.main([
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


def test_reports_name_the_dense_kernel_that_ran():
    machine = {"cpu_model": "cpu", "usable_cores": 2, "tensorflow": "x", "escort_tf": "y",
               "date_utc": "z", "simd": ["avx2"]}
    report = {"machine": machine, "results": [], "geomeans": {"skimcaffe": {"1": 2.0}},
              "settings": {"densities": [layer_timing.SKIMCAFFE], "batches": [1], "reps": 1}}
    # Reports from before the "onednn" field were all measured against oneDNN.
    assert "tf.nn.conv2d (oneDNN), CPU" in harness.layers_markdown(report)
    machine["onednn"] = False
    assert "tf.nn.conv2d (Eigen, oneDNN off), CPU" in harness.layers_markdown(report)
    assert measurement.machine_info()["onednn"] == measurement.onednn_enabled()


def test_bench_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert benchmark.main(["--layers", "resnet50_res5_3x3", "--densities", "0.5", "--batches",
                           "1", "--reps", "1", "--warmup", "1", "--ops-per-call", "2",
                           "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())["results"]
    assert row["layer"] == "resnet50_res5_3x3" and row["match"]
    assert "geomean speedup, 50% sparse: batch 1" in capsys.readouterr().out


def test_bench_cli_rejects_unknown_layer():
    with pytest.raises(SystemExit, match="unknown layer"):
        benchmark.main(["--layers", "no_such_layer"])


def test_resnet50_sparsity_is_skimcaffe_like():
    model = tf_keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3))
    levels = {layer.name: skimcaffe_models.resnet50_sparsity(layer) for layer in model.layers}
    assert levels["conv1_conv"] == 0.0 and levels["predictions"] == 0.0
    assert levels["conv2_block1_2_conv"] == 0.85 and levels["conv5_block3_2_conv"] == 0.98
    assert levels["conv3_block1_0_conv"] == levels["conv3_block1_1_conv"] == 0.80
    assert sum(v > 0 for v in levels.values()) == 52


def test_prune_convert_and_bench_model_tiny(demo):
    model = demo.build_cnn(image_size=8)
    pruned, measured = skimcaffe_models.prune_like_skimcaffe(
        model, lambda layer: 0.9 if layer.name in ("conv2", "conv3", "conv4") else 0.0)
    assert measured == pytest.approx({"conv2": 0.9, "conv3": 0.9, "conv4": 0.9}, abs=1e-3)
    assert demo.sparsity_table(pruned)["conv1"] == 0.0
    converted = escort_tf.convert(pruned, min_sparsity=0.5)
    assert sum(isinstance(l, escort_tf.layers.SparseConv2D) for l in converted.layers) == 3
    result = model_timing.bench_model("tiny", pruned, converted, batches=(1, 3), reps=1,
                                      predict_images=5, predict_batch=2, predict_reps=1,
                                      progress=lambda line: None)
    assert [c["batch"] for c in result["calls"]] == [1, 3]
    assert all(c["match"] and _finite_positive(c["speedup"]) for c in result["calls"])
    assert _finite_positive(result["predict"]["speedup"])
    assert _finite_positive(result["predict"]["dataset_speedup"])
    assert result["predict"]["dataset_speedup"] == pytest.approx(
        result["predict"]["dataset_dense_ms"] / result["predict"]["dataset_sparse_ms"])


def test_predict_timing_drops_only_tfs_retracing_warning(caplog):
    """Timing several models' `predict` trips TF's frequent-retracing warning
    (their predict functions share one Python function); bench_model drops
    that warning while it times, and nothing else, and only then."""
    retracing = ("5 out of the last 31 calls to <function predict_function> triggered "
                 "tf.function retracing. Tracing is expensive")
    logger = tf.get_logger()
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with model_timing._quiet_retracing_warnings():
            logger.warning(retracing)
            logger.warning("another warning")
        logger.warning(retracing)
    assert [r.getMessage() for r in caplog.records] == ["another warning", retracing]


def test_uniform_sparsity_of_keeps_the_profiles_layers(demo):
    model = demo.build_cnn(image_size=8)
    profile = {"conv2": 0.9, "conv3": 0.5}
    uniform = skimcaffe_models.uniform_sparsity_of(lambda layer: profile.get(layer.name, 0.0), 0.7)
    levels = {layer.name: uniform(layer) for layer in model.layers}
    assert levels == {"conv1": 0.0, "conv2": 0.7, "pool1": 0.0, "conv3": 0.7, "conv4": 0.0,
                      "pool2": 0.0, "flatten": 0.0, "logits": 0.0}


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_uniform_sparsity_of_rejects_out_of_range(sparsity):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        skimcaffe_models.uniform_sparsity_of(skimcaffe_models.vgg16_sparsity, sparsity)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan"])
def test_bench_cli_rejects_sparsity_outside_0_1(value):
    with pytest.raises(SystemExit, match=r"--sparsity must be in \(0, 1\)"):
        benchmark.main(["--models", "--sparsity", value])


def test_bench_cli_rejects_sparsity_in_layer_mode():
    with pytest.raises(SystemExit, match="--sparsity applies to model mode"):
        benchmark.main(["--sparsity", "0.7"])


def test_bench_models_uniform_sparsity_and_autotune_report(monkeypatch, demo):
    # A tiny stand-in for ResNet-50: the profile prunes conv2..conv4 to
    # different levels and leaves conv1 (1 input channel) dense.
    profile = {"conv2": 0.9, "conv3": 0.8, "conv4": 0.6}
    monkeypatch.setitem(skimcaffe_models.MODELS, "tiny", (
        lambda size: demo.build_cnn(image_size=size),
        lambda layer: profile.get(layer.name, 0.0)))
    report = model_timing.bench_models(["tiny"], image_size=8, batches=(1,), reps=1,
                                       predict_images=4, predict_batch=2, predict_reps=1,
                                       autotune=True, uniform_sparsity=0.7,
                                       progress=lambda line: None)
    settings, (model,) = report["settings"], report["models"]
    assert settings["uniform_sparsity"] == 0.7 and settings["sparsity_profile"] == "uniform"
    assert "resnet50_sparsity" not in settings
    assert model["uniform_sparsity"] == 0.7
    assert model["layer_sparsity"] == pytest.approx({n: 0.7 for n in profile}, abs=1e-3)
    assert all(c["match"] for c in model["calls"])

    rows = {row["name"]: row for row in model["conversion"]}
    assert set(rows) == {"conv1", "conv2", "conv3", "conv4", "logits"}
    assert rows["conv1"]["decision"] == "dense" and rows["conv1"]["sparse_ms"] is None
    choice = model["whole_model_choice"]
    assert choice == pick_whole_model(model["whole_model_ms"])
    for name in profile:  # every pruned layer is a candidate and gets timed both ways
        assert _finite_positive(rows[name]["sparse_ms"])
        assert _finite_positive(rows[name]["dense_ms"])
        faster = "sparse" if rows[name]["sparse_ms"] <= rows[name]["dense_ms"] else "dense"
        # The whole-model check keeps the per-layer winners, the rule's (all sparse) or dense.
        assert rows[name]["decision"] == {"per_layer": faster, "rule": "sparse",
                                          "dense": "dense"}[choice]
    assert model["autotune_sparse"] + model["autotune_dense"] == 3
    assert model["autotune_sparse"] == model["converted_layers"]
    json.loads(json.dumps(report))  # the rows are JSON-serialisable

    markdown = harness.models_markdown(report)
    assert "a uniform 70% sparsity" in markdown and "SkimCaffe-like per-layer" not in markdown
    assert (f"tiny: autotune kept {model['autotune_sparse']} layers sparse, "
            f"{model['autotune_dense']} dense; the whole-model check kept {choice}") in markdown


def test_bench_models_times_folded_variants(monkeypatch):
    def build(size):
        L = tf_keras.layers
        return tf_keras.Sequential([
            tf_keras.Input((size, size, 2)),
            L.Conv2D(8, 3, padding="same", name="conv1"), L.BatchNormalization(name="bn1"),
            L.ReLU(name="relu1"), L.Conv2D(8, 3, name="conv2"),
            L.BatchNormalization(name="bn2"), L.Flatten(name="flatten")])

    monkeypatch.setitem(skimcaffe_models.MODELS, "tiny_bn", (
        build, lambda layer: 0.8 if isinstance(layer, tf_keras.layers.Conv2D) else 0.0))
    report = model_timing.bench_models(["tiny_bn"], image_size=6, batches=(2,), reps=1,
                                       predict_images=4, predict_batch=2, predict_reps=1,
                                       fold_batch_norm=True, progress=lambda line: None)
    (model,) = report["models"]
    assert report["settings"]["fold_batch_norm"] is True
    assert model["folded_layers"] == 3
    (call,) = model["calls"]
    assert call["match"]
    for kind in ("sparse_folded", "dense_folded"):
        assert call[f"{kind}_speedup"] == pytest.approx(call["dense_ms"] / call[f"{kind}_ms"])
        assert _finite_positive(model["predict"][f"{kind}_speedup"])
        assert _finite_positive(model["predict"][f"dataset_{kind}_speedup"])
    markdown = harness.models_markdown(report)
    both = next(line for line in markdown.splitlines() if "batch 2, both folded" in line)
    assert f"{call['dense_folded_ms']:.1f} | {call['sparse_folded_ms']:.1f}" in both
    assert "batch 2, sparse folded" in markdown and "dataset without autotuning (median), " \
        "both folded" in markdown


def test_models_markdown_names_the_skimcaffe_profile_by_default():
    machine = {"cpu_model": "cpu", "usable_cores": 2, "tensorflow": "x", "escort_tf": "y",
               "date_utc": "z"}
    calls = [{"batch": 1, "dense_ms": 2.0, "sparse_ms": 1.0, "speedup": 2.0, "match": True,
              "max_abs_err": 0.0}]
    model = {"model": "m", "conv_weight_sparsity": 0.9, "converted_layers": 1,
             "conv_layers": 1, "calls": calls,
             "predict": {"images": 4, "batch_size": 2, "dense_ms": 4.0, "sparse_ms": 2.0,
                         "speedup": 2.0}}
    # No "uniform_sparsity" key: a report written before --sparsity existed.
    report = {"machine": machine, "settings": {"image_size": 8, "autotune": False},
              "models": [model]}
    markdown = harness.models_markdown(report)
    assert "SkimCaffe-like per-layer sparsity" in markdown
    assert "uniform" not in markdown and "autotune kept" not in markdown
    assert "as a dataset without autotuning (median)" not in markdown  # no such row yet

    model["predict"].update(dataset_dense_ms=3.0, dataset_sparse_ms=1.0, dataset_speedup=3.0)
    markdown = harness.models_markdown(report)
    assert ("| predict, same images as a dataset without autotuning (median) | 3 | 1 "
            "| **3.00x** |") in markdown


def test_demo_building_blocks(tmp_path, demo):
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


def test_samples_are_timed_with_the_garbage_collector_off():
    seen = []
    assert gc.isenabled()
    timing._sample_s(lambda: seen.append(gc.isenabled()), inner=3)
    assert seen == [False, False, False]
    assert gc.isenabled()  # restored

    def fails():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        timing._sample_s(fails, inner=1)
    assert gc.isenabled()  # restored after an error too


def test_gpu_kernel_time_counts_each_kernel_once_and_no_copies():
    """benchmarks/gpu_tf/common.kernel_ps on a profile built by hand: the GPU
    planes' stream lines only, a kernel listed on two lines once, copies and
    derived lines left out (copy_ps_by_kind counts the copies)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    gpu_tf_common = _load("escort_gpu_tf_common", "benchmarks/gpu_tf/common.py")
    space = xplane_pb2.XSpace()
    host = space.planes.add(name="/host:CPU")
    host.event_metadata[1].name = "conv_kernel"
    host.lines.add(name="Stream #7(Compute)").events.add(metadata_id=1, offset_ps=0,
                                                        duration_ps=10 ** 9)
    for device in (0, 1):
        gpu = space.planes.add(name=f"/device:GPU:{device}")
        gpu.event_metadata[1].name = "Sparse24WgmmaKernel"
        gpu.event_metadata[2].name = "MemcpyDtoH"
        gpu.event_metadata[3].name = "escort/CsrConv2D"
        stream = gpu.lines.add(name="Stream #13(Compute)", timestamp_ns=1000)
        stream.events.add(metadata_id=1, offset_ps=0, duration_ps=5_000_000)
        stream.events.add(metadata_id=1, offset_ps=6_000_000, duration_ps=3_000_000)
        stream.events.add(metadata_id=2, offset_ps=9_000_000, duration_ps=40_000_000)
        # The second kernel again, on a line whose clock starts 1 ns later.
        again = gpu.lines.add(name="Stream #14(Compute)", timestamp_ns=1001)
        again.events.add(metadata_id=1, offset_ps=5_999_000, duration_ps=3_000_000)
        derived = gpu.lines.add(name="TensorFlow Ops", timestamp_ns=1000)
        derived.events.add(metadata_id=3, offset_ps=0, duration_ps=9_000_000)
    assert gpu_tf_common.kernel_ps(space) == 2 * (5_000_000 + 3_000_000)
    # Two GPUs, two launches each.
    assert gpu_tf_common.kernel_ps_by_name(space) == {
        "Sparse24WgmmaKernel": (2 * (5_000_000 + 3_000_000), 4)}
    # The copies, one per GPU, apart.
    assert gpu_tf_common.copy_ps_by_kind(space) == {"MemcpyDtoH": (2 * 40_000_000, 2)}

    with pytest.raises(RuntimeError, match="no GPU kernel"):
        gpu_tf_common.kernel_ps(xplane_pb2.XSpace(planes=[host]))


def test_host_op_time_sums_host_op_events_by_type():
    """benchmarks/gpu_tf/common.host_op_ps_by_type: "<node>:<type>" events of
    host planes summed per type; executor spans and GPU planes left out."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    gpu_tf_common = _load("escort_gpu_tf_common", "benchmarks/gpu_tf/common.py")
    space = xplane_pb2.XSpace()
    host = space.planes.add(name="/host:CPU")
    events = {"model/conv1/Conv2D:Conv2D": 7, "model/conv2/Conv2D:Conv2D": 5,
              "model/relu:Relu": 2, "escort/conv:Escort>CsrConv2D": 3,
              "executor:Process": 100, " __inference_call_9:__inference": 100,
              # Launch events of a GPU profile name kernels, colons and all.
              "void cudnn::bn_fw_inf_1C11_kernel_NHWC<float>(float, cudnnTensorStruct*)": 100,
              "void tensorflow::functor::SwapDimension1And2InTensor3<float>(int, "
              "Dimension<3>, float*)": 100}
    line = host.lines.add(name="tf_inter_op")
    for key, (name, duration) in enumerate(events.items(), 1):
        host.event_metadata[key].name = name
        line.events.add(metadata_id=key, duration_ps=duration)
    gpu = space.planes.add(name="/device:GPU:0")
    gpu.event_metadata[1].name = "conv1:Conv2D"
    gpu.lines.add(name="TensorFlow Ops").events.add(metadata_id=1, duration_ps=1000)
    assert gpu_tf_common.host_op_ps_by_type(space) == {"Conv2D": 12, "Relu": 2,
                                                       "Escort>CsrConv2D": 3}


def test_profile_model_reports_each_variants_host_ops(monkeypatch, tmp_path):
    """benchmarks/gpu_tf/profile_model.py on a tiny model, on the CPU: every
    variant profiled, the converted ones running our op and the dense one not."""
    def build(size):
        L = tf_keras.layers
        return tf_keras.Sequential([
            tf_keras.Input((size, size, 4)), L.Conv2D(8, 3, padding="same", name="conv1"),
            L.BatchNormalization(name="bn1"), L.ReLU(name="relu1"), L.Flatten(name="flat")])

    monkeypatch.setitem(skimcaffe_models.MODELS, "tiny_bn", (
        build, lambda layer: 0.8 if isinstance(layer, tf_keras.layers.Conv2D) else 0.0))
    profile_model = _load("escort_profile_model", "benchmarks/gpu_tf/profile_model.py")
    assert profile_model.main([
        "--model", "tiny_bn", "--image-size", "6", "--reps", "1", "--runs", "1", "--autotune",
        "--top", "50",
        "--json", str(tmp_path / "p.json"), "--md", str(tmp_path / "p.md")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    variants = report["variants"]
    assert sorted(variants) == ["autotuned", "converted", "converted_folded", "dense"]
    assert [row["name"] for row in report["autotune_layer_ms"]] == ["conv1"]
    for name, variant in variants.items():
        assert _finite_positive(variant["wall_ms"])
        if name != "autotuned":  # which kind autotune keeps is a timing
            assert ("Escort>CsrConv2D" in variant["host_op_ms"]) == (name != "dense")
    assert "| converted_folded |" in (tmp_path / "p.md").read_text()


def test_profile_model_shortens_kernel_signatures_to_their_function():
    profile_model = _load("escort_profile_model", "benchmarks/gpu_tf/profile_model.py")
    assert profile_model._short(
        "void escort::(anonymous namespace)::CsrConvKernel<float, 4>(escort::Params)") \
        == "escort::CsrConvKernel"
    assert profile_model._short(
        "std::enable_if<!(T5), void>::type internal::gemvx::kernel<int, (int)128>(int)") \
        == "internal::gemvx::kernel"
    assert profile_model._short("sm90_xmma_fprop_implicit_gemm") == "sm90_xmma_fprop_implicit_gemm"
