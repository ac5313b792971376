"""Latency and throughput of a deployed model, measured two ways.

*Model-only*: the ``run`` stage alone on a batch prepared once, i.e. what the backend and accelerator deliver,
including the host/device copies a real caller also pays. *End-to-end, serial*: ``prepare`` + ``run`` + ``finish``
one after the other from a uint8 frame at a camera's size (540x960 by default, like the bundled dashcam video) to
the class map at that size. Both rates are ``batch / mean latency`` of back-to-back calls, not the pipelined
throughput of ``edgeseg video``, which overlaps the three stages in threads. The two are timed in alternation, one
model-only call then one end-to-end call, so that load from other processes and clock changes hit both alike: timed
as two blocks one after the other, the end-to-end rate came out 2-3% above the model-only one on a busy machine
(issue 17).
Each call is timed with ``perf_counter``; backends return only once results are on the host (ONNX Runtime's
IO-binding run is synchronous, the TensorRT backend synchronises its stream), so GPU work is inside the
measurement. All samples are kept: no outlier clipping, tails show in p99.
"""

from __future__ import annotations

import sys
from time import perf_counter
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from .segmenter import Segmenter

DEFAULT_CAMERA_SIZE = (540, 960)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean (and min/max) of per-call times, in milliseconds."""
    samples = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(samples.mean()),
            "min": float(samples.min()), "max": float(samples.max())}


def synthetic_frame(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth random RGB frame: content does not change a CNN's speed, but a realistic image keeps resizing and
    any data-dependent post-processing honest compared with a constant one."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, size[0] // 32), max(2, size[1] // 32), 3), dtype=np.uint8)
    return cv2.resize(coarse, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def time_alternating(calls: list[Callable[[], object]], warmup: int, iters: int, progress: bool | None = None
                     ) -> list[list[float]]:
    """Run every call ``warmup`` times untimed, then ``iters`` rounds of each call once, timed; returns seconds per
    call, one list per call.

    ``progress=None`` shows a bar on an interactive stderr for runs longer than about a second.
    """
    for _ in range(warmup):
        for call in calls:
            call()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in tqdm(range(iters), desc="timing", unit="round", file=sys.stderr, leave=False, delay=1.0,
                  disable=None if progress is None else not progress):
        for call, times in zip(calls, samples):
            start = perf_counter()
            call()
            times.append(perf_counter() - start)
    return samples


def benchmark(segmenter: Segmenter, batch: int = 1, warmup: int = 10, iters: int = 100,
              camera_size: tuple[int, int] = DEFAULT_CAMERA_SIZE, progress: bool | None = None) -> dict:
    """Time ``segmenter`` at its input size (or, for a dynamic model without one, the camera size rounded).

    Returns a JSON-ready row: ``backend``, ``device``, ``size`` [h, w], ``batch``, ``latency_ms`` and ``fps``
    (model-only, images/s), ``e2e_latency_ms`` and ``e2e_fps`` (serial end-to-end, frames/s), plus the model,
    providers, the export's ``precision`` and the ``compute_precision`` the backend really runs (``None``: the
    export's).
    """
    if batch < 1 or iters < 1 or warmup < 0:
        raise ValueError("batch and iters must be positive and warmup non-negative")
    frames = [synthetic_frame(camera_size, seed=i) for i in range(batch)]
    network_size = segmenter.network_size(frames)
    prepared = segmenter.prepare([synthetic_frame(network_size, seed=i) for i in range(batch)])
    frame_sizes = [frame.shape[:2] for frame in frames]
    model_samples, e2e_samples = time_alternating(
        [lambda: segmenter.run(prepared),
         lambda: segmenter.finish(segmenter.run(segmenter.prepare(frames)), frame_sizes)], warmup, iters, progress)
    latency, e2e_latency = latency_summary(model_samples), latency_summary(e2e_samples)
    backend = segmenter.backend
    return {
        "model": segmenter.meta.model,
        "backend": backend.name,
        "device": backend.device,
        "providers": list(backend.providers),
        "precision": segmenter.meta.precision,
        "compute_precision": backend.compute_precision,
        "size": list(network_size),
        "batch": batch,
        "warmup": warmup,
        "iters": iters,
        "latency_ms": latency,
        "fps": batch * 1000.0 / latency["mean"],
        "camera_size": list(camera_size),
        "e2e_latency_ms": e2e_latency,
        "e2e_fps": batch * 1000.0 / e2e_latency["mean"],
    }


BENCH_NOTES = (
    "model-only: the network call on a prepared batch; end-to-end, serial: frame -> prepare -> run -> finish -> map",
    "img/s, frames/s: batch / mean latency of back-to-back calls, not pipelined throughput (edgeseg video overlaps",
    "the stages); the two are timed in alternation, call by call, so that load hits both alike",
)


def format_bench_table(rows: list[dict]) -> str:
    """One line per benchmarked size, then notes that say what each block times and what its rate means."""
    header = (f"{'size':>11} {'batch':>5} | {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8} {'img/s':>8} | "
              f"{'p50':>8} {'p99':>8} {'frames/s':>8}")
    lines = [f"{'':17} | {'model-only (ms)':<44} | end-to-end, serial (ms)", header, "-" * len(header)]
    for row in rows:
        model, e2e = row["latency_ms"], row["e2e_latency_ms"]
        size = f"{row['size'][0]}x{row['size'][1]}"
        lines.append(f"{size:>11} {row['batch']:>5} | {model['p50']:8.2f} {model['p90']:8.2f} {model['p99']:8.2f} "
                     f"{model['mean']:8.2f} {row['fps']:8.1f} | {e2e['p50']:8.2f} {e2e['p99']:8.2f} "
                     f"{row['e2e_fps']:8.1f}")
    return "\n".join([*lines, *BENCH_NOTES])
