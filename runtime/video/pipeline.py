"""The threaded video pipeline: decode, inference and render overlap instead of taking turns.

Three threads joined by small bounded queues::

    decode thread     read a frame, resize it once to the network size, convert that copy to RGB, prepare()
    inference thread  run() on the backend, nothing else, so the network is fed back to back
    main thread       finish() to a class map at frame size, overlay, write to the sinks

``prepare`` runs beside decoding and ``finish`` beside rendering (rather than both in the inference thread) so
that the only serial work between two network runs is a queue hand-off. OpenCV, numpy and onnxruntime release
the GIL in their heavy loops, which is what lets the threads overlap on a small CPU. The render stage runs in the
main thread because Ctrl-C arrives there and because GUI toolkits want windows drawn from it.

Files never lose a frame: every put blocks. A live source keeps only the newest frame waiting for inference and
counts each one it replaces as dropped, so latency cannot build up behind a model that is slower than the camera.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import VideoSourceError
from ..preprocess import resize_image
from .render import OverlayRenderer
from .sinks import VideoSink
from .sources import VideoSource
from .stats import FlickerMeter, FpsMeter, StageTimes

# How often a blocked thread wakes up to check whether the run was stopped.
POLL_S = 0.05
# What a broken live stream raises from read(); anything else is a bug and ends the run.
STREAM_ERRORS = (VideoSourceError, OSError, cv2.error)
_END = object()


def _print_to_stderr(message: str) -> None:
    print(f"edgeseg video: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a live source that stops delivering frames is re-opened.

    Attributes:
        attempts: Re-opens tried in a row before the run ends; 0 ends the run at the first break.
        delay_s: Wait before the first attempt; each further attempt waits twice as long as the one before.
        max_delay_s: Upper bound of a single wait.
    """

    attempts: int = 5
    delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (counted from 1)."""
        return min(self.delay_s * 2 ** (attempt - 1), self.max_delay_s)


# How a run ended when the source was not read to its end without the user asking for that: a failure.
INCOMPLETE_ENDINGS = {"stream-lost": "the live source was lost and did not come back",
                      "truncated": "the file ended before the frames it announces"}


def open_with_retry(opener, uri: str, live: bool, policy: ReconnectPolicy, log, wait=time.sleep):
    """Open a source; a live one that fails its first open is retried with the reconnect back-off, as a break is.

    A camera still booting or an RTSP server restarting is the usual case. Files are opened once: retrying a
    missing file only delays its error.
    """
    attempt = 0
    while True:
        try:
            return opener()
        except STREAM_ERRORS as err:
            if not live or attempt >= policy.attempts:
                raise
            attempt += 1
            delay = policy.delay(attempt)
            log(f"{uri}: first open failed ({err}); retrying in {delay:.3g} s (attempt {attempt}/{policy.attempts})")
            wait(delay)


@dataclass
class _Frame:
    image: np.ndarray
    batch: np.ndarray | None
    started: float
    decode_s: float
    preprocess_s: float
    raw: np.ndarray | None = None
    infer_s: float = 0.0


class VideoPipeline:
    """Segments every frame of a source and sends the rendered frames to the sinks.

    A pipeline runs once and owns ``source`` and ``sinks``: :meth:`run` closes them. Sinks are finalised (a video
    file renamed into place) when the run ends normally, reaches ``max_frames``, is stopped from a window, or is
    interrupted with Ctrl-C; they are aborted (partial files deleted) when the run fails.

    Args:
        segmenter: An object with the Segmenter stage API (``prepare``, ``run``, ``finish``, ``input_size``,
            ``meta``, ``backend``, ``providers``).
        source: An open source, for instance from :func:`open_source`.
        sinks: Where rendered frames go; with none, frames are segmented but not drawn.
        reopen: Opens the source again after a live stream breaks; None disables reconnecting.
        alpha: Weight of the class colours in the overlay.
        legend: Draw a legend of the classes present.
        show_confidence: Tint low-confidence pixels (needs ``finish_confidence`` on the segmenter).
        max_frames: Stop after this many frames have been rendered.
        queue_size: Depth of the queues between stages for files; live sources use 1, the least latency.
        reconnect: Back-off policy for ``reopen``.
        progress: Show a progress bar on stderr when it is a terminal and the frame count is known.
        log: Receives one-line messages about reconnects and warnings; prints to stderr by default.
    """

    def __init__(self, segmenter: Any, source: VideoSource, sinks: Sequence[VideoSink] = (), *,
                 reopen: Callable[[], VideoSource] | None = None, alpha: float = 0.5, legend: bool = False,
                 show_confidence: bool = False, max_frames: int | None = None, queue_size: int = 2,
                 reconnect: ReconnectPolicy = ReconnectPolicy(), progress: bool = False,
                 log: Callable[[str], None] = _print_to_stderr):
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.segmenter = segmenter
        self.source = source
        self.sinks = list(sinks)
        self.reopen = reopen
        self.max_frames = max_frames
        self.reconnect = reconnect
        self.progress = progress
        self.log = log
        meta = segmenter.meta
        self.renderer = OverlayRenderer(meta.palette, meta.classes, alpha=alpha, legend=legend, label=meta.model)
        self.show_confidence = show_confidence
        self.flicker = FlickerMeter()
        self._live = source.is_live
        depth = 1 if self._live else queue_size  # a live frame waiting in a queue is latency, not throughput
        self._decoded: queue.Queue = queue.Queue(maxsize=depth)
        self._inferred: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._consecutive_failures = 0
        self.times = StageTimes()
        self.frames = 0
        self.frames_read = 0
        self.dropped = 0
        self.reconnects = 0
        self.reconnect_attempts = 0
        self.ended_by = "end"

    # -- queue hand-offs that never block past a stop -------------------------------------------------------------

    def _put(self, target: queue.Queue, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _put_newest(self, target: queue.Queue, item: _Frame) -> None:
        """Replace a frame still waiting for inference: it is stale now that a newer one exists."""
        while True:
            try:
                target.put_nowait(item)
                return
            except queue.Full:
                try:
                    target.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _get(self, source: queue.Queue) -> Any:
        """The next item, or None once the run is stopped."""
        while not self._stop.is_set():
            try:
                return source.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    def _fail(self, error: BaseException) -> None:
        self._errors.append(error)
        self._stop.set()

    # -- decode thread ---------------------------------------------------------------------------------------------

    def _reopen_source(self, problem: str) -> bool:
        """Re-open a broken live source with exponential back-off; False when it gave up or the run stopped."""
        self.source.close()
        if self.reopen is None:
            self.log(f"{self.source.uri}: {problem}; reconnecting is off")
            self.ended_by = "stream-lost"
            return False
        attempts = self.reconnect.attempts
        while self._consecutive_failures < attempts:
            self._consecutive_failures += 1
            delay = self.reconnect.delay(self._consecutive_failures)
            self.log(f"{self.source.uri}: {problem}; reconnecting in {delay:.3g} s "
                     f"(attempt {self._consecutive_failures}/{attempts})")
            if self._stop.wait(delay):
                return False
            self.reconnect_attempts += 1
            try:
                self.source = self.reopen()
            except STREAM_ERRORS as err:
                problem = f"re-open failed ({err})"
                continue
            self.reconnects += 1
            self.log(f"{self.source.uri}: reconnected")
            return True
        self.log(f"{self.source.uri}: giving up after {attempts} reconnect attempt{'s' * (attempts != 1)}")
        self.ended_by = "stream-lost"
        return False

    def _read(self) -> tuple[np.ndarray | None, float]:
        """The next frame and the time its successful read began (reconnect waits are not decode time)."""
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                frame = self.source.read()
                problem = "the stream stopped delivering frames"
            except STREAM_ERRORS as err:
                if not self.source.is_live:
                    raise
                frame, problem = None, f"the stream broke ({err})"
            if frame is not None:
                self._consecutive_failures = 0
                return frame, started
            if not self.source.is_live or not self._reopen_source(problem):
                break
        return None, 0.0

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """Resize the BGR frame once, with the resize ``prepare`` itself would apply, and convert only that copy."""
        size = self.segmenter.input_size
        small = resize_image(frame, tuple(size)) if size else frame
        return self.segmenter.prepare([cv2.cvtColor(small, cv2.COLOR_BGR2RGB)])

    def _decode_loop(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._live and self.max_frames is not None and self.frames_read >= self.max_frames:
                    break
                frame, started = self._read()
                if frame is None:
                    break
                decoded = time.perf_counter()
                batch = self._prepare(frame)
                item = _Frame(frame, batch, started, decoded - started, time.perf_counter() - decoded)
                self.frames_read += 1
                if self._live:
                    self._put_newest(self._decoded, item)
                elif not self._put(self._decoded, item):
                    break
        except BaseException as err:  # handed to the main thread, which re-raises it after clean-up
            self._fail(err)
        finally:
            self._put(self._decoded, _END)

    # -- inference thread ------------------------------------------------------------------------------------------

    def _infer_loop(self) -> None:
        try:
            while True:
                item = self._get(self._decoded)
                if item is None or item is _END:
                    break
                started = time.perf_counter()
                item.raw = self.segmenter.run(item.batch)
                item.infer_s = time.perf_counter() - started
                item.batch = None
                if not self._put(self._inferred, item):
                    break
        except BaseException as err:
            self._fail(err)
        finally:
            self._put(self._inferred, _END)

    # -- main thread -----------------------------------------------------------------------------------------------

    def _render_loop(self, bar: tqdm | None) -> None:
        fps_meter = FpsMeter()
        while True:
            item = self._get(self._inferred)
            if item is None or item is _END:
                return
            started = time.perf_counter()
            fps = fps_meter.tick(started)
            confidence = None
            if self.show_confidence:
                class_map, confidence = self.segmenter.finish_confidence(item.raw, [item.image.shape[:2]])[0]
            else:
                class_map = self.segmenter.finish(item.raw, [item.image.shape[:2]])[0]
            self.flicker.add(class_map)
            finished = time.perf_counter()
            stage_seconds = dict(decode=item.decode_s, preprocess=item.preprocess_s, infer=item.infer_s,
                                 postprocess=finished - started)
            if self.sinks:
                rendered = self.renderer.render(item.image, class_map, fps, confidence)
                for sink in self.sinks:
                    sink.write(rendered)
                stage_seconds["render"] = time.perf_counter() - finished
            self.times.add(**stage_seconds, e2e=time.perf_counter() - item.started)
            self.frames += 1
            if bar is not None:
                bar.update()
            if self.max_frames is not None and self.frames >= self.max_frames:
                self.ended_by = "max-frames"
                return
            if any(sink.stop_requested for sink in self.sinks):
                self.ended_by = "window"
                return

    def _warm_up(self) -> None:
        """One untimed inference, so that lazy allocations in the backend do not land in the first frame's time."""
        height, width = self.segmenter.input_size or self.source.size
        self.segmenter.run(self.segmenter.prepare([np.zeros((height, width, 3), dtype=np.uint8)]))

    def _close_all(self, failed: bool) -> None:
        self.source.close()
        for sink in self.sinks:
            if failed:
                sink.abort()
            else:
                sink.close()

    def run(self) -> dict[str, Any]:
        """Process the whole source (or ``max_frames``) and return the run summary.

        Returns:
            ``source``, ``output``, ``model``, ``backend``, ``providers``; ``frames`` rendered and ``frames_read``;
            ``wall_s`` and ``fps`` (frames / wall seconds); ``stage_ms`` = ``{stage: {p50, p99, mean}}`` for decode,
            preprocess, infer, postprocess, render and e2e; ``dropped`` stale live frames; ``reconnects``
            (successful) and ``reconnect_attempts``; ``interrupted``; ``ended_by`` = end, truncated, max-frames, window,
            interrupt or stream-lost; ``flicker`` (see :class:`~.stats.FlickerMeter`).

        Raises:
            The first error of any stage, after every thread has ended and partial outputs have been removed.
        """
        if self._stop.is_set():
            raise RuntimeError("a VideoPipeline runs once: its source and sinks are closed after the first run")
        interrupted = False
        threads = [threading.Thread(target=self._decode_loop, name="edgeseg-video-decode"),
                   threading.Thread(target=self._infer_loop, name="edgeseg-video-infer")]
        total = self.source.frame_count
        if total is not None and self.max_frames is not None:
            total = min(total, self.max_frames)
        # Created only when shown: a disabled tqdm bar would still leave its monitor thread running.
        show_bar = self.progress and total is not None and sys.stderr.isatty()
        bar = tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True) if show_bar else None
        started = time.perf_counter()
        try:
            self._warm_up()
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            self._render_loop(bar)
        except KeyboardInterrupt:
            interrupted = True
            self.ended_by = "interrupt"
        except BaseException as err:
            self._fail(err)
        finally:
            self._stop.set()
            for thread in threads:
                while thread.is_alive():
                    try:
                        thread.join()
                    except KeyboardInterrupt:  # a second Ctrl-C: the threads end within one stage anyway
                        interrupted = True
            if bar is not None:
                bar.close()
            self._close_all(failed=bool(self._errors))
        if self._errors:
            raise self._errors[0]
        wall_s = time.perf_counter() - started
        announced = self.source.frame_count
        if self.ended_by == "end" and announced and self.frames_read < announced - 1:
            self.log(f"{self.source.uri}: read {self.frames_read} of the {announced} frames the file announces "
                     "(truncated or corrupt file?)")
            self.ended_by = "truncated"
        return {
            "source": self.source.uri,
            "output": ", ".join(sink.name for sink in self.sinks) or None,
            "model": self.segmenter.meta.model,
            "backend": self.segmenter.backend.name,
            "providers": list(self.segmenter.providers),
            "frames": self.frames,
            "frames_read": self.frames_read,
            "wall_s": round(wall_s, 4),
            "fps": round(self.frames / wall_s, 3) if wall_s > 0 else 0.0,
            "stage_ms": self.times.milliseconds(),
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "reconnect_attempts": self.reconnect_attempts,
            "interrupted": interrupted,
            "ended_by": self.ended_by,
            "flicker": self.flicker.summary(self.segmenter.meta.classes),
        }
