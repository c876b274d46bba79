"""Wall-clock timing of TensorFlow calls, shared by `convert(autotune=True)` and the benchmarks.

Example:

    times = time_side_by_side({"sparse": lambda: sparse_fn(x), "dense": lambda: dense_fn(x)},
                              reps=15, budget_s=0.3)
    times["sparse"]["median_ms"]
"""

import gc
import statistics
import time
from typing import Callable, Dict, Optional

import tensorflow as tf

# Per-call samples shorter than this are repeated inside one sample, so timer
# resolution and Python jitter don't dominate the sub-millisecond calls.
_MIN_SAMPLE_S = 0.005


def wait_for(result) -> None:
    """Blocks until `result` (a tensor, or a nest of them, or anything else) is computed.

    GPU ops run asynchronously: a call returns once its kernels are queued.
    On a GPU this waits for the devices rather than copying an output to the
    host: a layer's output at batch 32 is tens of MB, whose copy took longer
    than the convolution and was charged to every variant alike, pulling
    their ratios towards 1. On the CPU the eager executor is synchronous and
    `.numpy()` of the smallest output shares its buffer.
    """
    tensors = [t for t in tf.nest.flatten(result) if isinstance(t, tf.Tensor)]
    if any("GPU" in t.device for t in tensors):
        tf.test.experimental.sync_devices()
    elif tensors:
        min(tensors, key=lambda t: t.shape.num_elements() or 0).numpy()


def _sample_s(fn: Callable[[], object], inner: int) -> float:
    """Wall time of one call of `fn`, averaged over `inner` back-to-back calls.

    Only the last call's result is waited for (see `wait_for`): calls queue
    behind one another. Python's garbage collector is off meanwhile, as in
    `timeit`: a collection that a `tf.function` call's garbage triggers would
    be charged to whichever variant happened to cross the threshold.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(inner - 1):
            fn()
        wait_for(fn())
        return (time.perf_counter() - start) / inner
    finally:
        if gc_was_enabled:
            gc.enable()


def time_side_by_side(fns: Dict[str, Callable[[], object]], reps: int,
                      warmup: int = 2, budget_s: Optional[float] = None,
                      min_reps: int = 3, min_sample_s: float = _MIN_SAMPLE_S,
                      decisive_ratio: Optional[float] = None) -> Dict[str, Dict[str, float]]:
    """Times several zero-argument callables in interleaved repetitions.

    Interleaving makes slow drifts (turbo, another process) hit every variant
    alike. Each variant is first warmed up (tracing, allocator, oneDNN
    primitive caches); the last warm-up call estimates its time, and a variant
    faster than `min_sample_s` is called several times per sample.

    Args:
        fns: name -> callable returning its computed result (tensors are
            waited for, so GPU times are complete).
        reps: timed samples per variant (the median is reported).
        warmup: untimed calls per variant before timing (at least 1; the
            first one traces a `tf.function`, so 2 give a warm estimate).
        budget_s: if set, fewer repetitions (but at least `min(reps, min_reps)`)
            when the warm-up times say `reps` would take longer than this.
        min_reps: the fewest repetitions a budget (or `decisive_ratio`) leaves.
        min_sample_s: a variant's calls are repeated within a sample until
            it lasts about this long (at most 50 calls).
        decisive_ratio: if set, stop after `min_reps` repetitions once the
            fastest variant's slowest sample times this ratio is still below
            every other variant's fastest sample: more samples cannot change
            which is fastest, only refine by how much (what autotune needs).

    Returns:
        name -> {"median_ms", "min_ms", "reps", "calls_per_rep"}.
    """
    inner, rep_s = {}, 0.0
    for name, fn in fns.items():
        for _ in range(max(warmup, 1)):
            once = _sample_s(fn, 1)
        inner[name] = max(1, min(50, int(min_sample_s / max(once, 1e-6))))
        rep_s += once * inner[name]
    if budget_s is not None:
        reps = max(min(reps, min_reps), min(reps, int(budget_s / max(rep_s, 1e-9))))
    samples = {name: [] for name in fns}
    for rep in range(1, reps + 1):
        for name, fn in fns.items():
            samples[name].append(_sample_s(fn, inner[name]))
        if decisive_ratio is not None and rep >= min_reps and _decided(samples, decisive_ratio):
            break
    return {name: {"median_ms": 1e3 * statistics.median(s), "min_ms": 1e3 * min(s),
                   "reps": len(s), "calls_per_rep": inner[name]}
            for name, s in samples.items()}


def _decided(samples: Dict[str, list], ratio: float) -> bool:
    """Whether one variant's samples all beat every other's by `ratio`."""
    fastest = min(samples, key=lambda name: statistics.median(samples[name]))
    return all(max(samples[fastest]) * ratio < min(s)
               for name, s in samples.items() if name != fastest)
