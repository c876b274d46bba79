"""`escort-tf convert` / `bench`: the table, the SavedModel, and files never clobbered."""

import hashlib
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import tf_keras

import pruned_models
import escort_tf
from escort_tf import cli
from escort_tf.layers import SparseConv2D


@pytest.fixture(scope="module")
def model_and_input():
    rng = np.random.default_rng(11)
    pruned = pruned_models.prune(pruned_models.sequential(), 0.8, rng)
    x = pruned_models.random_input(rng)
    return pruned, x, pruned_models.masked_reference(pruned, x)


SOURCES = ["model.h5", "model.keras", "saved_model"]


@pytest.fixture(params=SOURCES)
def src(request, tmp_path, model_and_input):
    path = tmp_path / "src" / request.param
    path.parent.mkdir()
    model_and_input[0].save(str(path))
    return path


def table_rows(lines):
    """The report table's rows as dicts, cut at the header's column starts.

    Which columns a table has depends on the model (no "structure" column
    without a 2:4 layer, no timings without autotune).
    """
    header, *rows = lines
    starts = [(m.group(), m.start()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    ends = [start for _, start in starts[1:]] + [None]
    return [{name: row[start:end].strip() for (name, start), end in zip(starts, ends)}
            for row in rows]


def tree_digest(path):
    """Hash of every file name and content under `path` (or of the file itself)."""
    digest = hashlib.sha256()
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in paths:
        digest.update(str(p.relative_to(path.parent)).encode() + p.read_bytes())
    return digest.hexdigest()


def test_convert_writes_a_loadable_sparse_savedmodel(src, tmp_path, capsys, model_and_input):
    _, x, expected = model_and_input
    before = tree_digest(src)
    dst = tmp_path / "out"
    assert cli.main(["convert", str(src), str(dst), "--min-sparsity", "0.6"]) == 0
    out = capsys.readouterr().out
    sparsity = {w.layer.name: f"{1 - np.mean(w.pruning_vars[0][1]):.1%}"
                for w in model_and_input[0].layers if w.pruning_vars}
    columns = ("layer", "type", "kernel shape", "sparsity", "decision")
    assert [[row[c] for c in columns] for row in table_rows(out.splitlines()[:5])] == [
        ["conv_relu", "Conv2D", "3x3x3x8", sparsity["conv_relu"], "sparse"],
        ["conv_tanh", "Conv2D", "3x1x8x6", sparsity["conv_tanh"], "sparse"],
        ["conv_linear", "Conv2D", "2x2x6x4", sparsity["conv_linear"], "sparse"],
        ["dense", "Dense", "24x3", sparsity["dense"], "dense"]]
    assert f"wrote {dst}: 3 of 4 layers" in out
    loaded = tf_keras.models.load_model(str(dst))
    assert sum(isinstance(layer, SparseConv2D) for layer in loaded.layers) == 3
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert tree_digest(src) == before
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no temp dir left behind


def test_existing_dst_is_refused_without_overwrite(tmp_path, capsys, model_and_input):
    src = tmp_path / "model.h5"
    model_and_input[0].save(str(src))
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert cli.main(["convert", str(src), str(dst)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert os.listdir(dst) == ["keep.txt"]

    assert cli.main(["convert", str(src), str(dst), "--overwrite"]) == 0
    assert not (dst / "keep.txt").exists() and (dst / "saved_model.pb").exists()
    assert sorted(os.listdir(tmp_path)) == ["model.h5", "out"]


@pytest.mark.parametrize("dst_exists", [False, True], ids=["new_dst", "overwrite_dst"])
def test_failed_save_leaves_dst_as_it_was(tmp_path, monkeypatch, model_and_input, dst_exists):
    src = tmp_path / "model.h5"
    model_and_input[0].save(str(src))
    dst = tmp_path / "out"
    if dst_exists:
        dst.mkdir()
        (dst / "keep.txt").write_text("mine")

    def save_then_fail(self, path, **kwargs):
        os.makedirs(os.path.join(path, "variables"))  # a partial write
        raise OSError("disk full")

    monkeypatch.setattr(tf_keras.Model, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        cli.main(["convert", str(src), str(dst), "--overwrite"])
    expected = ["model.h5", "out"] if dst_exists else ["model.h5"]
    assert sorted(os.listdir(tmp_path)) == expected
    if dst_exists:
        assert os.listdir(dst) == ["keep.txt"]


def test_failed_rename_puts_the_previous_dst_back(tmp_path, monkeypatch):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    rename = os.rename

    def failing_rename(source, target):
        if os.path.basename(source).startswith(".out.tmp-"):
            raise OSError("rename failed")
        rename(source, target)

    monkeypatch.setattr(os, "rename", failing_rename)
    model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(1)])
    with pytest.raises(OSError, match="rename failed"):
        cli.save_atomically(model, str(dst), overwrite=True)
    assert os.listdir(tmp_path) == ["out"] and os.listdir(dst) == ["keep.txt"]


@pytest.mark.parametrize("args,message", [
    pytest.param(["missing.h5", "out"], "SRC 'missing.h5' does not exist", id="missing_src"),
    pytest.param(["model.h5", "model.h5", "--overwrite"], "overlaps SRC", id="dst_is_src"),
    pytest.param(["model.h5", "no_dir/out"], "parent directory", id="dst_parent_missing"),
    pytest.param(["model.h5", "out.keras"], "DST is a SavedModel directory", id="dst_keras_file"),
    pytest.param(["model.h5", "out", "--min-sparsity", "2"], "--min-sparsity must be in",
                 id="bad_min_sparsity"),
    pytest.param(["model.h5", "out", "--autotune", "--autotune-batch-size", "0"],
                 "--autotune-batch-size must be positive", id="bad_autotune_batch"),
    pytest.param(["model.h5", "out", "--no-whole-model-check"],
                 "--no-whole-model-check needs --autotune", id="check_without_autotune"),
    pytest.param(["notes.txt", "out"], "can't load a tf_keras model", id="not_a_model"),
])
def test_errors_name_the_problem(tmp_path, monkeypatch, capsys, model_and_input, args, message):
    monkeypatch.chdir(tmp_path)
    model_and_input[0].save("model.h5")
    (tmp_path / "notes.txt").write_text("not a model")
    before = tree_digest(tmp_path / "model.h5")
    assert cli.main(["convert", *args]) == 1
    assert message in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["model.h5", "notes.txt"]
    assert tree_digest(tmp_path / "model.h5") == before


def test_autotune_prints_both_timings(tmp_path, capsys, model_and_input):
    src = tmp_path / "model.h5"
    model_and_input[0].save(str(src))
    assert cli.main(["convert", str(src), str(tmp_path / "out"), "--autotune"]) == 0
    for row in table_rows(capsys.readouterr().out.splitlines()[:4]):
        assert float(row["sparse ms"]) > 0 and float(row["dense ms"]) > 0
        assert "autotune" in row["reason"]


def test_autotune_batch_size_reaches_convert(tmp_path, monkeypatch, model_and_input):
    src = tmp_path / "model.h5"
    model_and_input[0].save(str(src))
    seen = {}
    real_convert = escort_tf.convert

    def spy(model, **kwargs):
        seen.update(kwargs)
        return real_convert(model, **kwargs)

    monkeypatch.setattr(escort_tf, "convert", spy)
    assert cli.main(["convert", str(src), str(tmp_path / "out"), "--autotune",
                     "--autotune-batch-size", "4"]) == 0
    assert seen["autotune"] is True and seen["autotune_batch_size"] == 4
    assert seen["autotune_whole_model"] is True


def test_no_whole_model_check_reaches_convert_and_the_report(tmp_path, capsys,
                                                             model_and_input):
    src = tmp_path / "model.h5"
    model_and_input[0].save(str(src))
    argv = ["convert", str(src), str(tmp_path / "out"), "--autotune"]
    assert cli.main(argv) == 0
    assert "whole model at batch 1:" in capsys.readouterr().out
    assert cli.main(argv + ["--no-whole-model-check", "--overwrite"]) == 0
    assert "whole model" not in capsys.readouterr().out


def test_fold_batch_norm_folds_and_the_report_says_so(tmp_path, capsys, rng):
    x = tf_keras.Input((6, 6, 2))
    y = tf_keras.layers.Conv2D(4, 3, name="conv")(x)
    y = tf_keras.layers.BatchNormalization(name="bn")(y)
    model = tf_keras.Model(x, tf_keras.layers.ReLU(name="relu")(y))
    kernel = model.get_layer("conv").kernel
    kernel.assign(np.where(rng.random(kernel.shape) < 0.8, 0, kernel.numpy()))
    model.get_layer("bn").moving_mean.assign(rng.standard_normal(4))
    src, dst = tmp_path / "model.h5", tmp_path / "out"
    model.save(str(src))
    assert cli.main(["convert", str(src), str(tmp_path / "unfolded")]) == 0
    assert "2 batch norm and ReLU layers could be folded" in capsys.readouterr().out
    assert cli.main(["convert", str(src), str(dst), "--fold-batch-norm"]) == 0
    out = capsys.readouterr().out
    assert "folded bn, relu into it" in out and "could be folded" not in out
    loaded = tf_keras.models.load_model(str(dst))
    assert [type(layer).__name__ for layer in loaded.layers] == ["InputLayer", "SparseConv2D"]
    data = rng.standard_normal((2, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(loaded(data).numpy(), model(data).numpy(), rtol=1e-5, atol=1e-5)


def test_bench_hands_its_arguments_to_the_benchmark(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(main=lambda argv: calls.append(argv) or 3)
    monkeypatch.setattr(cli, "benchmark", fake)
    assert cli.main(["bench", "--batch", "8", "--help"]) == 3
    assert calls == [["--batch", "8", "--help"]]


def test_python_dash_m_runs_the_cli(tmp_path, model_and_input):
    src = tmp_path / "model.keras"
    model_and_input[0].save(str(src))
    result = subprocess.run(
        [sys.executable, "-m", "escort_tf", "convert", str(src), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "conv_relu" in result.stdout and (tmp_path / "out" / "saved_model.pb").exists()


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert", "only_src"])
    assert exit_info.value.code == 2 and "DST" in capsys.readouterr().err
