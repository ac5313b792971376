"""Tests of ``edgeseg serve``: the pieces with a fake segmenter, then real uvicorn servers on loopback ports running
the tiny ONNX models from conftest, then the command line in a subprocess.

Over 450 lines because its fakes and server helpers are shared with test_serve_limits.py and test_fuzz.py, which
hold the hostile-input tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import uvicorn

from edgeseg.runtime import ModelMeta, Segmenter
from edgeseg.runtime.serve import ServeConfig, create_app
from edgeseg.runtime.serve.codec import ApiError, parse_segment_query
from edgeseg.runtime.serve.batching import BatchingQueue, QueueFull
from edgeseg.runtime.serve.metrics import Counter, Histogram, ServeMetrics
from edgeseg.runtime.serve.stream import StreamHub

RED, GREEN, BLUE, DARK = 0, 1, 2, 3  # class ids of the tiny models (see conftest)


# ------------------------------------------------------------------------------------------------------- helpers

def encode(image_rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def halves_image(height: int = 96, width: int = 128) -> np.ndarray:
    """Left half pure red, right half pure blue (which the tiny models' weights call "dark", not "blue")."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2, 0] = 255
    image[:, width // 2:, 2] = 255
    return image


def stripes_image() -> np.ndarray:
    """A 64x64 image (the tiny models' own size) with red, green, blue and black bands of unequal widths."""
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :10, 0] = 255
    image[:, 10:30, 1] = 255
    image[:, 30:42, 2] = 255
    return image


def decode_png(data: bytes, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


class FakeSegmenter:
    """Follows the Segmenter contract without a model: class 1 where a pixel's red value is above 127, else 0.

    ``delay_s`` slows every network call; an image whose first pixel has red value 13 makes ``run`` raise, which
    stands for an input the network rejects.
    """

    POISON = 13

    def __init__(self, batch: int | None = None, delay_s: float = 0.0) -> None:
        self.meta = ModelMeta(model="fake", classes=["background", "bright"], palette=[[0, 0, 0], [255, 255, 255]],
                              input_size=[8, 8], batch=batch)
        self.input_size = (8, 8)
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.running = threading.Event()

    def prepare(self, images):
        return np.stack([cv2.resize(image, (8, 8), interpolation=cv2.INTER_NEAREST) for image in images])

    def run(self, batch):
        self.running.set()
        time.sleep(self.delay_s)
        if (batch[:, 0, 0, 0] == self.POISON).any():
            raise ValueError("poisoned image")
        self.batch_sizes.append(len(batch))
        return batch[..., 0] > 127

    def finish(self, raw, sizes):
        return [cv2.resize(ids.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
                for ids, (h, w) in zip(raw, sizes)]

    def overlay(self, image, class_map, alpha=0.5, legend=False):
        return image


def free_port_server(app, production: bool = False, **config):
    """Start uvicorn on 127.0.0.1 with an OS-chosen port in a thread; returns (base URL, stop function).

    ``production`` uses exactly the settings of ``edgeseg serve`` (its HTTP implementation and limits).
    """
    from edgeseg.runtime.serve.commands import server_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app) if production else
                            uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1,
                                           **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "server did not shut down"

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def read_mjpeg_parts(response: httpx.Response, count: int) -> list[bytes]:
    """The first ``count`` JPEGs of a multipart/x-mixed-replace body, each checked against its Content-Length."""
    boundary = response.headers["content-type"].split("boundary=")[1].encode()
    buffer, parts = b"", []
    for chunk in response.iter_bytes():
        buffer += chunk
        while True:
            match = re.search(rb"--" + re.escape(boundary) + rb"\r\nContent-Type: image/jpeg\r\n"
                              rb"Content-Length: (\d+)\r\n\r\n", buffer)
            if match is None:
                break
            start, length = match.end(), int(match.group(1))
            if len(buffer) < start + length + 2:
                break
            parts.append(buffer[start:start + length])
            assert buffer[start + length:start + length + 2] == b"\r\n"
            buffer = buffer[start + length + 2:]
            if len(parts) == count:
                return parts
    raise AssertionError(f"stream ended after {len(parts)} frames")


def metric_value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------------------------- metrics (format)

def test_histogram_buckets_are_cumulative_with_sum_and_count():
    histogram = Histogram("demo_seconds", "demo", buckets=(0.01, 0.1, 1.0), label_names=("endpoint",))
    for value in (0.005, 0.05, 0.05, 3.0):
        histogram.observe(value, endpoint="/x")
    lines = histogram.render().splitlines()
    assert lines[0] == "# HELP demo_seconds demo" and lines[1] == "# TYPE demo_seconds histogram"
    samples = dict(line.rsplit(" ", 1) for line in lines[2:])
    assert samples['demo_seconds_bucket{endpoint="/x",le="0.01"}'] == "1"
    assert samples['demo_seconds_bucket{endpoint="/x",le="0.1"}'] == "3"
    assert samples['demo_seconds_bucket{endpoint="/x",le="1"}'] == "3"
    assert samples['demo_seconds_bucket{endpoint="/x",le="+Inf"}'] == "4"
    assert samples['demo_seconds_count{endpoint="/x"}'] == "4"
    assert float(samples['demo_seconds_sum{endpoint="/x"}']) == pytest.approx(3.105)


def test_counter_escapes_labels_and_refuses_to_decrease():
    counter = Counter("demo_total", "demo", ("path",))
    counter.inc(path='a"b\\c\nd')
    counter.inc(2, path='a"b\\c\nd')
    assert counter.render().splitlines()[-1] == 'demo_total{path="a\\"b\\\\c\\nd"} 3'
    with pytest.raises(ValueError):
        counter.inc(-1, path="x")
    with pytest.raises(ValueError):
        counter.inc(wrong="x")


# ----------------------------------------------------------------------------------------- request validation

@pytest.mark.parametrize("query, status", [
    ({"foo": "1"}, 400), ({"format": "xml"}, 400), ({"overlay": "yes"}, 400), ({"encoding": "gif", "overlay": "1"},
                                                                               400),
    ({"alpha": "2", "overlay": "1"}, 400), ({"alpha": "nan", "overlay": "1"}, 400), ({"encoding": "jpeg"}, 400),
    ({"format": "json", "overlay": "1"}, 400), ({"alpha": "0.3"}, 400),
])
def test_bad_query_values_are_refused(query, status):
    from starlette.datastructures import QueryParams

    with pytest.raises(ApiError) as info:
        parse_segment_query(QueryParams(query))
    assert info.value.status == status


def test_repeated_query_key_is_refused_and_good_query_parses():
    from starlette.datastructures import QueryParams

    with pytest.raises(ApiError):
        parse_segment_query(QueryParams("format=png&format=json"))
    options = parse_segment_query(QueryParams("overlay=true&encoding=jpg&alpha=0.25"))
    assert (options.overlay, options.encoding, options.alpha, options.format) == (True, "jpeg", 0.25, "png")


# --------------------------------------------------------------------------------------- batching (fake model)

def test_concurrent_images_share_a_batch_and_keep_their_own_results():
    segmenter = FakeSegmenter(batch=None, delay_s=0.05)
    batcher = BatchingQueue([segmenter], max_batch=4, max_wait_ms=50, metrics=ServeMetrics())
    batcher.start()
    try:
        images = [np.full((10 + i, 12, 3), 255 if i % 2 else 0, dtype=np.uint8) for i in range(8)]
        futures = [batcher.submit(image) for image in images]
        results = [future.result(timeout=10) for future in futures]
    finally:
        batcher.stop()
    assert max(segmenter.batch_sizes) > 1 and max(segmenter.batch_sizes) <= 4
    for i, result in enumerate(results):
        assert result.class_map.shape == (10 + i, 12)
        assert (result.class_map == i % 2).all()
    assert sum(segmenter.batch_sizes) == 8


def test_fixed_batch_model_runs_one_image_per_call():
    segmenter = FakeSegmenter(batch=1)
    batcher = BatchingQueue([segmenter], max_batch=8, max_wait_ms=20)
    assert batcher.max_batch == 1
    batcher.start()
    try:
        for future in [batcher.submit(np.zeros((8, 8, 3), np.uint8)) for _ in range(5)]:
            assert future.result(timeout=10).batch_size == 1
    finally:
        batcher.stop()
    assert segmenter.batch_sizes == [1] * 5


def test_a_failing_image_fails_alone_and_the_worker_survives():
    segmenter = FakeSegmenter(batch=None, delay_s=0.02)
    batcher = BatchingQueue([segmenter], max_batch=8, max_wait_ms=50)
    batcher.start()
    try:
        poisoned = np.full((8, 8, 3), FakeSegmenter.POISON, np.uint8)
        futures = [batcher.submit(np.full((8, 8, 3), 200, np.uint8)), batcher.submit(poisoned),
                   batcher.submit(np.zeros((8, 8, 3), np.uint8))]
        with pytest.raises(ValueError, match="poisoned"):
            futures[1].result(timeout=10)
        assert (futures[0].result(timeout=10).class_map == 1).all()
        assert (futures[2].result(timeout=10).class_map == 0).all()
        assert batcher.submit(np.zeros((8, 8, 3), np.uint8)).result(timeout=10).class_map.shape == (8, 8)
        assert batcher.alive_workers() == 1
    finally:
        batcher.stop()
    assert batcher.alive_workers() == 0


def test_full_queue_refuses_instead_of_growing():
    segmenter = FakeSegmenter(batch=1, delay_s=0.5)
    batcher = BatchingQueue([segmenter], max_batch=1, max_queue=1)
    batcher.start()
    try:
        batcher.submit(np.zeros((8, 8, 3), np.uint8))
        assert segmenter.running.wait(5)  # the worker holds the first image
        batcher.submit(np.zeros((8, 8, 3), np.uint8))
        with pytest.raises(QueueFull):
            batcher.submit(np.zeros((8, 8, 3), np.uint8))
    finally:
        batcher.stop()


# ---------------------------------------------------------------------------------- app errors (fake model)

def test_inference_error_is_a_json_500_and_the_next_request_succeeds():
    url, stop = free_port_server(create_app(FakeSegmenter(batch=None), ServeConfig(max_batch=4, max_wait_ms=1)))
    poisoned = np.full((16, 16, 3), FakeSegmenter.POISON, np.uint8)
    try:
        with httpx.Client(base_url=url, timeout=20) as client:
            response = client.post("/v1/segment", content=encode(poisoned))
            assert response.status_code == 500 and "poisoned" in response.json()["error"]
            response = client.post("/v1/segment?format=json", content=encode(np.full((16, 16, 3), 255, np.uint8)))
            assert response.status_code == 200 and response.json()["classes"] == {"background": 0.0, "bright": 1.0}
            metrics = client.get("/metrics").text
    finally:
        stop()
    assert metric_value(metrics, 'edgeseg_errors_total{endpoint="/v1/segment",kind="server"}') == 1


def test_slow_inference_times_out_with_504():
    url, stop = free_port_server(create_app(FakeSegmenter(batch=1, delay_s=1.0), ServeConfig(request_timeout_s=0.2)))
    try:
        response = httpx.post(url + "/v1/segment", content=encode(np.zeros((8, 8, 3), np.uint8)), timeout=20)
    finally:
        stop()
    assert response.status_code == 504 and "error" in response.json()


# ------------------------------------------------------------------------------------------- stream hub (fakes)

class CountingSource:
    """A fake video source whose frame i is a uniform grey of value 10 * i (at most 250), BGR like the real ones."""

    opened = 0

    def __init__(self, frames: int | None, is_live: bool, fps: float | None = None, delay_s: float = 0.0):
        CountingSource.opened += 1
        self.frames, self.is_live, self.fps, self.delay_s = frames, is_live, fps, delay_s
        self.index = 0

    def read(self):
        if self.frames is not None and self.index >= self.frames:
            return None
        time.sleep(self.delay_s)
        frame = np.full((24, 32, 3), min(250, 10 * self.index), np.uint8)
        self.index += 1
        return frame

    def close(self):
        pass


def frame_value(part: bytes) -> int:
    jpeg = part[part.index(b"\r\n\r\n") + 4:-2]
    return round(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).mean())


def test_slow_viewer_skips_to_the_newest_frame_and_the_pipeline_stops_when_idle():
    metrics = ServeMetrics()
    hub = StreamHub("fake://camera", lambda rgb: np.zeros(rgb.shape[:2], np.uint8), [[0, 0, 0]], metrics,
                    open_source=lambda uri: CountingSource(None, is_live=True, delay_s=0.01), alpha=0.0,
                    idle_timeout_s=0.2)

    async def scenario():
        hub.bind_loop(asyncio.get_running_loop())
        viewer = hub.frames_for_viewer()
        first = frame_value(await viewer.__anext__())
        await asyncio.sleep(0.5)  # a viewer busy elsewhere: the pipeline must keep going without it
        second = frame_value(await viewer.__anext__())
        await viewer.aclose()
        return first, second

    first, second = asyncio.run(scenario())
    assert second - first >= 50  # at least five frames were skipped, not queued
    deadline = time.monotonic() + 5
    while hub.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not hub.stats()["running"] and metrics.stream_fps.value() == 0
    assert metrics.stream_frames.total() >= 5


def test_file_source_loops():
    CountingSource.opened = 0
    hub = StreamHub("clip.mp4", lambda rgb: np.zeros(rgb.shape[:2], np.uint8), [[0, 0, 0]], ServeMetrics(),
                    open_source=lambda uri: CountingSource(3, is_live=False, fps=200.0), alpha=0.0)

    async def scenario():
        hub.bind_loop(asyncio.get_running_loop())
        viewer = hub.frames_for_viewer()
        values = [frame_value(await viewer.__anext__()) for _ in range(7)]
        await viewer.aclose()
        return values

    values = asyncio.run(scenario())
    hub.close()
    # A loaded machine may let the hub skip a frame for this viewer, so the test asks only that the file loops:
    # its frames come back after its last one, from a re-opened source.
    assert set(values) <= {0, 10, 20} and 20 in values and 0 in values[values.index(20):]
    assert CountingSource.opened >= 2


# ---------------------------------------------------------------------------------- real servers, tiny models

@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """A three-frame 'video' (an image folder): pure red, pure blue, pure green, written as BGR PNGs."""
    folder = tmp_path_factory.mktemp("frames")
    for index, rgb in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:] = rgb[::-1]
        cv2.imwrite(str(folder / f"{index:03d}.png"), frame)
    return folder


