"""The 2:4 tensor-core path inside TensorFlow on the GPU, next to cuDNN at the same precision.

Layers: each layer of `escort_tf.layer_table` with a random 2:4 filter (2 of
every 4 input channels kept at each tap), NHWC, no bias, at batch 1, 8 and 32.
One `tf.function` runs `--calls` convolutions back to back on rotating inputs
(as benchmarks/gpu_tf/bench_layers.py does); time per call = its time over
`--calls`. Side by side in one process:
  escort_24_f16 / escort_24_bf16   the op with engine="tensor_cores_2_4"
  cudnn_f16 / cudnn_bf16           tf.nn.conv2d on the dense filter, same dtype
  cudnn_tf32                       tf.nn.conv2d in float32, TF32 on (TF's default)

Models: ResNet-50 (224x224) with every conv whose input channels are a
multiple of 32 pruned 2:4 by magnitude along the input channels (what
TFMOT's sparsity_m_by_n=(2, 4) keeps), built under the mixed_float16 and
mixed_bfloat16 policies: the dense model and `escort_tf.convert(model)`
(whose 2:4 layers run on tensor cores), plus the float32 model with TF32 on,
as median `tf.function` calls with the output read back. Each variant's
error is against the float32 model with TF32 off.

With a GPU, each layer and model variant also gets its GPU kernel time
inside TF (`common.gpu_kernel_us`, from the TF profiler): wall time is bound
by the host's dispatch wherever that is slower than the kernels, and hosts
differ by 2x.

  python benchmarks/gpu_tf/bench_sparse24.py --json OUT.json [--md OUT.md]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import escort_tf  # noqa: E402
from escort_tf import fold  # noqa: E402
from escort_tf.layer_table import LAYERS  # noqa: E402
from escort_tf.measurement import geomean  # noqa: E402
from escort_tf.timing import time_side_by_side  # noqa: E402

HALF_TYPES = {"f16": tf.float16, "bf16": tf.bfloat16}
POLICIES = {"f16": "mixed_float16", "bf16": "mixed_bfloat16"}


def prune_2_4(kernel):
    """`kernel` (HWIO) with the 2 largest-magnitude of every 4 input channels kept."""
    kh, kw, cin, cout = kernel.shape
    groups = np.moveaxis(kernel, 2, 3).reshape(kh, kw, cout, cin // 4, 4)
    order = np.argsort(-np.abs(groups), axis=-1, kind="stable")
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, order[..., :2], True, axis=-1)
    return np.moveaxis(np.where(keep, groups, 0).reshape(kh, kw, cout, cin), 3, 2)


def bench_layer(layer, batch, calls, reps, rng):
    shape = (layer.kernel, layer.kernel, layer.in_channels, layer.out_channels)
    # A filter per call (see common.serial_calls), all 2:4.
    denses = [prune_2_4(rng.standard_normal(shape).astype(np.float32)) for _ in range(calls)]
    csrs = [escort_tf.CsrFilter.from_dense(dense) for dense in denses]
    padding = layer.explicit_padding()
    tf_padding = [[0, 0], *padding, [0, 0]]
    in_bytes = 2 * batch * layer.height * layer.width * layer.in_channels
    sets = max(2, min(8, -(-120_000_000 // in_bytes)))
    xs32 = [rng.standard_normal((batch, layer.height, layer.width, layer.in_channels))
            .astype(np.float32) for _ in range(sets)]

    fns, check = {}, {}
    for name, dtype in HALF_TYPES.items():
        xs = [tf.constant(x, dtype) for x in xs32]
        values = [tf.constant(csr.values, dtype) for csr in csrs]
        kernels = [tf.constant(dense, dtype) for dense in denses]

        def escort(x, i, values=values):
            return escort_tf.ops.csr_conv2d(x, csrs[i].row_offsets, csrs[i].column_indices,
                                            values[i], shape, strides=layer.stride,
                                            padding=padding, engine="tensor_cores_2_4")

        def cudnn(x, i, kernels=kernels):
            return tf.nn.conv2d(x, kernels[i], layer.stride, tf_padding)

        fns[f"escort_24_{name}"] = common.serial_calls(escort, xs, calls)
        fns[f"cudnn_{name}"] = common.serial_calls(cudnn, xs, calls)
        check[name] = (escort(xs[0], 0), cudnn(xs[0], 0))
    xs = [tf.constant(x) for x in xs32]
    kernels32 = [tf.constant(dense) for dense in denses]
    fns["cudnn_tf32"] = common.serial_calls(
        lambda x, i: tf.nn.conv2d(x, kernels32[i], layer.stride, tf_padding), xs, calls)
    times = time_side_by_side(fns, reps=reps, warmup=2)
    gpu_us = {kind: us / calls for kind, us in common.gpu_kernel_us_each(fns).items()}
    with common.tf32(False):
        reference = tf.nn.conv2d(tf.cast(xs[0], tf.float64), tf.cast(kernels32[0], tf.float64),
                                 layer.stride, tf_padding)
    row = {"layer": layer.name, "batch": batch, "calls_per_function": calls}
    for kind, t in times.items():
        row[f"{kind}_us"] = 1e3 * t["median_ms"] / calls
    for kind, us in gpu_us.items():
        row[f"{kind}_gpu_us"] = us
    for name in HALF_TYPES:
        row[f"speedup_{name}_vs_cudnn_{name}"] = row[f"cudnn_{name}_us"] / row[f"escort_24_{name}_us"]
        if gpu_us:
            row[f"gpu_time_speedup_{name}_vs_cudnn_{name}"] = (
                gpu_us[f"cudnn_{name}"] / gpu_us[f"escort_24_{name}"])
        ours, cudnn = check[name]
        row[f"relative_error_escort_{name}"] = common.relative_error(ours, reference)
        row[f"relative_error_cudnn_{name}"] = common.relative_error(cudnn, reference)
    row["speedup_f16_vs_cudnn_tf32"] = row["cudnn_tf32_us"] / row["escort_24_f16_us"]
    return row


def resnet50_2_4(image_size, policy):
    """ResNet-50 under `policy` with the weights of `resnet50_2_4.weights`."""
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        model = tf_keras.applications.ResNet50(weights=None, classifier_activation=None,
                                               input_shape=(image_size, image_size, 3))
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    if resnet50_2_4.weights is None:
        rng = np.random.default_rng(1)
        # Random weights that keep activations near unit scale, so that float16
        # does not overflow: He-scaled convs (2:4 pruning halves the sum of
        # squares: sqrt(2) back), and each residual branch's last batch norm
        # scaled down, as zero-init residual training starts out.
        for layer in model.layers:
            if isinstance(layer, tf_keras.layers.Conv2D):
                kernel = rng.standard_normal(layer.kernel.shape).astype(np.float32)
                kernel *= np.sqrt(2.0 / np.prod(layer.kernel.shape[:3]))
                if layer.kernel.shape[2] % 32 == 0:
                    kernel = prune_2_4(kernel) * np.sqrt(2.0)
                layer.kernel.assign(kernel)
            elif layer.name.endswith("_3_bn"):
                layer.gamma.assign(tf.fill(layer.gamma.shape, 0.1))
        resnet50_2_4.weights = model.get_weights()
    model.set_weights(resnet50_2_4.weights)
    return model


resnet50_2_4.weights = None


def bench_models(image_size, batches, reps, progress):
    models = {"dense_tf32": resnet50_2_4(image_size, "float32")}
    reports = {}
    for name, policy in POLICIES.items():
        dense = resnet50_2_4(image_size, policy)
        start = time.perf_counter()
        converted, report = escort_tf.convert(dense, return_report=True)
        models[f"dense_{name}"] = dense
        models[f"converted_{name}"] = converted
        if name == "f16":
            # Batch norms and ReLUs folded into the convolutions: on the GPU
            # TF fuses a dense Conv2D's bias and ReLU but not its batch norm,
            # and per-op host time bounds these model calls (see gpu_kernel_us).
            # Dense folded too, so that the gain of folding alone shows.
            models["dense_folded_f16"] = fold.fold_batch_norm(dense)[0]
            models["converted_folded_f16"] = escort_tf.convert(dense, fold_batch_norm=True)
        reports[name] = {"convert_s": time.perf_counter() - start,
                         "tensor_core_layers": sum(r.engine == "tensor_cores_2_4"
                                                   for r in report),
                         "sparse_layers": sum(r.decision == "sparse" for r in report)}
        progress(f"converted under {policy}: {reports[name]}")
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        # What a user would deploy at this batch: each layer timed on this GPU
        # (2:4 tensor cores, CSR kernel or dense), then the whole-model check.
        start = time.perf_counter()
        tuned, tuned_report = escort_tf.convert(models["dense_f16"], autotune=True,
                                                autotune_batch_size=batch, return_report=True)
        autotune = {"autotune_s": time.perf_counter() - start,
                    "tensor_core_layers": sum(r.engine == "tensor_cores_2_4" and
                                              r.decision == "sparse" for r in tuned_report),
                    "model_choice": tuned_report.model_choice}
        progress(f"autotuned under mixed_float16 at batch {batch}: {autotune}")
        batch_models = {**models, "autotuned_f16": tuned}
        x = tf.constant(rng.standard_normal((batch, image_size, image_size, 3), np.float32))
        fns = {kind: tf.function(lambda t, m=m: m(t, training=False))
               for kind, m in batch_models.items()}
        timed = {kind: (lambda fn=fn: fn(x).numpy()) for kind, fn in fns.items()}
        outputs = {kind: fn() for kind, fn in timed.items()}
        times = {kind: t["median_ms"]
                 for kind, t in time_side_by_side(timed, reps=reps, warmup=2).items()}
        gpu_ms = common.model_gpu_ms(fns, x)
        with common.tf32(False):
            reference = timed["dense_tf32"]()
        row = {"batch": batch, "reps": reps, "autotune_f16": autotune}
        for kind, t in times.items():
            row[f"{kind}_ms"] = t
            row[f"{kind}_relative_error_vs_fp32"] = common.relative_error(outputs[kind],
                                                                         reference)
        for kind, t in gpu_ms.items():
            row[f"{kind}_gpu_ms"] = t
        for name in POLICIES:
            row[f"speedup_converted_{name}_vs_dense_{name}"] = (
                times[f"dense_{name}"] / times[f"converted_{name}"])
            if gpu_ms:
                row[f"gpu_time_speedup_converted_{name}_vs_dense_{name}"] = (
                    gpu_ms[f"dense_{name}"] / gpu_ms[f"converted_{name}"])
        row["speedup_converted_folded_f16_vs_dense_f16"] = (
            times["dense_f16"] / times["converted_folded_f16"])
        row["speedup_converted_folded_f16_vs_dense_folded_f16"] = (
            times["dense_folded_f16"] / times["converted_folded_f16"])
        row["speedup_autotuned_f16_vs_dense_f16"] = times["dense_f16"] / times["autotuned_f16"]
        rows.append(row)
        progress(f"resnet50 b{batch}: " + ", ".join(f"{k} {t:.2f} ms" for k, t in times.items()))
    return {"image_size": image_size, "conversion": reports, "calls": rows}


_LAYER_HEADER = ["| layer | batch | ours f16 | cuDNN f16 | ours bf16 | cuDNN bf16 | cuDNN TF32 | "
                 "f16 vs cuDNN f16 | bf16 vs cuDNN bf16 |", "|---" * 9 + "|"]


def _layer_rows(layers, time_key, speedup_prefix):
    """One table row per layer: the variants' times ("<kind><time_key>") and
    the two same-precision speedups ("<speedup_prefix><dtype>_vs_cudnn_<dtype>")."""
    kinds = ["escort_24_f16", "cudnn_f16", "escort_24_bf16", "cudnn_bf16", "cudnn_tf32"]
    return [f"| {r['layer']} | {r['batch']} | "
            + " | ".join(f"{r[kind + time_key]:.1f}" for kind in kinds) + " | "
            + " | ".join(f"{r[f'{speedup_prefix}{d}_vs_cudnn_{d}']:.2f}x" for d in HALF_TYPES)
            + " |" for r in layers]


def markdown(report):
    lines = ["# 2:4 sparse tensor cores in TensorFlow on the GPU", "",
             common.machine_line(report["machine"]), "", f"Command: `{report['command']}`", ""]
    layers = report["layers"]
    if layers:
        lines += ["## Layers", "",
                  f"Microseconds per convolution, {report['calls']} back to back per "
                  "`tf.function`; a random 2:4 filter (50% dense) for ours, the same filter "
                  "dense for cuDNN.", "", *_LAYER_HEADER,
                  *_layer_rows(layers, "_us", "speedup_"), ""]
    if layers and "escort_24_f16_gpu_us" in layers[0]:
        lines += ["GPU kernel time per convolution inside the same `tf.function`s, in "
                  "microseconds (TF profiler, sum of the kernels' durations, copies excluded): "
                  "what the layer costs the GPU, whichever of host and GPU bounds the wall "
                  "time above.", "", *_LAYER_HEADER,
                  *_layer_rows(layers, "_gpu_us", "gpu_time_speedup_"), ""]
    for batch, s in report["layer_geomean"].items():
        lines.append(f"Geomean at batch {batch}: " + ", ".join(
            f"{k.replace('_', ' ')} {v:.2f}x" for k, v in s.items()))
    lines.append("")
    models = report.get("models")
    if models:
        kinds = ["dense_tf32", "dense_f16", "converted_f16", "dense_bf16", "converted_bf16"]
        speedups = ["converted_f16_vs_dense_f16", "converted_bf16_vs_dense_bf16"]
        if "autotuned_f16_ms" in models["calls"][0]:  # runs before 2026-12-07 lack it
            kinds.insert(3, "autotuned_f16")
            speedups.append("autotuned_f16_vs_dense_f16")
        if "converted_folded_f16_ms" in models["calls"][0]:  # from the second run of 2026-12-07
            kinds[3:3] = ["dense_folded_f16", "converted_folded_f16"]
            speedups += ["converted_folded_f16_vs_dense_f16",
                         "converted_folded_f16_vs_dense_folded_f16"]
        lines += ["## ResNet-50, 2:4-pruned, model call", "",
                  "Median `tf.function` call in ms (`training=False`, output read back); "
                  "the speedups compare converted (`convert(model)`) and autotuned "
                  "(`convert(model, autotune=True, autotune_batch_size=batch)`) with dense "
                  "under the same policy.", "",
                  "| batch | " + " | ".join(kinds) + " | "
                  + " | ".join(f"speedup {k.replace('_vs_', ' vs ')}" for k in speedups)
                  + " |",
                  "|---" * (len(kinds) + len(speedups) + 1) + "|"]
        for r in models["calls"]:
            lines.append(f"| {r['batch']} | " + " | ".join(f"{r[f'{k}_ms']:.2f}" for k in kinds)
                         + " | " + " | ".join(f"{r[f'speedup_{k}']:.2f}x" for k in speedups)
                         + " |")
        if "dense_f16_gpu_ms" in models["calls"][0]:
            lines += ["", "GPU kernel time per model call in ms (TF profiler): " + "; ".join(
                f"batch {r['batch']}: " + ", ".join(f"{k} {r[f'{k}_gpu_ms']:.2f}" for k in kinds)
                + ", converted f16 / dense f16 "
                f"{r['gpu_time_speedup_converted_f16_vs_dense_f16']:.2f}x"
                for r in models["calls"])]
        if "autotune_f16" in models["calls"][0]:
            lines += ["", "Autotune under mixed_float16: " + "; ".join(
                f"batch {r['batch']}: {r['autotune_f16']['autotune_s']:.1f} s, "
                f"{r['autotune_f16']['tensor_core_layers']} layers on tensor cores, "
                f"whole-model check kept {r['autotune_f16']['model_choice']}"
                for r in models["calls"])]
        lines += ["", "Relative error against float32 (TF32 off): " + "; ".join(
            f"batch {r['batch']}: " + ", ".join(
                f"{k} {r[f'{k}_relative_error_vs_fp32']:.1e}" for k in kinds[1:])
            for r in models["calls"]), "",
            "Conversion: " + "; ".join(f"{n}: {v}" for n, v in models["conversion"].items()), ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--md")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--skip-layers", action="store_true")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    rng = np.random.default_rng(0)
    report = {"machine": common.machine_info(), "command": " ".join(["python"] + sys.argv),
              "calls": args.calls, "layers": []}
    for batch in [] if args.skip_layers else batches:
        for layer in LAYERS:
            row = bench_layer(layer, batch, args.calls, args.reps, rng)
            report["layers"].append(row)
            progress(f"{layer.name} b{batch}: f16 {row['speedup_f16_vs_cudnn_f16']:.2f}x, "
                     f"bf16 {row['speedup_bf16_vs_cudnn_bf16']:.2f}x cuDNN")
    layers = report["layers"]
    keys = [key for key in ("speedup_f16_vs_cudnn_f16", "speedup_bf16_vs_cudnn_bf16",
                            "speedup_f16_vs_cudnn_tf32", "gpu_time_speedup_f16_vs_cudnn_f16",
                            "gpu_time_speedup_bf16_vs_cudnn_bf16")
            if layers and key in layers[0]]
    report["layer_geomean"] = {
        str(b): {key: geomean([r[key] for r in layers if r["batch"] == b]) for key in keys}
        for b in sorted({r["batch"] for r in layers})}
    if not args.skip_models:
        report["models"] = bench_models(args.image_size, batches, args.reps, progress)
    common.finish(report, args.json, args.md, markdown)


if __name__ == "__main__":
    main()
