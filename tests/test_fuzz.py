"""Bounded fuzzing of the HTTP service and of the model loaders, with a fixed seed and a time bound.

Server: mutated and truncated PNG/JPEG bodies, random multipart forms and random query strings against a real
uvicorn server on 127.0.0.1 (the production settings of ``edgeseg serve``). Only 2xx, 4xx and 503 answers are
allowed, ``/healthz`` must answer afterwards and the process's memory must stay bounded.
Loaders: corrupted checkpoints and ONNX files against ``eval``/``export``/``bench`` give one line and exit 1.
"""

from __future__ import annotations

import random
import resource
import time

import cv2
import httpx
import numpy as np
import pytest
from test_serve import free_port_server

from edgeseg.cli import main
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.serve import ServeConfig, create_app

SEED = 20261201
TIME_BOUND_S = 60.0
QUERY_KEYS = ["format", "overlay", "encoding", "alpha", "legend", "x", "", "format[]", "%00", "overlay"]
QUERY_VALUES = ["json", "png", "true", "false", "jpeg", "2", "-1", "nan", "1e309", "", "%ff", "\u00e9", "a" * 300]


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mutations(rng: random.Random, seeds: list[bytes], count: int):
    """Bodies made from real images: bit flips, truncations, spliced and duplicated ranges, header edits."""
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        kind = rng.randrange(5)
        if kind == 0:
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data = data[:rng.randrange(1, len(data))]
        elif kind == 2:
            start = rng.randrange(len(data))
            data[start:start] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == 3:
            start, length = rng.randrange(len(data)), rng.randint(1, 512)
            data[start:start] = data[start:start + length] * rng.randint(1, 8)
        else:
            position = rng.randrange(min(len(data), 40))
            data[position:position + 4] = rng.randbytes(4)
        yield bytes(data)


@pytest.fixture(scope="module")
def fuzz_server(tiny_onnx):
    segmenter = Segmenter.load(tiny_onnx.fused)
    app = create_app(segmenter, ServeConfig(max_batch=4, max_wait_ms=5, max_image_bytes=300_000,
                                            max_image_pixels=4_000_000))
    url, stop = free_port_server(app, production=True)
    with httpx.Client(base_url=url, timeout=20) as client:
        yield client
    stop()
    segmenter.close()


def test_fuzzed_requests_get_only_client_errors_or_success(fuzz_server):
    rng = random.Random(SEED)
    rgb = np.random.default_rng(SEED).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    seeds = [cv2.imencode(ext, rgb)[1].tobytes() for ext in (".png", ".jpg")]
    seeds.append(cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes())
    rss_before = _max_rss_mb()
    started = time.monotonic()
    statuses: dict[int, int] = {}
    cases = 0

    def record(response: httpx.Response, what: str) -> None:
        nonlocal cases
        cases += 1
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500 or response.status_code == 503, (what, response.text[:200])

    for body in _mutations(rng, seeds, 300):
        record(fuzz_server.post("/v1/segment", content=body), "mutated body")
        if time.monotonic() - started > TIME_BOUND_S:
            break
    for _ in range(60):
        fields = {rng.choice(["image", "file", "", "image\x00"]): (rng.choice(["a.png", "", "../x"]),
                                                                    rng.choice(seeds)[:rng.randrange(1, 3000)],
                                                                    rng.choice(["image/png", "text/plain", ""]))}
        record(fuzz_server.post("/v1/segment", files=fields), "multipart")
    for _ in range(60):
        pairs = [(rng.choice(QUERY_KEYS), rng.choice(QUERY_VALUES)) for _ in range(rng.randint(0, 4))]
        record(fuzz_server.post("/v1/segment", params=pairs, content=seeds[0]), f"query {pairs}")
    assert cases >= 300 and statuses.get(200, 0) > 0 and sum(v for k, v in statuses.items() if k >= 400) > 0
    assert fuzz_server.get("/healthz").status_code == 200
    assert _max_rss_mb() - rss_before < 400  # no decode ever grew the process by more than its limits allow


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_corrupted_model_files_give_one_line_and_exit_1(kind, tiny_onnx, tmp_path, capsys):
    rng = random.Random(SEED)
    if kind == "onnx":
        original = tiny_onnx.static.read_bytes()
        verbs = [["eval", "{path}", "--data", "camvid"], ["bench", "{path}", "--iters", "2", "--warmup", "0"]]
    else:
        import torch

        from edgeseg.runtime.classes import CAMVID
        from edgeseg.training.checkpoint import model_card, save_checkpoint
        from edgeseg.training.models import create_model

        model = create_model("tiny_segnet", num_classes=CAMVID.num_classes)
        card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=[0.5] * 3, std=[0.2] * 3,
                          input_size=[64, 96], config={})
        original = save_checkpoint(tmp_path / "good.pt", card, model.state_dict()).read_bytes()
        torch.set_num_threads(1)
        verbs = [["eval", "{path}", "--data", "camvid"], ["export", "{path}", "--format", "onnx", "--out",
                                                          str(tmp_path / "out.onnx")]]
    suffix = ".onnx" if kind == "onnx" else ".pt"
    for index in range(12):
        data = bytearray(original)
        if index % 3 == 0:
            data = data[:rng.randrange(1, len(data))]
        elif index % 3 == 1:
            for _ in range(50):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = bytearray(rng.randbytes(rng.randint(1, 4000)))
        path = tmp_path / f"broken{index}{suffix}"
        path.write_bytes(bytes(data))
        verb = [part.format(path=path) for part in rng.choice(verbs)]
        code = main(verb)
        err = capsys.readouterr().err.strip()
        if code == 0:  # a flip that missed everything that matters: the file still works, which is fine
            continue
        assert code == 1, (verb, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "weights_only" not in err, err