@pytest.fixture(scope="module")
def served(tiny_onnx, video_folder):
    """The fused tiny model (dynamic batch axis) behind a real uvicorn server, with a video source."""
    segmenter = Segmenter.load(tiny_onnx.fused)
    app = create_app(segmenter, ServeConfig(max_batch=8, max_wait_ms=30, max_image_bytes=200_000,
                                            source=str(video_folder), stream_alpha=0.5))
    url, stop = free_port_server(app)
    with httpx.Client(base_url=url, timeout=20) as client:
        yield client
    stop()
    segmenter.close()


def test_health_model_and_page(served, tiny_onnx):
    assert served.get("/healthz").json() == {"status": "ok", "model": "tiny-fused", "workers_alive": 1}
    card = served.get("/v1/model").json()
    assert card["classes"] == list(tiny_onnx.classes)
    assert card["palette"] == [list(c) for c in tiny_onnx.palette]
    assert card["backend"] == "onnxruntime" and "CPUExecutionProvider" in card["providers"]
    assert card["max_batch"] == 8 and card["stream"] is True
    page = served.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<img id="stream" src="/v1/stream"' in page.text
    assert "/v1/stats" in page.text and "/v1/model" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "the page must not load external files"


def test_segment_returns_class_map_at_image_size(served, tiny_onnx):
    image = stripes_image()  # at the network size, so the map is exactly what the numpy reference gives
    response = served.post("/v1/segment", content=encode(image))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_png(response.content), tiny_onnx.expected(image))

    halves = halves_image(96, 128)  # another size: resized to 64x64 and back
    class_map = decode_png(served.post("/v1/segment", content=encode(halves, ".jpg")).content)
    assert class_map.shape == (96, 128) and class_map.dtype == np.uint8
    left, right = (int(tiny_onnx.expected(np.array([[colour]], np.uint8))[0, 0]) for colour in ([255, 0, 0],
                                                                                                 [0, 0, 255]))
    assert (class_map[:, :56] == left).all() and (class_map[:, 72:] == right).all() and left != right


