"""Confidence beside the class map: the fused graph's max-softmax plane, the Segmenter, the server and the video tint.

The reference is always the unfused network's logits pushed through a softmax here, in numpy, never the code under
test. ``--calib-images`` below the minimum and ``--check-report`` are export options tested here too.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient

from edgeseg.cli import main
from edgeseg.export.api import ExportOptions, export_checkpoint
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.errors import ModelFormatError
from edgeseg.runtime.serve import ServeConfig, create_app
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.video import VideoPipeline, open_sink, open_source

from test_export import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny checkpoint exported plain (logits), fused post with confidence and fused all with confidence."""
    folder = tmp_path_factory.mktemp("confidence")
    checkpoint, _ = make_checkpoint(folder, "tiny_segnet")
    paths = {}
    for key, fuse, confidence in (("plain", "none", False), ("post", "post", True), ("all", "all", True)):
        options = ExportOptions(fuse=fuse, confidence=confidence)
        paths[key] = export_checkpoint(checkpoint, "onnx", options, folder / f"{key}.onnx", log=lambda _: None).path
    return checkpoint, paths


@pytest.fixture(scope="module")
def images():
    dataset = open_dataset("camvid", "val")
    return [dataset.read_image(i) for i in (0, 9)]


def softmax_max(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)


@pytest.mark.parametrize("fused", ["post", "all"])
def test_fused_confidence_is_the_softmax_maximum_of_the_unfused_model(exported, images, fused):
    _, paths = exported
    with Segmenter.load(paths["plain"], device="cpu") as plain, Segmenter.load(paths[fused], device="cpu") as graph:
        assert graph.meta.confidence and graph.meta.fused_post
        logits = plain.run(plain.prepare(images))
        raw = graph.run(graph.prepare(images))
    assert raw.shape == (2, 2, *logits.shape[2:]) and raw.dtype == np.uint8
    expected = softmax_max(logits)
    assert np.abs(raw[:, 1] / 255.0 - expected).max() <= 1 / 255
    np.testing.assert_array_equal(raw[:, 0], logits.argmax(axis=1))
    assert expected.min() < 0.6 < expected.max()  # a random net is unsure somewhere: the plane is not constant


def test_segment_returns_the_map_and_confidence_at_image_size(exported, images, tiny_onnx):
    _, paths = exported
    image = images[0]
    with Segmenter.load(paths["plain"], device="cpu") as plain, Segmenter.load(paths["post"], device="cpu") as graph:
        class_map, confidence = graph.segment(image, confidence=True)
        plain_map, plain_confidence = plain.segment(image, confidence=True)  # computed on the host from logits
        np.testing.assert_array_equal(class_map, graph.segment(image))
    assert confidence.shape == class_map.shape == image.shape[:2] and confidence.dtype == np.uint8
    np.testing.assert_array_equal(class_map, plain_map)
    assert np.abs(confidence.astype(int) - plain_confidence).max() <= 1
    with Segmenter.load(tiny_onnx.fused) as ids_only, pytest.raises(ModelFormatError, match="--confidence"):
        ids_only.segment(np.zeros((64, 64, 3), np.uint8), confidence=True)


def test_export_refuses_confidence_without_fused_ids_and_for_deepstream(exported, tmp_path, capsys):
    checkpoint, _ = exported
    assert main(["export", str(checkpoint), "--confidence", "--out", str(tmp_path / "x.onnx")]) == 1
    assert "--confidence applies to fused class ids: add --fuse post" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--format", "deepstream", "--fuse", "post", "--confidence",
                 "--out", str(tmp_path / "ds")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--confidence does not apply to --format deepstream" in err[0]


def test_server_returns_the_confidence_png(exported, images, tiny_onnx):
    _, paths = exported
    image = images[1]
    ok, body = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    with Segmenter.load(paths["post"], device="cpu") as segmenter:
        expected = segmenter.segment(image, confidence=True)[1]
        with TestClient(create_app(segmenter, ServeConfig())) as client:
            response = client.post("/v1/segment?format=confidence", content=body.tobytes())
            refused = client.post("/v1/segment?format=confidence&overlay=1", content=body.tobytes())
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED),
                                  expected)
    assert refused.status_code == 400 and "format=confidence" in refused.json()["error"]
    with Segmenter.load(tiny_onnx.fused) as ids_only, TestClient(create_app(ids_only, ServeConfig())) as client:
        answer = client.post("/v1/segment?format=confidence", content=body.tobytes())
    assert answer.status_code == 400 and "--confidence" in answer.json()["error"]


def test_video_tints_only_the_low_confidence_pixels(tiny_onnx, tmp_path):
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:, :32] = (0, 0, 255)  # pure red (BGR): the tiny model is 97% sure
    frame[:, 32:] = 128  # mid grey: its best class has p = 0.47, below the 0.5 threshold
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "0.png"), frame)
    outputs = {}
    for show in (False, True):
        out = tmp_path / f"out_{show}"
        with Segmenter.load(tiny_onnx.dynamic) as segmenter:
            VideoPipeline(segmenter, open_source(str(tmp_path / "in")), [open_sink(str(out) + "/")],
                          alpha=0.0, show_confidence=show).run()
        outputs[show] = cv2.imread(str(next(out.glob("*.png"))))[:20]  # above the FPS caption
    np.testing.assert_array_equal(outputs[False], frame[:20])
    np.testing.assert_array_equal(outputs[True][:, :32], frame[:20, :32])
    assert outputs[True][:, 32:].reshape(-1, 3).tolist() == [[204, 51, 204]] * (20 * 32)  # 0.4 grey + 0.6 magenta


def test_few_calibration_images_warn_with_the_count(exported, tmp_path):
    checkpoint, _ = exported
    lines: list[str] = []
    export_checkpoint(checkpoint, "onnx", ExportOptions(precision="int8", calib="camvid", calib_images=6),
                      tmp_path / "int8.onnx", log=lines.append)
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1 and "6 calibration images is below the 100" in warning[0]


def test_check_report_compares_the_checkpoint_with_its_export(exported, tmp_path):
    checkpoint, _ = exported
    lines: list[str] = []
    options = ExportOptions(check=True, check_images=2, check_report=str(tmp_path / "report"))
    export_checkpoint(checkpoint, "onnx", options, tmp_path / "checked.onnx", log=lines.append)
    markdown = (tmp_path / "report" / "compare.md").read_text()
    assert "`tiny_segnet.pt` | fp32 | torch" in markdown and "`checked.onnx` | fp32 | onnxruntime" in markdown
    assert "2 images" in markdown and any(line.startswith("check report:") for line in lines)
