"""The ASGI application of ``edgeseg serve``: routes, JSON errors and metrics (the input checks are in codec.py).

Handlers only parse, check and wait: image decoding and response encoding run in the thread pool, inference in the
:class:`~.batching.BatchingQueue` workers, so the event loop stays free to accept requests (which is what lets
concurrent requests meet in one batch). Every client mistake is answered with a 4xx status and a JSON body
``{"error": "..."}``; nothing a client sends can end a worker or the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..image_files import declared_size
from .codec import (ApiError, SegmentOptions, class_shares, decode_image, encode_image, image_bytes,
                    parse_segment_query)
from .batching import BatchingQueue, InferenceResult, QueueFull
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServeMetrics
from .stream import MEDIA_TYPE as STREAM_MEDIA_TYPE
from .stream import StreamHub

logger = logging.getLogger("edgeseg.serve")

ROUTES = ("/", "/healthz", "/metrics", "/v1/model", "/v1/stats", "/v1/segment", "/v1/stream")
"""Paths the metrics are labelled with; anything else is counted as ``other`` to keep label sets bounded."""

@dataclass
class ServeConfig:
    """Settings of one server; ``edgeseg serve`` fills them from its command line.

    Attributes:
        max_batch: Most images per network call (1 disables dynamic batching).
        max_wait_ms: How long a worker waits for more images before it runs a partial batch.
        max_image_bytes: Largest accepted request body.
        max_image_pixels: Largest accepted decoded image (width x height), checked from the file header before
            decoding, so a small file that inflates to gigabytes is refused without being decoded.
        max_queue: Images that may wait for a worker before requests are refused with 503.
        max_pixels_in_flight: Pixels (by their headers) of all images being decoded, waiting or segmented at once;
            a request that would pass it is answered 503 with Retry-After before its image is decoded. It bounds
            the server's image memory: about 9 bytes per pixel (measured: the decoded BGR and RGB copies, the
            resized input and the class map), so about 900 MB at the default of 100 megapixels on top of the model.
        request_timeout_s: How long a request waits for its inference before it is answered with 504.
        source: Video source URI for ``/v1/stream``; None disables the stream.
        stream_alpha: Opacity of the class colours on the stream.
        jpeg_quality: JPEG quality of stream frames and of ``encoding=jpeg`` overlays.
    """

    max_batch: int = 1
    max_wait_ms: float = 5.0
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_queue: int = 256
    max_pixels_in_flight: int = 100_000_000
    request_timeout_s: float = 30.0
    source: str | None = None
    stream_alpha: float = 0.5
    jpeg_quality: int = 85


# ------------------------------------------------------------------------------------------------------------ app

class _Server:
    """The state the handlers share: model, workers, optional stream, metrics and recent latencies."""

    def __init__(self, segmenters: Sequence, config: ServeConfig, metrics: ServeMetrics, open_source=None) -> None:
        self.segmenter = segmenters[0]
        self.meta = self.segmenter.meta
        self.config = config
        self.metrics = metrics
        self.batcher = BatchingQueue(segmenters, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                                     max_queue=config.max_queue, metrics=metrics)
        self.hub = None
        if config.source is not None:
            self.hub = StreamHub(config.source, self._segment_blocking, self.meta.palette, metrics,
                                 open_source=open_source, alpha=config.stream_alpha, jpeg_quality=config.jpeg_quality)
        self.started = time.time()
        self.recent_latency_ms: deque[float] = deque(maxlen=512)
        with open_static("index.html") as page:
            self.page = page.read()
        self.pixels_in_flight = 0  # changed only on the event loop, so it needs no lock

    @contextlib.contextmanager
    def reserve_pixels(self, data: bytes):
        """Hold the image's declared pixels against ``max_pixels_in_flight`` for the whole request, or refuse."""
        size = declared_size(data)
        pixels = size[0] * size[1] if size else 0
        if pixels > self.config.max_image_pixels:
            pixels = 0  # refused with 413 by the decoder: "retry later" (503) would be the wrong answer
        if pixels and self.pixels_in_flight + pixels > self.config.max_pixels_in_flight:
            raise ApiError(503, f"server busy: {self.pixels_in_flight} pixels of images in flight, the limit is "
                                f"{self.config.max_pixels_in_flight}; retry later", headers={"Retry-After": "1"})
        self.pixels_in_flight += pixels
        try:
            yield
        finally:
            self.pixels_in_flight -= pixels

    def _segment_blocking(self, image: np.ndarray) -> np.ndarray:
        return self.batcher.submit(image).result(timeout=self.config.request_timeout_s).class_map

    def model_card(self) -> dict:
        backend = getattr(self.segmenter, "backend", None)
        card = dataclasses.asdict(self.meta)
        card.update({
            "backend": getattr(backend, "name", None),
            "device": getattr(backend, "device", None),
            "providers": list(getattr(self.segmenter, "providers", [])),
            "network_input_size": list(self.segmenter.input_size) if self.segmenter.input_size else None,
            "workers": self.batcher.workers,
            "max_batch": self.batcher.max_batch,
            "stream": self.hub is not None,
        })
        return card


