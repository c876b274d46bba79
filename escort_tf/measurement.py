"""What a benchmark records beside its times: the machine, the outputs' agreement, geomeans.

Shared by the layer and model timings (`escort_tf.layer_timing`,
`escort_tf.model_timing`) and the reports of the source tree's harness
(`benchmarks/harness.py`).
"""

import datetime
import math
import os
import platform
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from escort_tf._version import __version__

# Sparse and dense outputs must agree to this, relative to the output's scale
# (random-weight networks produce outputs far from 1 in magnitude).
RTOL = 1e-4
ATOL = 1e-4


def onednn_enabled() -> bool:
    """Whether TF's CPU ops run through oneDNN in this process.

    TF 2.21 turns oneDNN on by default only on CPUs with AVX-512 VNNI/BF16 or
    AMX; elsewhere `tf.nn.conv2d` runs Eigen's kernel, a slower peer, unless
    TF_ENABLE_ONEDNN_OPTS=1 was set before TensorFlow was imported.
    """
    try:
        # pylint: disable-next=import-outside-toplevel
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TF without the query: not known to be on
        return False


def dense_peer(machine: Dict[str, object]) -> str:
    """How reports name the kernel behind `tf.nn.conv2d` on `machine` (a
    `machine_info()`; reports from before its "onednn" field ran oneDNN)."""
    return "oneDNN" if machine.get("onednn", True) else "Eigen, oneDNN off"


def machine_info() -> Dict[str, object]:
    """What the numbers were measured on: CPU, cores, versions, date (UTC)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            fields = [line.split(":", 1) for line in f if ":" in line]
        names = [value.strip() for key, value in fields if key.strip() == "model name"]
        cpu = names[0] if names else cpu
        flags = next((set(value.split()) for key, value in fields if key.strip() == "flags"), set())
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "simd": [f for f in ("sse4_2", "avx2", "fma", "avx512f", "avx512_bf16") if f in flags],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or usable,
        "onednn": onednn_enabled(),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "escort_tf": __version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def geomean(values: Sequence[float]) -> float:
    """Geometric mean of positive numbers (NaN for an empty sequence)."""
    values = list(values)
    if not values:
        return float("nan")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def outputs_match(sparse: np.ndarray, dense: np.ndarray) -> Dict[str, object]:
    """Compares outputs with `RTOL`/`ATOL` scaled by the dense output's magnitude.

    Returns:
        {"max_abs_err", "output_scale", "match"}: the largest absolute
        difference, the scale `ATOL` was multiplied by, and whether the shapes
        agree and every element is within tolerance.
    """
    scale = max(1.0, float(np.max(np.abs(dense)))) if dense.size else 1.0
    err = float(np.max(np.abs(sparse - dense))) if dense.size else 0.0
    ok = bool(sparse.shape == dense.shape
              and np.allclose(sparse, dense, rtol=RTOL, atol=ATOL * scale))
    return {"max_abs_err": err, "output_scale": scale, "match": ok}