def test_multipart_upload_gives_the_same_map(served):
    data = encode(halves_image())
    raw = served.post("/v1/segment", content=data).content
    form = served.post("/v1/segment", files={"image": ("halves.png", data, "image/png")})
    assert form.status_code == 200
    np.testing.assert_array_equal(decode_png(form.content), decode_png(raw))
    missing = served.post("/v1/segment", files={"picture": ("halves.png", data, "image/png")})
    assert missing.status_code == 400 and "'image'" in missing.json()["error"]


def test_json_shares_and_overlay(served, tiny_onnx):
    image = stripes_image()
    answer = served.post("/v1/segment?format=json", content=encode(image)).json()
    expected = np.bincount(tiny_onnx.expected(image).ravel(), minlength=4) / image[..., 0].size
    assert answer["classes"] == pytest.approx(dict(zip(tiny_onnx.classes, expected)))
    assert (answer["width"], answer["height"], answer["model"]) == (64, 64, "tiny-fused")
    assert answer["latency_ms"] > 0 and answer["batch_size"] >= 1

    overlay = served.post("/v1/segment?overlay=1&alpha=0.5", content=encode(halves_image()))
    blended = cv2.cvtColor(decode_png(overlay.content, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert blended.shape == (96, 128, 3)
    red_class_colour = np.array(tiny_onnx.palette[RED])
    np.testing.assert_allclose(blended[10, 10], 0.5 * np.array([255, 0, 0]) + 0.5 * red_class_colour, atol=1)
    jpeg = served.post("/v1/segment?overlay=1&encoding=jpeg", content=encode(halves_image()))
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:3] == b"\xff\xd8\xff"


def test_concurrent_requests_are_batched(served, tiny_onnx):
    before = metric_value(served.get("/metrics").text, "edgeseg_batch_size_count")
    image = stripes_image()
    data = encode(image)

    def post(_):
        return served.post("/v1/segment?format=json", content=data)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(post, range(32)))
    assert all(r.status_code == 200 for r in responses)
    shares = dict(zip(tiny_onnx.classes, np.bincount(tiny_onnx.expected(image).ravel(), minlength=4) / 4096))
    assert all(r.json()["classes"] == pytest.approx(shares) for r in responses)
    assert max(r.json()["batch_size"] for r in responses) > 1
    after = metric_value(served.get("/metrics").text, "edgeseg_batch_size_count")
    assert after - before < 32  # fewer network calls than images


