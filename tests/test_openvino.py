"""The OpenVINO backend against ONNX Runtime on the same ``.onnx`` files: the tiny fixtures (exact class maps), the
committed BiSeNetV2 exported small (a real network on real CamVid sample images) and an INT8 Q/DQ export, plus
its precision options and their one-line errors. OpenVINO is in ``make setup``, so these run in CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

from edgeseg.cli import main
from edgeseg.export.check import randomize_for_parity
from edgeseg.runtime.backends.openvino_runtime import cpu_capabilities
from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.errors import BackendUnavailable, ModelFormatError
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.training.checkpoint import model_card, save_checkpoint
from edgeseg.training.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "edgeseg" / "assets" / "teacher_bisenetv2_camvid.pt"
SMALL = "96x128"
IMAGES = 6


def camvid_images(count: int = IMAGES) -> list[np.ndarray]:
    dataset = open_dataset("camvid", "val")
    return [dataset.read_image(index) for index in range(count)]


def agreement(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(a == b) for a, b in zip(first, second)]))


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> dict[str, Path]:
    """The committed BiSeNetV2 exported at 96x128: logits, and everything fused with dynamic height/width."""
    folder = tmp_path_factory.mktemp("ov_student")
    paths = {"plain": folder / "bisenetv2.onnx", "fused": folder / "bisenetv2_fused.onnx"}
    assert main(["export", str(TEACHER), "--size", SMALL, "--out", str(paths["plain"])]) == 0
    assert main(["export", str(TEACHER), "--size", SMALL, "--fuse", "all", "--dynamic", "hw",
                 "--out", str(paths["fused"])]) == 0
    return paths


@pytest.mark.parametrize("model", ["static", "dynamic", "fused", "fused_dynamic"])
def test_tiny_models_match_onnxruntime_on_camvid_images(tiny_onnx, model):
    path = getattr(tiny_onnx, model)
    images = camvid_images(3)
    with Segmenter.load(path, backend="openvino", size=None if "dynamic" not in model else (64, 96)) as ov, \
            Segmenter.load(path, size=None if "dynamic" not in model else (64, 96)) as ort:
        assert ov.backend.name == "openvino" and ov.providers == ["CPU"] and ov.backend.compute_precision == "fp32"
        assert ov.backend.max_batch == ort.backend.max_batch and ov.input_size == ort.input_size
        for image, ov_map, ort_map in zip(images, ov.segment_batch(images), ort.segment_batch(images)):
            assert ov_map.shape == image.shape[:2]
            np.testing.assert_array_equal(ov_map, ort_map)  # the tiny net has no near-ties (see conftest)


def test_tiny_model_at_its_own_size_gives_the_known_map(tiny_onnx):
    image = open_dataset("camvid", "val").read_image(0)[:64, :64]
    with Segmenter.load(tiny_onnx.fused, backend="openvino") as ov:
        np.testing.assert_array_equal(ov.segment(image), tiny_onnx.expected(image))
    with pytest.raises(ModelFormatError, match="closed"):
        ov.segment(image)


@pytest.mark.parametrize("kind", ["plain", "fused"])
def test_real_network_agrees_with_onnxruntime(student, kind):
    images = camvid_images()
    with Segmenter.load(student[kind], backend="openvino", size=SMALL) as ov, \
            Segmenter.load(student[kind], size=SMALL) as ort:
        assert agreement(ov.segment_batch(images), ort.segment_batch(images)) >= 0.99


def test_eval_miou_through_openvino(student, capsys):
    scores = {}
    for backend in ("onnxruntime", "openvino"):
        assert main(["eval", str(student["plain"]), "--data", "camvid", "--limit", "4", "--backend", backend,
                     "--json"]) == 0
        scores[backend] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["openvino"]["backend"] == "openvino" and scores["openvino"]["compute_precision"] == "fp32"
    assert scores["openvino"]["miou"] > 0.2  # a trained network, not noise
    assert scores["openvino"]["miou"] == pytest.approx(scores["onnxruntime"]["miou"], abs=0.005)


def test_bench_reports_the_precision_really_used(tiny_onnx, capsys):
    assert main(["bench", str(tiny_onnx.fused), "--backend", "openvino", "--warmup", "1", "--iters", "2"]) == 0
    assert "backend openvino, device cpu, providers CPU, precision fp32 (computed in fp32)" in capsys.readouterr().out
    assert main(["bench", str(tiny_onnx.fused), "--backend", "openvino", "--warmup", "0", "--iters", "1",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["backend"] == "openvino" and row["compute_precision"] == "fp32" and row["providers"] == ["CPU"]


def test_int8_export_runs_its_qdq_graph(tmp_path):
    """A Q/DQ export runs as it is: the runtime graph executes its inner convolutions in 8-bit, and says so."""
    torch.manual_seed(0)
    model = randomize_for_parity(create_model("tiny_segnet", num_classes=CAMVID.num_classes)).eval()
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, input_size=[64, 96], config={})
    save_checkpoint(tmp_path / "tiny.pt", card, model.state_dict())
    path = tmp_path / "tiny_int8.onnx"
    assert main(["export", str(tmp_path / "tiny.pt"), "--precision", "int8", "--calib", "camvid",
                 "--calib-images", "4", "--out", str(path)]) == 0
    images = camvid_images(3)
    with Segmenter.load(path, backend="openvino") as ov, Segmenter.load(path) as ort:
        assert ov.backend.compute_precision.startswith("int8 (") and ov.backend.compute_precision.endswith("+ fp32")
        quantised, total = map(int, ov.backend.compute_precision.split("(")[1].split(" conv")[0].split("/"))
        assert 0 < quantised < total  # first and last convolutions stay float in edgeseg's Q/DQ form
        # Different int8 kernels on a random-weight net (see test_export_int8): close, not equal.
        assert agreement(ov.segment_batch(images), ort.segment_batch(images)) >= 0.8


def test_bad_precision_hint_is_one_line(tiny_onnx, capsys):
    assert main(["bench", str(tiny_onnx.fused), "--backend", "openvino", "--ov-precision", "fp64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown OpenVINO precision hint 'fp64'; choose fp32 or bf16" in err


def test_bf16_only_where_the_cpu_has_it(tiny_onnx, capsys):
    if "BF16" in cpu_capabilities(openvino.Core()):
        with Segmenter.load(tiny_onnx.fused, backend="openvino", precision="bf16") as ov:
            assert ov.backend.compute_precision == "bf16"
    else:  # OpenVINO itself would quietly compile in f32: refused, with the reason
        assert main(["bench", str(tiny_onnx.fused), "--backend", "openvino", "--ov-precision", "bf16"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "has no BF16 units" in err and "use precision fp32" in err


def test_options_of_another_backend_are_refused(tiny_onnx, capsys):
    assert main(["bench", str(tiny_onnx.fused), "--ov-precision", "bf16"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("edgeseg bench: error: backend 'onnxruntime' takes no option 'precision' (it is an option of "
                   "openvino)")
    assert main(["eval", str(tiny_onnx.fused), "--data", "camvid", "--backend", "openvino",
                 "--ort-spinning", "on"]) == 1
    assert "backend 'openvino' takes no option 'spinning'" in capsys.readouterr().err


def test_gpu_devices_and_missing_openvino_are_refused(tiny_onnx, monkeypatch):
    with pytest.raises(BackendUnavailable, match="runs on the CPU, not 'cuda'"):
        Segmenter.load(tiny_onnx.fused, backend="openvino", device="cuda")
    monkeypatch.setitem(sys.modules, "edgeseg.runtime.backends.openvino_runtime", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgeseg\[openvino\]'"):
        Segmenter.load(tiny_onnx.fused, backend="openvino")
