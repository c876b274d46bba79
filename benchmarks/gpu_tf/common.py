"""What the in-TensorFlow GPU benchmarks share: machine description, TF32 switch, errors."""

import contextlib
import glob
import json
import os
import pathlib
import re
import subprocess
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

import escort_tf
from escort_tf.timing import wait_for


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


@contextlib.contextmanager
def recording():
    """Records a TF profile of the block: the list it yields holds the
    profile (`XSpace`) once the block has ended."""
    spaces = []
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            yield spaces
        finally:
            tf.profiler.experimental.stop()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        spaces.append(xplane_pb2.XSpace.FromString(pathlib.Path(path).read_bytes()))


def profile(fn, runs=3):
    """The TF profile (`XSpace`) of `runs` calls of `fn`, each waited for; a
    first call, outside the profile, traces and autotunes."""
    wait_for(fn())
    with recording() as spaces:
        for _ in range(runs):
            wait_for(fn())
    return spaces[0]


def gpu_kernel_us(fn, runs=3):
    """Microseconds of GPU kernel time per call of `fn`, from the TF profiler.

    A call's wall time in TF is the larger of the host's time to dispatch its
    ops and the GPU's time to run them. For layers that take tens of
    microseconds on the GPU the host's time wins, and it varies with the host
    CPU (the same H100 gave cuDNN 30 us per call behind one host and 70 us
    behind another), so wall time alone cannot say which kernel is faster.
    This sums the durations the profiler (CUPTI) records for the kernels of
    `runs` calls, on every stream of every GPU, copies excluded.

    Raises:
        RuntimeError: if the profile holds no GPU kernel (no GPU, or a
            profiler that recorded none): a zero would read as infinitely fast.
    """
    return kernel_ps(profile(fn, runs)) / 1e6 / runs


def gpu_kernel_us_each(fns):
    """`gpu_kernel_us` of each zero-argument callable in `fns` (name -> us per
    call), or {} where TF sees no GPU (the scripts then run on the CPU)."""
    if not tf.config.list_physical_devices("GPU"):
        return {}
    return {name: gpu_kernel_us(fn) for name, fn in fns.items()}


def model_gpu_ms(fns, x):
    """GPU kernel ms per call of each model function in `fns` (name -> fn)
    on input `x`, or {} where TF sees no GPU."""
    return {name: us / 1e3 for name, us in gpu_kernel_us_each(
        {name: (lambda fn=fn: fn(x)) for name, fn in fns.items()}).items()}


def _stream_events(space):
    """{(GPU, start ps, name, duration ps)} of every event on the GPU planes'
    raw CUPTI stream lines of a profile (`XSpace`): kernels and copies."""
    events = set()
    for plane in space.planes:
        if not plane.name.startswith("/device:GPU:"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            # Raw CUPTI lines are "Stream #N(...)"; skip any derived per-op line.
            if not re.match(r"Stream #\d+", line.name):
                continue
            for event in line.events:
                # One event per (GPU, start, name): listed twice, it counts once.
                events.add((plane.name, line.timestamp_ns * 1000 + event.offset_ps,
                            names.get(event.metadata_id, ""), event.duration_ps))
    return events


def _ps_by_name(events):
    by_name = {}
    for _, _, name, duration in events:
        ps, count = by_name.get(name, (0, 0))
        by_name[name] = (ps + duration, count + 1)
    return by_name


def kernel_ps_by_name(space):
    """{kernel name: (picoseconds, launches)} of the GPU kernels in a profile
    (`XSpace`), copies excluded.

    Raises:
        RuntimeError: if it holds no GPU kernel.
    """
    kernels = {e for e in _stream_events(space) if not e[2].startswith("Memcpy")}
    if not kernels:
        raise RuntimeError("the TF profile holds no GPU kernel")
    return _ps_by_name(kernels)


def copy_ps_by_kind(space):
    """{copy kind ("MemcpyHtoD", "MemcpyDtoH", ...): (picoseconds, copies)} of
    the GPU copies in a profile (`XSpace`); {} where there were none."""
    return _ps_by_name({e for e in _stream_events(space) if e[2].startswith("Memcpy")})


def kernel_ps(space):
    """Picoseconds of GPU kernels in a profile (`XSpace`), copies excluded.

    Raises:
        RuntimeError: if it holds no GPU kernel.
    """
    return sum(ps for ps, _ in kernel_ps_by_name(space).values())


# A TF op event on a host plane: "<node name>:<op type>" (node names hold no
# spaces or colons; kernel-launch events name C++ signatures, which do).
_HOST_OP_EVENT = re.compile(r"[^\s:]+:([A-Za-z_][\w>]*)")
# Executor and profiler spans named like ops, which are not op types.
_NOT_OP_TYPES = {"Process", "Run", "Start", "Done", "Record", "StartRegion", "StopRegion"}


def host_op_ps_by_type(space):
    """{TF op type: picoseconds} of the host's op events in a profile: the
    time each op type kept an executor thread (for a GPU op, its launch work;
    inter-op threads run ops side by side, so the sums can exceed the wall time)."""
    per_type = {}
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                match = _HOST_OP_EVENT.fullmatch(names.get(event.metadata_id, ""))
                if match and match.group(1) not in _NOT_OP_TYPES:
                    op = match.group(1)
                    per_type[op] = per_type.get(op, 0) + event.duration_ps
    return per_type


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
