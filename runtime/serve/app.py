"""The ASGI application of ``edgeseg serve``: routes, input checks, JSON errors and metrics.

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
import math
import struct
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .batching import BatchingQueue, InferenceResult, QueueFull
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServeMetrics
from .stream import MEDIA_TYPE as STREAM_MEDIA_TYPE
from .stream import StreamHub

logger = logging.getLogger("edgeseg.serve")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

ROUTES = ("/", "/healthz", "/metrics", "/v1/model", "/v1/stats", "/v1/segment", "/v1/stream")
"""Paths the metrics are labelled with; anything else is counted as ``other`` to keep label sets bounded."""

SEGMENT_QUERY = {
    "format": ("png", "json"),
    "overlay": ("0", "1", "false", "true"),
    "encoding": ("png", "jpeg"),
    "alpha": None,  # a number in [0, 1]
}


class ApiError(Exception):
    """A request the server refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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


# ---------------------------------------------------------------------------------------------------- image bytes

def image_format(data: bytes) -> str | None:
    """``"jpeg"`` or ``"png"`` from the file signature; None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk must come first: length (4), type (4), then width and height (big-endian uint32).
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length field
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if marker in _JPEG_SOF_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return height, width
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        position += 2 + length
    return None


# PNG colour type -> samples per pixel (greyscale, RGB, palette, grey + alpha, RGBA).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_INFLATE_STEP = 1 << 20


def _png_inflates_within_header(data: bytes) -> bool:
    """Whether every PNG chunk fits in the file and the pixel data inflates to no more than the header allows.

    The header check bounds what a well-formed file decodes to, but zlib data can go on far beyond the rows the
    header declares (a 2.6 MB file with a 10x10 header inflated to 2.7 GB and took 5.8 s to decode). The data is
    inflated here in 1 MiB steps and discarded, stopping as soon as it passes the declared size.
    """
    height, width = struct.unpack(">II", data[16:24])
    bit_depth, colour, interlace = data[24], data[25], data[28]
    samples = _PNG_SAMPLES.get(colour)
    if samples is None or bit_depth not in (1, 2, 4, 8, 16):
        return False
    row_bytes = 1 + (width * samples * bit_depth + 7) // 8  # a filter byte, then the packed samples
    allowed = height * row_bytes
    if interlace:  # Adam7: seven passes, each row with its own filter byte and padding
        allowed += 7 * height + 8 * (height + 7)
    inflater = zlib.decompressobj()
    produced, position = 0, 8
    try:
        while position + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[position:position + 8])
            if position + 12 + length > len(data):  # libpng would allocate the declared length (up to 4 GiB)
                return False
            if kind == b"IDAT":
                pending = data[position + 8:position + 8 + length]
                while pending:
                    produced += len(inflater.decompress(pending, _INFLATE_STEP))
                    if produced > allowed:
                        return False
                    pending = inflater.unconsumed_tail
            elif kind == b"IEND":
                break
            position += 12 + length
    except zlib.error:
        return True  # corrupt data: the decoder reports it as corrupt, not as oversized
    return True


def _is_complete(data: bytes, kind: str) -> bool:
    """Whether the file reaches its end marker; decoders fill a cut-off JPEG with grey instead of failing."""
    if kind == "png":
        return data.rfind(b"IEND") > len(PNG_SIGNATURE)
    # Entropy-coded data escapes 0xFF bytes, so an end-of-image marker after the last start-of-scan marks the end
    # of the main image (an EXIF thumbnail's markers all come before it).
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") > 0


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header, None when there is none to read."""
    kind = image_format(data)
    if kind is None:
        return None
    return _png_size(data) if kind == "png" else _jpeg_size(data)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Request body -> HxWx3 uint8 RGB image; any problem is an :class:`ApiError` with a 4xx status."""
    if not data:
        raise ApiError(400, "empty body: send a JPEG or PNG image as the body or as the multipart field 'image'")
    kind = image_format(data)
    if kind is None:
        raise ApiError(415, "the body is not a JPEG or PNG image (unrecognised file signature)")
    size = declared_size(data)
    if size is None:
        raise ApiError(400, f"corrupt or truncated {kind.upper()}: no readable image header")
    height, width = size
    if height < 1 or width < 1:
        raise ApiError(400, f"{kind.upper()} header gives an empty image ({width}x{height})")
    if height * width > max_pixels:
        raise ApiError(413, f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if not _is_complete(data, kind):
        raise ApiError(400, f"truncated {kind.upper()}: the file ends before its end marker")
    if kind == "png" and not _png_inflates_within_header(data):
        raise ApiError(400, f"corrupt PNG: a chunk runs past the end of the file, or the pixel data inflates beyond "
                            f"the {width}x{height} its header declares")
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ApiError(400, f"corrupt {kind.upper()}: it could not be decoded")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


# A class map repeats most of each row in the next one: the "up" filter turns that into zeros and run-length coding
# packs them, about four times faster than libpng's per-row filter search and to a smaller file.
CLASS_MAP_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                 cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
PHOTO_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def encode_image(image: np.ndarray, encoding: str, jpeg_quality: int = 85) -> bytes:
    """Class map (HxW) or RGB image (HxWx3) -> PNG or JPEG bytes."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if encoding == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    else:
        params = PHOTO_PNG if image.ndim == 3 else CLASS_MAP_PNG
    ok, encoded = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", image, params)
    if not ok:
        raise RuntimeError(f"{encoding} encoding failed")
    return encoded.tobytes()