def open_static(name: str):
    return resources.files(__package__).joinpath("static", name).open("r", encoding="utf-8")


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _MetricsMiddleware:
    """Counts every response by route and status and times it up to its first byte (streams never end)."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"
        started = time.perf_counter()
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            self.metrics.requests.inc(endpoint=endpoint, status=str(status))
            self.metrics.latency.observe(time.perf_counter() - started, endpoint=endpoint)
            if status >= 400:
                self.metrics.errors.inc(endpoint=endpoint, kind="client" if status < 500 else "server")

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            record(500)
            raise


def create_app(segmenters, config: ServeConfig | None = None, metrics: ServeMetrics | None = None,
               open_source=None) -> Starlette:
    """Build the service around loaded segmenters (one per inference worker).

    Args:
        segmenters: A Segmenter, or a list of them (one per worker, all of the same model). Anything with the
            Segmenter's ``meta``, ``input_size``, ``prepare``, ``run`` and ``finish`` works, which is how the unit
            tests run the app without a model file.
        config: Batching, limits and the stream source.
        metrics: A registry to record into; a fresh one by default.
        open_source: Replaces the video package's ``open_source`` for the stream (tests).

    The workers start and stop with the application's lifespan; the segmenters stay open for the caller to close.
    """
    if not isinstance(segmenters, (list, tuple)):
        segmenters = [segmenters]
    config = config or ServeConfig()
    metrics = metrics or ServeMetrics()
    server = _Server(segmenters, config, metrics, open_source=open_source)

    async def index(request: Request) -> Response:
        return HTMLResponse(server.page)

    async def healthz(request: Request) -> Response:
        alive = server.batcher.alive_workers()
        status = "ok" if alive == server.batcher.workers else "degraded"
        return JSONResponse({"status": status, "model": server.meta.model, "workers_alive": alive},
                            status_code=200 if status == "ok" else 503)

    async def model(request: Request) -> Response:
        return JSONResponse(server.model_card())

    async def stats(request: Request) -> Response:
        latencies = list(server.recent_latency_ms)
        segment = {
            "requests": int(metrics.requests.value(endpoint="/v1/segment", status="200")),
            "errors": int(metrics.errors.value(endpoint="/v1/segment", kind="client")
                          + metrics.errors.value(endpoint="/v1/segment", kind="server")),
            "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
            "latency_ms_p99": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
        }
        return JSONResponse({
            "model": server.meta.model,
            "uptime_s": round(time.time() - server.started, 1),
            "segment": segment,
            "batching": server.batcher.stats(),
            "stream": server.hub.stats() if server.hub is not None else None,
        })

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def segment(request: Request) -> Response:
        started = time.perf_counter()
        options = parse_segment_query(request.query_params)
        data = await image_bytes(request, config.max_image_bytes)
        with server.reserve_pixels(data):
            return await _segment_reserved(data, options, started)

    async def _segment_reserved(data: bytes, options: SegmentOptions, started: float) -> Response:
        image = await run_in_threadpool(decode_image, data, config.max_image_pixels)
        wants_confidence = options.format == "confidence"
        if wants_confidence and server.meta.fused_post and not server.meta.confidence:
            raise ApiError(400, f"model {server.meta.model} returns class ids only; format=confidence needs a model "
                                "exported with --fuse post --confidence (or without --fuse)")
        try:
            future = server.batcher.submit(image, confidence=wants_confidence)
        except QueueFull as err:
            raise ApiError(503, f"server busy: {err}; retry later") from None
        try:
            result: InferenceResult = await asyncio.wait_for(asyncio.wrap_future(future),
                                                             config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"inference did not finish within {config.request_timeout_s:g} s") from None
        except Exception as err:  # the model failed on this image; the worker lives on
            logger.error("inference failed", exc_info=err)
            raise ApiError(500, f"inference failed: {type(err).__name__}: {err}") from None
        headers = {"X-Batch-Size": str(result.batch_size), "X-Inference-Ms": f"{result.inference_ms:.2f}"}
        if options.format == "json":
            shares = await run_in_threadpool(class_shares, result.class_map, server.meta.classes)
            latency_ms = (time.perf_counter() - started) * 1000.0
            server.recent_latency_ms.append(latency_ms)
            return JSONResponse({
                "model": server.meta.model,
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "latency_ms": round(latency_ms, 3),
                "inference_ms": round(result.inference_ms, 3),
                "queue_ms": round(result.queue_ms, 3),
                "batch_size": result.batch_size,
                "classes": shares,
            }, headers=headers)
        if wants_confidence:
            body = await run_in_threadpool(encode_image, result.confidence, "png")
            media_type = "image/png"
        elif options.overlay:
            body = await run_in_threadpool(_render_overlay, server.segmenter, image, result.class_map, options,
                                           config.jpeg_quality)
            media_type = "image/jpeg" if options.encoding == "jpeg" else "image/png"
        else:
            body = await run_in_threadpool(encode_image, result.class_map, "png")
            media_type = "image/png"
        server.recent_latency_ms.append((time.perf_counter() - started) * 1000.0)
        return Response(body, media_type=media_type, headers=headers)

    async def stream(request: Request) -> Response:
        if server.hub is None:
            raise ApiError(404, "no video source: start the server with --source URI to enable /v1/stream")
        return StreamingResponse(server.hub.frames_for_viewer(), media_type=STREAM_MEDIA_TYPE,
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def api_error(request: Request, exc: ApiError) -> Response:
        response = _json_error(exc.status, exc.message)
        response.headers.update(exc.headers)
        return response

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _json_error(exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _json_error(500, f"internal error: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        server.batcher.start()
        if server.hub is not None:
            server.hub.bind_loop(asyncio.get_running_loop())
        try:
            yield
        finally:
            if server.hub is not None:
                server.hub.close()
            server.batcher.stop()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/v1/model", model, methods=["GET"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/v1/segment", segment, methods=["POST"]),
        Route("/v1/stream", stream, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.server = server
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return app


def _render_overlay(segmenter, image: np.ndarray, class_map: np.ndarray, options: SegmentOptions,
                    jpeg_quality: int) -> bytes:
    blended = segmenter.overlay(image, class_map, alpha=options.alpha)
    return encode_image(blended, options.encoding, jpeg_quality)