def test_bad_inputs_get_json_4xx_and_the_server_keeps_answering(served):
    jpeg = encode(halves_image(), ".jpg")
    png = encode(halves_image(), ".png")
    cases = [
        ("/v1/segment", b"this is not an image", 415),
        ("/v1/segment", b"", 400),
        ("/v1/segment", jpeg[: len(jpeg) // 2], 400),
        ("/v1/segment", png[: len(png) - 30], 400),
        ("/v1/segment?format=xml", jpeg, 400),
        ("/v1/segment?colour=1", jpeg, 400),
        ("/v1/segment", os.urandom(300_000), 413),
    ]
    for path, body, status in cases:
        response = served.post(path, content=body)
        assert response.status_code == status, (path, len(body), response.text)
        assert response.headers["content-type"] == "application/json" and response.json()["error"]

    # A body over the limit sent without Content-Length (chunked) is refused by its actual size.
    def chunks():
        for _ in range(10):
            yield b"\xff\xd8\xff" + bytes(50_000)

    response = served.post("/v1/segment", content=chunks())
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert served.get("/v1/segment").status_code == 405
    missing = served.get("/no/such/page")
    assert missing.status_code == 404 and "error" in missing.json()

    # The declared Content-Length alone is enough to refuse: the answer comes without the body being sent.
    host, port = served.base_url.host, served.base_url.port
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                    b"Content-Length: 5000000000\r\n\r\n")
        reply = b""
        while b"}" not in reply:  # the JSON error body ends the reply
            chunk = raw.recv(4096)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b'"error"' in reply

    assert served.get("/healthz").json()["workers_alive"] == 1
    assert served.post("/v1/segment", content=jpeg).status_code == 200


def test_metrics_exposition(served):
    served.post("/v1/segment", content=b"junk")
    text = served.get("/metrics").text
    for family, kind in [("edgeseg_requests_total", "counter"), ("edgeseg_request_latency_seconds", "histogram"),
                         ("edgeseg_errors_total", "counter"), ("edgeseg_batch_size", "histogram"),
                         ("edgeseg_stream_fps", "gauge")]:
        assert f"# TYPE {family} {kind}" in text
    assert metric_value(text, 'edgeseg_requests_total{endpoint="/v1/segment",status="415"}') >= 1
    assert metric_value(text, 'edgeseg_errors_total{endpoint="/v1/segment",kind="client"}') >= 1
    assert metric_value(text, 'edgeseg_request_latency_seconds_count{endpoint="/v1/segment"}') >= 1
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[^}]*\})? [0-9.e+-]+|[a-z_]+(\{[^}]*\})? \+Inf', line), line


