"""Where a whole model's call goes on the GPU: kernels and host op time, dense vs converted.

For one model of `escort_tf.skimcaffe_models.MODELS` at one batch size, pruned
as `bench_models.py` prunes it, each variant (dense, converted, converted with
batch norms folded, and with --autotune the autotuned model) gets:
  - the median wall time of a `tf.function` call (variants interleaved),
  - its GPU kernel time per call and the kernels that take it, by name,
  - the host time per TF op type (an executor thread's time per op: for a GPU
    op its launch work), from the same TF profile.
A call whose wall time exceeds its GPU time by far is bound by the host's
dispatch; the kernel list then says what a faster kernel could still win.

  python benchmarks/gpu_tf/profile_model.py --model vgg16 --batch 1 \\
      --json OUT.json --md OUT.md [--autotune] [--top 8]
"""

import argparse
import os
import re
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (benchmarks/gpu_tf/common.py)

import escort_tf  # noqa: E402
from escort_tf import skimcaffe_models  # noqa: E402
from escort_tf.timing import time_side_by_side  # noqa: E402


def _short(kernel_name, width=90):
    """A kernel's qualified function name, without return type, template and
    parameters, for a table cell."""
    name = kernel_name.replace("(anonymous namespace)::", "")
    while re.search(r"<[^<>]*>", name):  # template arguments, innermost first
        name = re.sub(r"<[^<>]*>", "", name)
    name = name.split("(", 1)[0].split()
    name = name[-1] if name else kernel_name
    return name if len(name) <= width else name[:width - 3] + "..."


def variant_profile(fn, runs, top):
    """GPU kernel ms per call, its top kernels and the host op ms per type,
    from one TF profile of `runs` calls of `fn` (GPU parts empty without a GPU)."""
    space = common.profile(fn, runs)
    per_type = sorted(common.host_op_ps_by_type(space).items(), key=lambda kv: -kv[1])
    profile = {"host_op_ms": {op: ps / 1e9 / runs for op, ps in per_type[:top]},
               "host_op_ms_total": sum(ps for _, ps in per_type) / 1e9 / runs}
    if tf.config.list_physical_devices("GPU"):
        by_name = common.kernel_ps_by_name(space)
        kernels = sorted(by_name.items(), key=lambda kv: -kv[1][0])
        profile["gpu_ms"] = sum(ps for ps, _ in by_name.values()) / 1e9 / runs
        profile["kernels_per_call"] = sum(n for _, n in by_name.values()) / runs
        profile["kernels"] = [{"name": _short(name), "ms": ps / 1e9 / runs,
                               "launches_per_call": n / runs}
                              for name, (ps, n) in kernels[:top]]
        # Copies per call: a host-memory op input fed from device memory
        # shows here as a device-to-host copy per call.
        profile["copies_per_call"] = {kind: {"ms": ps / 1e9 / runs, "count": n / runs}
                                      for kind, (ps, n) in common.copy_ps_by_kind(space).items()}
    return profile


def markdown(report):
    lines = [f"# Where a call goes: {report['model']}, batch {report['batch']}", "",
             common.machine_line(report["machine"]), "",
             "Wall: median `tf.function` call, variants interleaved. GPU: kernel time "
             "per call (TF profiler). Host ops: executor time per op type, summed.", "",
             "| variant | wall ms | GPU ms | kernels per call | copies per call | host op ms |",
             "|---|---|---|---|---|---|"]
    variants = report["variants"]
    for name, v in variants.items():
        gpu = f"{v['gpu_ms']:.3f}" if "gpu_ms" in v else "-"
        launches = f"{v['kernels_per_call']:.0f}" if "kernels_per_call" in v else "-"
        copies = ", ".join(f"{c['count']:.0f} {kind}" for kind, c in
                           v.get("copies_per_call", {}).items()) or "-"
        lines.append(f"| {name} | {v['wall_ms']:.3f} | {gpu} | {launches} | {copies} | "
                     f"{v['host_op_ms_total']:.3f} |")
    for name, v in variants.items():
        lines += ["", f"## {name}", "", "| kernel | ms per call | launches per call |",
                  "|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['ms']:.3f} | {k['launches_per_call']:.0f} |"
                  for k in v.get("kernels", [])]
        lines += ["", "| op type (host) | ms per call |", "|---|---|"]
        lines += [f"| {op} | {ms:.3f} |" for op, ms in v["host_op_ms"].items()]
    if report["autotune_layer_ms"]:
        lines += ["", "## Autotune's layer times (ms, each layer alone)", "",
                  "| layer | sparse | dense | kept |", "|---|---|---|---|"]
        lines += [f"| {row['name']} | {row['sparse_ms']:.3f} | "
                  f"{'-' if row['dense_ms'] is None else format(row['dense_ms'], '.3f')} | "
                  f"{row['decision']} |" for row in report["autotune_layer_ms"]]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--md")
    parser.add_argument("--model", default="vgg16", choices=sorted(skimcaffe_models.MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3, help="profiled calls per variant")
    parser.add_argument("--top", type=int, default=8, help="kernels and op types listed")
    parser.add_argument("--autotune", action="store_true",
                        help="add convert(..., autotune=True, fold_batch_norm=True)")
    args = parser.parse_args(argv)

    build, sparsity_of = skimcaffe_models.MODELS[args.model]
    dense, _ = skimcaffe_models.prune_like_skimcaffe(build(args.image_size), sparsity_of)
    models = {"dense": dense, "converted": escort_tf.convert(dense),
              "converted_folded": escort_tf.convert(dense, fold_batch_norm=True)}
    layer_times = []
    if args.autotune:
        models["autotuned"], tuning = escort_tf.convert(
            dense, autotune=True, autotune_batch_size=args.batch, fold_batch_norm=True,
            return_report=True)
        layer_times = [{"name": row.name, "decision": row.decision, "sparse_ms": row.sparse_ms,
                        "dense_ms": row.dense_ms} for row in tuning if row.sparse_ms is not None]
    x = tf.constant(np.random.default_rng(0).standard_normal(
        (args.batch, *dense.input_shape[1:])).astype(np.float32))
    fns = {name: tf.function(lambda t, m=m: m(t, training=False)) for name, m in models.items()}
    calls = {name: (lambda fn=fn: fn(x)) for name, fn in fns.items()}
    walls = time_side_by_side(calls, reps=args.reps)
    report = {"machine": common.machine_info(), "command": " ".join(["python"] + sys.argv),
              "model": args.model, "batch": args.batch, "image_size": args.image_size,
              "autotune_layer_ms": layer_times, "variants": {}}
    for name, call in calls.items():
        report["variants"][name] = dict(wall_ms=walls[name]["median_ms"],
                                        **variant_profile(call, args.runs, args.top))
    common.finish(report, args.json, args.md, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