def class_shares(class_map: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Fraction of the image's pixels assigned to each class (every class listed, in id order)."""
    counts = np.bincount(class_map.ravel(), minlength=len(classes))
    total = max(1, class_map.size)
    return {name: float(counts[index]) / total for index, name in enumerate(classes)}


# ------------------------------------------------------------------------------------------------------ requests

@dataclass(frozen=True)
class SegmentOptions:
    format: str = "png"
    overlay: bool = False
    encoding: str = "png"
    alpha: float = 0.5


def parse_segment_query(params) -> SegmentOptions:
    """Check the query of ``POST /v1/segment``: unknown keys, repeated keys and bad values are 400 errors."""
    values: dict[str, str] = {}
    for key in params:
        if key not in SEGMENT_QUERY:
            raise ApiError(400, f"unknown query parameter {key!r}; accepted: {', '.join(SEGMENT_QUERY)}")
        given = params.getlist(key)
        if len(given) > 1:
            raise ApiError(400, f"query parameter {key!r} is given {len(given)} times")
        value = given[0].strip().lower()
        allowed = SEGMENT_QUERY[key]
        if key == "encoding" and value == "jpg":
            value = "jpeg"
        if allowed is not None and value not in allowed:
            raise ApiError(400, f"{key}={given[0]!r} is not accepted; use one of {', '.join(allowed)}")
        values[key] = value
    overlay = values.get("overlay", "0") in ("1", "true")
    options = SegmentOptions(format=values.get("format", "png"), overlay=overlay,
                             encoding=values.get("encoding", "png"))
    if "alpha" in values:
        try:
            alpha = float(values["alpha"])
        except ValueError:
            raise ApiError(400, f"alpha={values['alpha']!r} is not a number") from None
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise ApiError(400, f"alpha must lie in [0, 1], got {values['alpha']}")
        options = dataclasses.replace(options, alpha=alpha)
    if options.format == "json" and (overlay or "encoding" in values or "alpha" in values):
        raise ApiError(400, "format=json returns class shares; it cannot be combined with overlay, encoding or alpha")
    if not overlay and options.encoding == "jpeg":
        raise ApiError(400, "a class map is only sent as lossless PNG; encoding=jpeg needs overlay=1")
    if not overlay and "alpha" in values:
        raise ApiError(400, "alpha sets the overlay's opacity and needs overlay=1")
    return options


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 from its Content-Length alone or as soon as the bytes pass ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length header {declared!r}") from None
        if declared_bytes > limit:
            raise ApiError(413, f"body of {declared_bytes} bytes exceeds the limit of {limit} bytes "
                                f"(--max-image-mb {limit / 2 ** 20:g})")
    chunks, received = [], 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, f"body exceeds the limit of {limit} bytes (--max-image-mb {limit / 2 ** 20:g})")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The image from a raw body, or from the multipart form field ``image``."""
    body = await read_body(request, limit)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return body

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(request.scope, receive=replay)
    try:
        async with form_request.form(max_files=4, max_fields=16, max_part_size=limit) as form:
            field = form.get("image")
            if field is None:
                raise ApiError(400, f"the multipart form has no 'image' field (fields: {', '.join(form) or 'none'})")
            if not isinstance(field, UploadFile):
                raise ApiError(400, "the multipart field 'image' must be a file upload, not a text value")
            return await field.read()
    except HTTPException as err:  # malformed multipart bodies
        raise ApiError(400, f"malformed multipart body: {err.detail}") from None


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
        try:
            future = server.batcher.submit(image)
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
        if options.overlay:
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