def test_mjpeg_stream_frames_are_segmented_overlays(served, tiny_onnx):
    with served.stream("GET", "/v1/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("multipart/x-mixed-replace")
        parts = read_mjpeg_parts(response, 3)
    # Every frame is one uniform colour, so each streamed JPEG is that colour blended half-and-half with the colour
    # of the class the model gives it.
    frames = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    classes = [int(tiny_onnx.expected(np.array([[rgb]], np.uint8))[0, 0]) for rgb in frames]
    allowed = [0.5 * np.array(rgb) + 0.5 * np.array(tiny_onnx.palette[c]) for rgb, c in zip(frames, classes)]
    for part in parts:
        assert part[:3] == b"\xff\xd8\xff" and part[-2:] == b"\xff\xd9"
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert image.shape == (48, 64, 3)
        mean = image.reshape(-1, 3).mean(axis=0)
        assert min(np.abs(mean - colour).max() for colour in allowed) < 8, mean
    stats = served.get("/v1/stats").json()["stream"]
    assert stats["frames"] >= 3 and stats["error"] is None


def test_server_without_source_answers_stream_with_404(tiny_onnx):
    segmenter = Segmenter.load(tiny_onnx.static)  # fixed batch of one
    url, stop = free_port_server(create_app(segmenter, ServeConfig(max_batch=8)))
    try:
        with httpx.Client(base_url=url, timeout=20) as client:
            response = client.get("/v1/stream")
            assert response.status_code == 404 and "--source" in response.json()["error"]
            assert client.get("/v1/model").json()["max_batch"] == 1
            assert client.get("/v1/stats").json()["stream"] is None
            image = stripes_image()
            np.testing.assert_array_equal(decode_png(client.post("/v1/segment", content=encode(image)).content),
                                          tiny_onnx.expected(image))
    finally:
        stop()
        segmenter.close()


# ------------------------------------------------------------------------------------------------------- the CLI

def test_cli_serves_until_interrupted(tiny_onnx):
    process = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "serve", str(tiny_onnx.fused), "--port", "0"],
                               stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "the server exited before listening"
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", line)
            url = match and match.group(1)
        assert url, "no 'listening on' line"
        response = httpx.post(url + "/v1/segment?format=json", content=encode(halves_image()), timeout=20)
        assert response.status_code == 200 and response.json()["classes"]["red"] == pytest.approx(0.5, abs=0.05)
        process.send_signal(signal.SIGINT)
        # Ctrl-C shuts the server down cleanly; the CLI then exits with the shell's code for an interrupt.
        assert process.wait(timeout=20) == 130
        rest = process.stderr.read()
        assert "interrupted" in rest and "Traceback" not in rest
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_reports_a_busy_port_and_a_missing_source_in_one_line(tiny_onnx, capsys):
    from edgeseg.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(tiny_onnx.fused), "--port", str(port)]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", str(tiny_onnx.fused), "--source", "/no/such/video.mp4"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("edgeseg serve: error:") and "/no/such/video.mp4" in error
