"""benchmarks/cpu_backends.py end to end on a tiny checkpoint: every configuration is timed or skipped with a reason,
scored where its arithmetic differs, and the video and OpenVINO load measurements reach the report.

The script runs in its own interpreter, as a user runs it: with OpenVINO's compiled BF16 models, the video threads
and the ORT sessions of this run inside the pytest process, a later test's subprocess start crashed pytest
(SIGSEGV on this Xeon).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeseg.export.check import randomize_for_parity
from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.training.checkpoint import model_card, save_checkpoint
from edgeseg.training.models import create_model

pytest.importorskip("openvino", reason="the openvino extra is not installed")
REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("cpu_backends", REPO / "benchmarks" / "cpu_backends.py")
cpu_backends = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = cpu_backends  # dataclasses look their module up while the class is created
spec.loader.exec_module(cpu_backends)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("cpu_backends")
    torch.manual_seed(0)
    model = randomize_for_parity(create_model("tiny_segnet", num_classes=CAMVID.num_classes), seed=0).eval()
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, input_size=[32, 48], config={})
    save_checkpoint(folder / "tiny.pt", card, model.state_dict())
    clip = folder / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for index in range(4):
        writer.write(np.full((64, 96, 3), 40 * index, dtype=np.uint8))
    writer.release()
    argv = ["--checkpoint", str(folder / "tiny.pt"), "--size", "32x48", "--rounds", "1", "--block", "2",
            "--images", "2", "--calib-images", "2", "--video", str(clip), "--video-frames", "3",
            "--gemm-size", "64", "--stream-mb", "8", "--out", str(folder)]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_backends.py"), *argv], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return {"json": json.loads((folder / "cpu_backends.json").read_text()),
            "md": (folder / "cpu_backends.md").read_text()}


def test_every_configuration_is_timed_or_skipped_with_its_reason(report):
    (result,) = report["json"]["results"]
    rows = result["rows"]
    assert [row["config"] for row in rows] == [config.name for config in cpu_backends.CONFIGS]
    for row, config in zip(rows, cpu_backends.CONFIGS):
        if config.options.get("precision") == "bf16":
            if row["status"] == "skipped":  # a CPU without BF16 units
                assert "BF16" in row["reason"]
                continue
            assert "bf16" in row["compute_precision"]
        assert row["status"] == "ok" and row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]
        assert row["share_of_peak"] > 0 and row["bound"] in ("compute", "memory")
        assert ("miou" in row) is config.scored and ("agreement" in row) is config.scored
        if config.export.startswith("int8"):
            assert "int8" in row["compute_precision"]  # read back from the backend, not copied from the request
    assert rows[cpu_backends.BASELINE]["agreement"] == 1.0


def test_video_and_openvino_load_are_measured_and_reported(report):
    (result,) = report["json"]["results"]
    for setting in ("off", "on"):
        assert len(result["video_fps"][setting]["runs"]) == 2 and result["video_fps"][setting]["median"] > 0
    assert result["openvino_load_ms"]["onnx"] > 0 and result["openvino_load_ms"]["ir"] > 0
    markdown = report["md"]
    assert markdown.count("| tiny_segnet |") == len(cpu_backends.CONFIGS) + 2  # main table, spinning, best
    assert "## Best configuration per student" in markdown and "clip.avi, 3 frames per run" in markdown
    assert report["json"]["peak_gflops"] > 0 and report["json"]["bandwidth_gbs"] > 0


def test_best_configuration_is_the_fastest_within_the_drop():
    rows = [{"median_ms": 10.0, "miou": 0.400}, {"median_ms": 20.0, "miou": 0.400},
            {"median_ms": 5.0, "miou": 0.390}, {"median_ms": 8.0, "miou": 0.398}, {"median_ms": 1.0}]
    assert cpu_backends.best_config(rows, max_drop=0.5) is rows[3]  # 5 ms loses a point; 1 ms has no mIoU
    assert cpu_backends.best_config(rows, max_drop=2.0) is rows[2]
    assert cpu_backends.best_config([{"median_ms": 1.0}, {"median_ms": 2.0}], max_drop=0.5) is None
