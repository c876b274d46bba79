"""What the in-TensorFlow GPU benchmarks share: machine description, TF32 switch, errors."""

import contextlib
import json
import os
import subprocess

import numpy as np
import tensorflow as tf

import escort_tf


def machine_info():
    """The GPU, its driver and the TensorFlow / CUDA / cuDNN versions of this run."""
    gpus = tf.config.list_physical_devices("GPU")
    build = tf.sysconfig.get_build_info()
    # Without a GPU the scripts still run (a smoke test of the harness), on the CPU.
    gpu = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "?")
           if gpus else "no GPU (ran on the CPU)")
    info = {"gpu": gpu,
            "tensorflow": tf.__version__, "tf_cuda": build.get("cuda_version"),
            "tf_cudnn": build.get("cudnn_version"), "escort_tf": escort_tf.__version__,
            "tf32_default": tf.config.experimental.tensor_float_32_execution_enabled()}
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
        info["driver"], info["sm_clock_max"] = [s.strip() for s in query.split(",")]
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        info["nvidia_smi_error"] = str(error)
    return info


def machine_line(machine):
    return (f"{machine['gpu']}, driver {machine.get('driver', '?')}; TensorFlow "
            f"{machine['tensorflow']} (built for CUDA {machine['tf_cuda']}, cuDNN "
            f"{machine['tf_cudnn']}); escort_tf {machine['escort_tf']}; TF32 "
            f"{'on' if machine['tf32_default'] else 'off'} by default.")


@contextlib.contextmanager
def tf32(enabled):
    """TF32 for cuDNN/cuBLAS on or off inside the block (TF reads it per launch)."""
    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(enabled)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(previous)


def serial_calls(conv, xs, calls):
    """A `tf.function` running `conv(xs[i % len(xs)], i)` for i < `calls`, back to back.

    `conv` must differ per `i` (each call its own filter, as a model's layers
    have): calls identical in op, filter and input are merged by grappler's
    common-subexpression elimination (20 calls over 5 inputs ran 5
    convolutions). Time it with `escort_tf.timing`, which waits for the GPU
    and copies nothing back.
    """
    @tf.function
    def run():
        return [conv(xs[i % len(xs)], i) for i in range(calls)]
    return run


def relative_error(actual, reference):
    """||actual - reference|| / ||reference|| in float64 (NaN fails any bound)."""
    reference = np.asarray(reference, np.float64)
    return float(np.linalg.norm(np.asarray(actual, np.float64) - reference)
                 / max(np.linalg.norm(reference), 1e-30))


def write_json(path, report):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)


def finish(report, json_path, md_path, markdown):
    """Writes the JSON and, if asked, the markdown report, and prints the latter."""
    write_json(json_path, report)
    text = markdown(report)
    if md_path:
        with open(md_path, "w") as f:
            f.write(text + "\n")
    print(text)


def speedup_row(times, **fields):
    """A result row: each variant's time as "<kind>_ms" and, except the dense
    baseline's, "<kind>_speedup" (dense time over its time)."""
    row = dict(fields, **{f"{kind}_ms": t for kind, t in times.items()})
    for kind in times:
        if kind != "dense":
            row[f"{kind}_speedup"] = times["dense"] / times[kind]
    return row
