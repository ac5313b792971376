"""The live MJPEG stream: one background pipeline segments the ``--source`` video and every viewer shares it.

A thread reads the source, sends each frame through the same inference workers as the HTTP requests (so the two
share sessions instead of fighting over the cores with a second one), blends the class colours over the frame and
encodes it as JPEG. Only the newest JPEG is kept: a viewer that is slower than the pipeline simply skips frames and
never holds the pipeline up. The thread starts with the first viewer and stops a few seconds after the last one
leaves, so an idle server spends no CPU on video nobody watches. A file source loops; a live source that breaks is
reopened with a growing back-off.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import cv2
import numpy as np

from ..video.render import OverlayRenderer
from .metrics import ServeMetrics

BOUNDARY = "frame"
MEDIA_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"

DEFAULT_FILE_FPS = 25.0
"""Playback rate of a non-live source that states none (an image folder), so it does not spin as fast as it can."""

FPS_SMOOTHING = 0.1
"""Weight of the newest frame in the exponential moving averages of FPS and per-frame latency."""


def mjpeg_part(jpeg: bytes) -> bytes:
    """One part of a ``multipart/x-mixed-replace`` body: boundary, headers, the JPEG."""
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode("ascii")
    return head + jpeg + b"\r\n"


class StreamHub:
    """Runs the shared video pipeline on demand and hands its newest frame to every viewer.

    Args:
        uri: The video source (any form ``edgeseg video`` accepts).
        segment: Takes an HxWx3 uint8 RGB frame, returns its HxW class map (blocking; called from the pipeline
            thread).
        palette: RGB class colours, for the overlay.
        metrics: Where stream FPS, frames and viewers are recorded.
        open_source: Opens ``uri`` into an object with ``read() -> BGR frame | None``, ``is_live``, ``fps`` and
            ``close()``; the video package's ``open_source`` unless a test substitutes its own.
        alpha: Opacity of the class colours.
        jpeg_quality: OpenCV JPEG quality of the streamed frames.
        idle_timeout_s: How long the pipeline keeps running after the last viewer leaves.
        retry_s: First back-off after a source fails to open or breaks; doubles up to ``max_retry_s``.
    """

    def __init__(self, uri: str, segment: Callable[[np.ndarray], np.ndarray], palette, metrics: ServeMetrics,
                 open_source: Callable | None = None, alpha: float = 0.5, jpeg_quality: int = 80,
                 idle_timeout_s: float = 3.0, retry_s: float = 0.5, max_retry_s: float = 10.0) -> None:
        if open_source is None:
            from ..video.sources import open_source
        self.uri = uri
        self._segment = segment
        self._open_source = open_source
        # The video pipeline's renderer draws on the decoder's BGR frame, which the JPEG encoder takes as is.
        self._renderer = OverlayRenderer(palette, [], alpha=alpha)
        self.metrics = metrics
        self.jpeg_quality = int(jpeg_quality)
        self.idle_timeout_s = idle_timeout_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s

        self._lock = threading.Lock()  # guards _thread, _viewers and _last_viewer_left
        self._thread: threading.Thread | None = None
        self._viewers = 0
        self._last_viewer_left = 0.0
        self._closed = threading.Event()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None  # replaced after every publish; lives on the event loop
        self._frame: bytes | None = None
        self._sequence = 0

        self.frames = 0
        self.fps = 0.0
        self.frame_ms = 0.0
        self.restarts = 0
        self.last_error: str | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop, where viewers wait and frames are published."""
        self._loop = loop
        self._event = asyncio.Event()

    def stats(self) -> dict:
        return {
            "source": self.uri,
            "running": self._thread is not None,
            "viewers": self._viewers,
            "fps": round(self.fps, 2),
            "frame_ms": round(self.frame_ms, 2),
            "frames": self.frames,
            "restarts": self.restarts,
            "error": self.last_error,
        }

    async def frames_for_viewer(self) -> AsyncIterator[bytes]:
        """Yield MJPEG parts for one viewer: each new frame once, skipping those published while it was busy."""
        if self._loop is None:
            raise RuntimeError("StreamHub.bind_loop() was not called")
        self._add_viewer()
        try:
            sequence = 0
            while not self._closed.is_set():
                if self._sequence == sequence:
                    await self._event.wait()
                    continue
                sequence = self._sequence
                yield mjpeg_part(self._frame)
        finally:
            self._remove_viewer()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the pipeline and release the viewers; called when the server shuts down."""
        self._closed.set()
        with self._lock:
            thread = self._thread
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake_viewers)
        if thread is not None:
            thread.join(timeout)

    def _add_viewer(self) -> None:
        with self._lock:
            self._viewers += 1
            self.metrics.stream_viewers.set(self._viewers)
            if self._thread is None and not self._closed.is_set():
                self._frame, self._sequence = None, 0  # never show a frame left over from an earlier run
                self._thread = threading.Thread(target=self._run, name="edgeseg-stream", daemon=True)
                self._thread.start()

    def _remove_viewer(self) -> None:
        with self._lock:
            self._viewers -= 1
            self.metrics.stream_viewers.set(self._viewers)
            self._last_viewer_left = time.monotonic()

    def _should_stop(self) -> bool:
        """True when the pipeline should end; clears ``_thread`` under the lock so a new viewer starts a new one."""
        with self._lock:
            idle = self._viewers == 0 and time.monotonic() - self._last_viewer_left > self.idle_timeout_s
            if self._closed.is_set() or idle:
                self._thread = None
                return True
            return False

    def _wake_viewers(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def _publish_on_loop(self, jpeg: bytes) -> None:
        self._frame = jpeg
        self._sequence += 1
        self._wake_viewers()

    def _publish(self, jpeg: bytes) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._publish_on_loop, jpeg)
            return True
        except RuntimeError:  # the event loop has closed: the server is gone
            return False

    def _render(self, frame_bgr: np.ndarray) -> bytes:
        class_map = self._segment(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        blended = self._renderer.render(frame_bgr, class_map)
        ok, encoded = cv2.imencode(".jpg", blended, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding of a stream frame failed")
        return encoded.tobytes()

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake up at once when the server shuts down."""
        self._closed.wait(seconds)

    def _run(self) -> None:
        source = None
        retry = self.retry_s
        last_frame_at = None
        frames_since_open = 0
        frame_period = 0.0
        try:
            while not self._should_stop():
                if source is None:
                    try:
                        source = self._open_source(self.uri)
                    except Exception as err:  # reported on the page and in /v1/stats, then retried
                        self.last_error = f"cannot open {self.uri}: {err}"
                        self._wait(retry)
                        retry = min(self.max_retry_s, retry * 2)
                        continue
                    frames_since_open = 0
                    frame_period = 0.0 if source.is_live else 1.0 / (source.fps or DEFAULT_FILE_FPS)
                started = time.perf_counter()
                try:
                    frame = source.read()
                except Exception as err:  # a broken stream is reopened, not fatal
                    self.last_error = f"reading {self.uri} failed: {err}"
                    frame = None
                if frame is None:
                    # The end of a file loops at once; a live stream that stopped (or a source that gave nothing
                    # since it was opened) is reopened after a growing back-off.
                    live = source.is_live
                    source.close()
                    source = None
                    self.restarts += 1
                    if live or frames_since_open == 0:
                        self._wait(retry)
                        retry = min(self.max_retry_s, retry * 2)
                    continue
                frames_since_open += 1
                try:
                    jpeg = self._render(frame)
                except Exception as err:  # e.g. a full inference queue: skip this frame
                    self.last_error = f"{type(err).__name__}: {err}"
                    self._wait(self.retry_s)
                    continue
                retry = self.retry_s
                self.last_error = None
                if not self._publish(jpeg):
                    break
                now = time.perf_counter()
                self._update_rates(now - started, now - last_frame_at if last_frame_at else None)
                last_frame_at = now
                # A file plays at its own frame rate, not as fast as the network allows.
                spare = frame_period - (time.perf_counter() - started)
                if spare > 0:
                    self._wait(spare)
        finally:
            if source is not None:
                source.close()
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                current = self._thread is None
            if current:
                self.fps = 0.0
                self.metrics.stream_fps.set(0.0)

    def _update_rates(self, frame_s: float, interval_s: float | None) -> None:
        self.frames += 1
        self.metrics.stream_frames.inc()
        self.frame_ms = frame_s * 1000.0 if self.frames == 1 else (
            (1 - FPS_SMOOTHING) * self.frame_ms + FPS_SMOOTHING * frame_s * 1000.0)
        if interval_s:
            rate = 1.0 / interval_s
            self.fps = rate if self.fps == 0 else (1 - FPS_SMOOTHING) * self.fps + FPS_SMOOTHING * rate
            self.metrics.stream_fps.set(self.fps)
