"""Limits of ``edgeseg serve``: what a hostile or unlucky client sends is refused before the work is done.

Decompression bombs and chunks that run past the file, the pixels in flight, and the requests the HTTP layer refuses
by itself (the routes and the stream are in test_serve.py, whose fakes and servers these tests reuse).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from test_serve import FakeSegmenter, encode, free_port_server, halves_image, metric_value

from edgeseg.runtime.serve import ServeConfig, create_app
from edgeseg.runtime.serve.codec import ApiError, decode_image


def test_decode_refuses_bad_bytes_before_decoding():
    image = halves_image()
    png, jpeg = encode(image, ".png"), encode(image, ".jpg")
    assert decode_image(png, 10 ** 6).shape == image.shape
    cases = {
        b"": 400,
        b"GIF89a" + bytes(100): 415,
        png[: len(png) // 2]: 400,
        jpeg[: len(jpeg) - 40]: 400,
        jpeg[:3]: 400,
    }
    for data, status in cases.items():
        with pytest.raises(ApiError) as info:
            decode_image(data, 10 ** 6)
        assert info.value.status == status, data[:12]
    # A header that claims 40000 x 40000 pixels is refused from the header, before any decoding.
    bomb = bytearray(png)
    bomb[16:24] = (40000).to_bytes(4, "big") * 2
    with pytest.raises(ApiError) as info:
        decode_image(bytes(bomb), 50_000_000)
    assert info.value.status == 413


def _png_with_idat(width: int, height: int, raw: bytes, interlace: int = 0) -> bytes:

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def test_png_whose_data_inflates_past_its_header_is_refused_without_decoding(monkeypatch):
    rows = b"".join(b"\x00" + bytes(range(30)) for _ in range(10))  # a valid 10x10 RGB image
    assert decode_image(_png_with_idat(10, 10, rows), 10 ** 6).shape == (10, 10, 3)
    bomb = _png_with_idat(10, 10, rows + bytes(64 * 2**20))  # 64 MiB of zeros behind the declared 10 rows
    assert len(bomb) < 200_000

    def must_not_decode(*args, **kwargs):
        raise AssertionError("cv2.imdecode ran on a decompression bomb")

    monkeypatch.setattr("edgeseg.runtime.serve.codec.cv2.imdecode", must_not_decode)
    with pytest.raises(ApiError) as info:
        decode_image(bomb, 10 ** 6)
    assert info.value.status == 400 and "inflates beyond the 10x10" in info.value.message


def test_pixels_in_flight_are_bounded_with_503_and_retry_after():
    """Two slow 64x64 images (4096 pixels each) fit a 6000-pixel budget one at a time: the second, sent while the
    first is in flight, is refused before decoding with 503 and Retry-After; once the first is answered the budget
    is free again."""
    app = create_app(FakeSegmenter(batch=1, delay_s=0.6), ServeConfig(max_batch=1, max_pixels_in_flight=6000))
    url, stop = free_port_server(app)
    body = encode(np.zeros((64, 64, 3), np.uint8))
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, url + "/v1/segment", content=body, timeout=20)
            deadline = time.monotonic() + 10
            while app.state.server.pixels_in_flight == 0:
                assert time.monotonic() < deadline, "the first request never reached the server"
                time.sleep(0.01)
            second = httpx.post(url + "/v1/segment", content=body, timeout=20)
            assert first.result().status_code == 200
        assert second.status_code == 503 and second.headers["Retry-After"] == "1"
        assert "pixels of images in flight" in second.json()["error"]
        assert httpx.post(url + "/v1/segment", content=body, timeout=20).status_code == 200
    finally:
        stop()


def _raw_request(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(payload)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                answer += chunk
    return answer


@pytest.mark.parametrize("what", ["oversized header", "URL over 100 KB", "bad Content-Length", "garbage request line"])
def test_requests_the_http_layer_refuses_are_answered_400_and_counted_in_metrics(what):
    from edgeseg.runtime.serve.commands import MAX_HEADER_BYTES

    payload = {
        "oversized header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4 * MAX_HEADER_BYTES + b"\r\n\r\n",
        "URL over 100 KB": b"GET /healthz?" + b"q" * 100_001 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "bad Content-Length": b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: -7\r\n\r\n",
        "garbage request line": b"\x16\x03\x01 not http at all\r\n\r\n",
    }[what]
    url, stop = free_port_server(create_app(FakeSegmenter(batch=1), ServeConfig(max_batch=1)), production=True)
    port = int(url.rsplit(":", 1)[1])
    try:
        answer = _raw_request(port, payload)
        assert answer.split(b" ", 2)[1] == b"400", answer[:80]
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert metric_value(metrics, 'edgeseg_requests_total{endpoint="http",status="400"}') == 1
        assert metric_value(metrics, 'edgeseg_errors_total{endpoint="http",kind="client"}') == 1
    finally:
        stop()


def test_png_chunk_declaring_more_bytes_than_the_file_is_refused(monkeypatch):
    """Found by tests/test_fuzz.py: an IDAT length of ~4 GB in a 9 KB file made the decoder allocate 3.9 GB."""
    png = bytearray(encode(halves_image(), ".png"))
    assert png[37:41] == b"IDAT"
    png[33:37] = (4_128_763_904).to_bytes(4, "big")
    monkeypatch.setattr("edgeseg.runtime.serve.codec.cv2.imdecode",
                        lambda *args: (_ for _ in ()).throw(AssertionError("decoded")))
    with pytest.raises(ApiError) as info:
        decode_image(bytes(png), 10 ** 6)
    assert info.value.status == 400 and "runs past the end of the file" in info.value.message


def test_an_image_over_the_pixel_limit_is_413_even_when_the_budget_is_full():
    app = create_app(FakeSegmenter(batch=1), ServeConfig(max_batch=1, max_image_pixels=10_000,
                                                          max_pixels_in_flight=5_000))
    url, stop = free_port_server(app)
    try:
        response = httpx.post(url + "/v1/segment", content=encode(np.zeros((200, 200, 3), np.uint8)), timeout=20)
    finally:
        stop()
    assert response.status_code == 413
