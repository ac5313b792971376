"""Dynamic batching: inference worker threads that gather concurrent requests into one network call.

The event loop never runs a network: handlers put decoded images on a bounded queue and await a future. Each worker
owns one Segmenter (its own session), takes the first waiting image, then keeps collecting until ``max_batch``
images are in hand or ``max_wait_ms`` have passed since that first image was queued, and runs them through
``prepare -> run -> finish`` at once. On a GPU a batch of eight costs little more than one image, so under load
throughput rises; on a CPU only the per-call overheads are shared (see ``benchmarks/results/serve_load.md``). An
idle server answers a lone request after at most ``max_wait_ms`` of extra delay.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from .metrics import ServeMetrics

_STOP = object()


class QueueFull(Exception):
    """More images are waiting than the server is configured to hold; the client should retry later."""


@dataclass
class InferenceResult:
    """One image's class map and how it was produced (the JSON answer and the tests read these)."""

    class_map: np.ndarray
    batch_size: int
    queue_ms: float
    inference_ms: float
    confidence: np.ndarray | None = None  # uint8 0-255 max softmax probability, when the request asked for it


@dataclass
class _Job:
    image: np.ndarray
    confidence: bool = False
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


def accepts_batches(segmenter) -> bool:
    """Whether the network takes more than one image per call: a dynamic batch axis in the metadata and a backend
    without a batch limit of one. Static-batch models run one image at a time (the Segmenter would split anyway)."""
    backend_limit = getattr(getattr(segmenter, "backend", None), "max_batch", None)
    return segmenter.meta.batch is None and (backend_limit is None or backend_limit > 1)


def _size_key(segmenter, image: np.ndarray) -> tuple[int, int]:
    """Images that share this key are resized to the same network input, so they may share one batch.

    Models with a fixed input size (or a ``size`` given at load) put every image in one group; a dynamic-size model
    loaded without a size runs each image at its own rounded size, so a request's answer never depends on the
    sizes of the requests that happened to arrive with it.
    """
    network_size = getattr(segmenter, "network_size", None)
    if network_size is not None:
        return tuple(network_size([image]))
    return tuple(segmenter.input_size or image.shape[:2])


class BatchingQueue:
    """Worker threads, one per Segmenter, fed from one bounded queue.

    Args:
        segmenters: One per worker thread. Passing several lets N requests run their networks in parallel (each
            session with its own buffers); they must all load the same model.
        max_batch: Most images per network call; forced to 1 when the model has a fixed batch axis.
        max_wait_ms: How long a worker holding one image waits for more before it runs the batch.
        max_queue: Images that may wait at once; beyond it :meth:`submit` raises :class:`QueueFull` instead of
            letting latency grow without bound.
        metrics: Where batch sizes, inference time and queue depth are recorded.
    """

    def __init__(self, segmenters: Sequence, max_batch: int = 1, max_wait_ms: float = 0.0, max_queue: int = 256,
                 metrics: ServeMetrics | None = None) -> None:
        if not segmenters:
            raise ValueError("at least one segmenter is needed")
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError(f"invalid batching settings: max_batch={max_batch}, max_wait_ms={max_wait_ms}, "
                             f"max_queue={max_queue}")
        self.segmenters = list(segmenters)
        self.requested_max_batch = max_batch
        self.max_batch = max_batch if accepts_batches(self.segmenters[0]) else 1
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics or ServeMetrics()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._threads: list[threading.Thread] = []
        self._recent_batch_sizes: deque[int] = deque(maxlen=256)
        self._lock = threading.Lock()
        self.batches = 0
        self.images = 0

    @property
    def workers(self) -> int:
        return len(self.segmenters)

    def start(self) -> None:
        if self._threads:
            return
        for index, segmenter in enumerate(self.segmenters):
            thread = threading.Thread(target=self._work, args=(segmenter,), name=f"edgeseg-infer-{index}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive_workers(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def submit(self, image: np.ndarray, confidence: bool = False) -> Future:
        """Queue one HxWx3 uint8 RGB image; the future resolves to an :class:`InferenceResult` (with the confidence
        map when asked) or the error."""
        job = _Job(image, confidence)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} images are already waiting for inference") from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return job.future

    def stop(self, timeout: float = 10.0) -> None:
        """Let the workers finish what they hold, then end them; waiting requests beyond that are failed."""
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    def stats(self) -> dict:
        with self._lock:
            recent = list(self._recent_batch_sizes)
            batches, images = self.batches, self.images
        return {
            "workers": self.workers,
            "workers_alive": self.alive_workers(),
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_s * 1000.0,
            "queue_depth": self._queue.qsize(),
            "batches": batches,
            "images": images,
            "mean_batch_size": float(np.mean(recent)) if recent else 0.0,
        }

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job plus whatever else arrives within the wait; also says whether a stop signal came.

        The wait counts from when the first job was queued, not from when a worker took it: under load, jobs have
        already waited while the worker was busy, so the batch runs at once with what is there instead of leaving
        the worker idle. ``max_wait_ms`` thus bounds the delay that batching adds to any request.
        """
        jobs = [first]
        deadline = first.enqueued + self.max_wait_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _work(self, segmenter) -> None:
        stopping = False
        while not stopping:
            job = self._queue.get()
            if job is _STOP:
                break
            jobs, stopping = self._collect(job)
            self.metrics.queue_depth.set(self._queue.qsize())
            # A client that went away cancels its future: skip its image instead of computing it.
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            try:
                groups: dict[tuple[int, int], list[_Job]] = {}
                for job in jobs:
                    groups.setdefault(_size_key(segmenter, job.image), []).append(job)
                for group in groups.values():
                    self._run_group(segmenter, group)
            except Exception as err:  # the worker outlives any request
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)

    def _run_group(self, segmenter, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        images = [job.image for job in jobs]
        sizes = [image.shape[:2] for image in images]
        try:
            raw = segmenter.run(segmenter.prepare(images))
            if any(job.confidence for job in jobs):  # the whole batch pays for it only when one request asks
                maps, confidences = zip(*segmenter.finish_confidence(raw, sizes))
            else:
                maps, confidences = segmenter.finish(raw, sizes), [None] * len(jobs)
        except Exception as err:  # any failure must reach the waiting requests, never kill the worker
            if len(jobs) > 1:
                # Run them one by one so that a single image the network rejects does not fail its neighbours.
                for job in jobs:
                    self._run_group(segmenter, [job])
            else:
                jobs[0].future.set_exception(err)
            return
        elapsed = time.perf_counter() - started
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.inference.observe(elapsed)
        with self._lock:
            self._recent_batch_sizes.append(len(jobs))
            self.batches += 1
            self.images += len(jobs)
        for job, class_map, confidence in zip(jobs, maps, confidences):
            job.future.set_result(InferenceResult(class_map, len(jobs), (started - job.enqueued) * 1000.0,
                                                  elapsed * 1000.0, confidence if job.confidence else None))
