"""The zoo benchmark script (benchmarks/zoo.py): Pareto front, report writers, one real row end to end, resuming.

The end-to-end run exports an untrained ``tiny_segnet`` (with decisive random weights) at 64x96 to FP32 and INT8,
scores it on four images of the embedded CamVid sample and times it for a few calls, so the whole file stays well
under a minute on a busy 2-core CPU.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeseg.export.check import randomize_for_parity
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.preprocess import resize_image, resize_labels
from edgeseg.training.checkpoint import model_card, save_checkpoint
from edgeseg.training.models import create_model

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 96)
EVAL_IMAGES = 4


def _load_zoo_module():
    spec = importlib.util.spec_from_file_location("zoo_benchmark", REPO / "benchmarks" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


zoo = _load_zoo_module()
import zoo_report  # noqa: E402  (on sys.path once zoo.py is loaded: its reports)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_tiny_checkpoint(path: Path, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    classes = open_dataset("camvid", "val").classes
    model = randomize_for_parity(create_model("tiny_segnet", num_classes=classes.num_classes), seed=seed).eval()
    config = {"name": "tiny_for_tests", "train": {"iterations": 40}, "data": {"dataset": "camvid"}}
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=classes, mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225), input_size=list(SIZE), config=config, metrics={"miou": 0.123})
    save_checkpoint(path, card, model.state_dict(), {"iteration": 25})
    return model


def zoo_argv(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoints", str(checkpoint), "--data", "camvid", "--sizes", f"{SIZE[0]}x{SIZE[1]}",
            "--precisions", "fp32", "int8", "fp16", "--devices", "cpu", "--limit", str(EVAL_IMAGES),
            "--iters", "3", "--warmup", "1", "--calib-images", "4", "--threads", "1", "--out", str(out), *extra]


def run_zoo(argv: list[str]) -> dict:
    return zoo.run_zoo(zoo.parse_args(argv), "python benchmarks/zoo.py (test)", log=lambda line: None)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    torch.set_num_threads(1)
    checkpoint = root / "tiny.pt"
    model = save_tiny_checkpoint(checkpoint, seed=0)
    out = root / "results" / "zoo"
    result = run_zoo(zoo_argv(checkpoint, out))
    return {"checkpoint": checkpoint, "model": model, "out": out, "result": result}


def rows_by_precision(rows: list[dict]) -> dict[str, dict]:
    return {row["precision"]: row for row in rows}


# ---------------------------------------------------------------------------------------------------- Pareto front


def test_pareto_front_keeps_only_points_nobody_beats():
    points = [(10.0, 0.50), (20.0, 0.40), (15.0, 0.30), (5.0, 0.60), (20.0, 0.40), (10.0, 0.45)]
    # (15, 0.30) loses to (20, 0.40) on both axes; (10, 0.45) ties (10, 0.50) on FPS and loses on mIoU.
    # The two equal (20, 0.40) points do not beat each other, so both stay. Ordered by FPS.
    assert zoo_report.pareto_front(points) == [3, 0, 1, 4]


def test_pareto_front_of_one_point_and_of_none():
    assert zoo_report.pareto_front([(3.0, 0.1)]) == [0]
    assert zoo_report.pareto_front([]) == []


def test_pareto_front_of_a_chain_is_every_point():
    points = [(float(fps), 1.0 / fps) for fps in (8, 1, 4, 2)]  # faster is always less accurate
    assert zoo_report.pareto_front(points) == [1, 3, 2, 0]


# ---------------------------------------------------------------------------------------------------- report writers


def fake_row(label: str, size, precision: str, fps: float | None, miou: float | None, reason: str = "") -> dict:
    row = {"label": label, "model": label, "checkpoint": f"runs/{label}.pt", "size": list(size),
           "precision": precision, "device": "cpu", "backend": "ORT CPU", "params": 2_500_000, "gflops": 1.25,
           "settings": {"data": "camvid", "eval_split": "val", "eval_limit": None, "calib_split": "train",
                        "calib_images": 32, "calib_method": "minmax", "warmup": 5, "iters": 50, "batch": 1,
                        "camera_size": [540, 960], "threads": 2, "fuse": "all"}}
    if fps is None:
        return {**row, "status": "skipped", "reason": reason}
    latency = {"p50": 1000.0 / fps, "p90": 1100.0 / fps, "p99": 1200.0 / fps, "mean": 1000.0 / fps}
    return {**row, "status": "ok", "miou": miou, "pixel_acc": 0.8, "fps": fps, "e2e_fps": fps / 2,
            "latency_ms": latency, "e2e_latency_ms": latency, "load_average": [1.5, 2.5], "onnx_mb": 3.0,
            "eval_images": 101, "roofline": {"share_of_peak": fps / 1000, "bound": "memory", "share_of_bound": 0.5}}


def provenance(label: str, iterations: int | None) -> dict:
    return {"label": label, "checkpoint": f"runs/{label}.pt",
            "training": {"config": f"{label}_cpu", "iterations": iterations, "planned_iterations": 800,
                         "input_size": [180, 240], "dataset": "camvid:/data/camvid", "val_miou": 0.4567,
                         "teacher": None, "distill_losses": []}}


def table_lines(markdown: str, heading: str) -> list[str]:
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| model")]


def test_markdown_report_has_a_table_per_size_with_skips_explained_once():
    cpu_fp16 = "the CPU provider runs FP16 through casts"
    rows = [fake_row("fast", (180, 240), "fp32", 100.0, 0.40), fake_row("fast", (180, 240), "int8", 150.0, 0.38),
            fake_row("fast", (180, 240), "fp16", None, None, cpu_fp16),
            fake_row("big", (180, 240), "fp32", 20.0, 0.35), fake_row("big", (180, 240), "fp16", None, None, cpu_fp16),
            fake_row("fast", (360, 480), "fp32", 30.0, 0.45)]
    zoo_report.mark_pareto(rows)
    markdown = zoo_report.markdown_report(rows, [provenance("fast", 800), provenance("big", None)], {
        "cpu": "Test CPU", "cpu_cores": 2, "cpu_cores_usable": 2, "memory_gib": 4.0, "os": "Linux", "python": "3.11",
        "packages": {"onnxruntime": "1.0"}, "gpus": []}, "python benchmarks/zoo.py --x", "2030-01-01", "zoo_pareto.png")

    small, large = table_lines(markdown, "## Network input 180x240"), table_lines(markdown, "## Network input 360x480")
    assert len(small) == 5 and len(large) == 1
    assert all(line.count("|") == 15 for line in small + large)  # 14 cells in every row, skipped rows included
    fast_int8 = next(line for line in small if "| fast |" in line and "| int8 |" in line)
    assert "| 38.0 | 6.67 | 8.00 | 150.0 | 75.0 | 15% | memory (50%) | yes |" in fast_int8
    big_fp32 = next(line for line in small if "| big |" in line and "| fp32 |" in line)
    assert "| yes |" not in big_fp32  # slower and less accurate than fast fp32
    assert sum("skipped (1)" in line for line in small) == 2
    assert markdown.count("The CPU provider runs FP16 through casts.") == 1
    assert "Command: `python benchmarks/zoo.py --x`" in markdown and "Test CPU" in markdown
    assert "2030-01-01" in markdown and "](zoo_pareto.png)" in markdown
    assert "| fast | `runs/fast.pt` | fast_cpu | 800 of 800 | 180x240 |" in markdown
    assert "| big | `runs/big.pt` | big_cpu | 800 planned |" in markdown


def test_csv_report_has_one_line_per_row_with_the_numbers():
    rows = [fake_row("fast", (180, 240), "fp32", 100.0, 0.40), fake_row("fast", (180, 240), "fp16", None, None, "no")]
    zoo_report.mark_pareto(rows)
    parsed = list(csv.DictReader(io.StringIO(zoo_report.csv_report(rows))))
    assert [line["precision"] for line in parsed] == ["fp32", "fp16"]
    assert float(parsed[0]["p50_ms"]) == pytest.approx(10.0) and float(parsed[0]["fps"]) == pytest.approx(100.0)
    assert parsed[0]["size"] == "180x240" and parsed[0]["pareto"] == "True"
    assert parsed[1]["status"] == "skipped" and parsed[1]["reason"] == "no" and parsed[1]["miou"] == ""


# ---------------------------------------------------------------------------------------------------- end to end


def reference_class_iou(model: torch.nn.Module, count: int) -> dict[str, float | None]:
    """Per-class IoU of the PyTorch network fed at SIZE, computed here with numpy, to compare with the export's.

    Per-class IoU rather than mIoU: an untrained network's mIoU is a few percent at any input size, while its
    per-class IoUs move by several points between sizes, so agreement says the file really ran at SIZE.
    """
    dataset = open_dataset("camvid", "val")
    num_classes = dataset.classes.num_classes
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for index in range(count):
        image, label = dataset[index]
        pixels = (resize_image(image, SIZE).astype(np.float32) / 255.0 - mean) / std
        with torch.no_grad():
            logits = model(torch.from_numpy(pixels.transpose(2, 0, 1)[None].astype(np.float32)))
        prediction = resize_labels(logits.argmax(1)[0].numpy().astype(np.uint8), label.shape[:2])
        valid = label != 255
        matrix += np.bincount(label[valid].astype(np.int64) * num_classes + prediction[valid],
                              minlength=num_classes ** 2).reshape(num_classes, num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    return {name: (float(true_positive[i] / union[i]) if union[i] else None)
            for i, name in enumerate(dataset.classes.names)}


def test_one_row_end_to_end_writes_every_report(first_run):
    rows = rows_by_precision(first_run["result"]["rows"])
    out = first_run["out"]
    assert set(rows) == {"fp32", "int8", "fp16"}
    assert rows["fp32"]["status"] == "ok" and rows["int8"]["status"] == "ok"
    assert rows["fp16"]["status"] == "skipped" and "FP16" in rows["fp16"]["reason"]
    expected_params = sum(p.numel() for p in first_run["model"].parameters())
    for precision in ("fp32", "int8"):
        row = rows[precision]
        assert row["params"] == expected_params and row["gflops"] > 0
        assert row["eval_images"] == EVAL_IMAGES and 0.0 < row["miou"] <= 1.0
        assert row["providers"] == ["CPUExecutionProvider"]
        assert row["fps"] > 0 and row["e2e_fps"] > 0 and row["latency_ms"]["p99"] >= row["latency_ms"]["p50"]
        assert Path(row["onnx"]).is_file() and row["training"]["iterations"] == 25
        roofline = row["roofline"]  # the CPU's limits, measured beside the row, and where the model sits under them
        assert roofline["peak_gflops"] > 1 and roofline["bandwidth_gbs"] > 0.1
        assert roofline["gflops_per_s"] == pytest.approx(row["gflops"] / (row["latency_ms"]["p50"] / 1e3))
    # The exported FP32 file scores what the PyTorch network scores at the same input size.
    reference = reference_class_iou(first_run["model"], EVAL_IMAGES)
    measured = rows["fp32"]["per_class_iou"]
    assert [name for name, iou in measured.items() if iou is None] == [n for n, iou in reference.items() if iou is None]
    assert all(measured[name] == pytest.approx(iou, abs=0.005) for name, iou in reference.items() if iou is not None)

    stored = json.loads(out.with_suffix(".json").read_text())
    assert len(stored["rows"]) == 3 and stored["machine"]["cpu_cores"] >= 1
    assert stored["checkpoints"][0]["training"]["config"] == "tiny_for_tests"
    markdown = out.with_suffix(".md").read_text()
    assert len(table_lines(markdown, "## Network input 64x96")) == 3
    assert "tiny_for_tests | 25 of 40 | 64x96" in markdown
    assert len(list(csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text())))) == 3
    image = cv2.imread(str(out.with_name("zoo_pareto.png")))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300


def test_pareto_flags_mark_only_beaten_rows_off_the_front(first_run):
    measured = [row for row in first_run["result"]["rows"] if row["status"] == "ok"]
    assert any(row["pareto"] for row in measured)
    for row in measured:
        beaten = any(other["fps"] >= row["fps"] and other["miou"] >= row["miou"]
                     and (other["fps"] > row["fps"] or other["miou"] > row["miou"]) for other in measured)
        assert row["pareto"] is not beaten


def test_second_run_reuses_rows_and_exports(first_run, monkeypatch):
    exports = {path: path.stat().st_mtime_ns for path in (first_run["out"].parent / "zoo_work" / "onnx").glob("*.onnx")}
    assert len(exports) == 2

    def refuse(*args, **kwargs):
        raise AssertionError("a cached row was measured again")

    monkeypatch.setattr("edgeseg.export.onnx_export.export_onnx", refuse)
    monkeypatch.setattr(zoo, "benchmark", refuse)
    monkeypatch.setattr(zoo, "evaluate", refuse)
    again = run_zoo(zoo_argv(first_run["checkpoint"], first_run["out"]))
    assert again["exports"] == 0
    assert [row["status"] for row in again["rows"]] == [row["status"] for row in first_run["result"]["rows"]]
    first_fp32 = rows_by_precision(first_run["result"]["rows"])["fp32"]
    assert rows_by_precision(again["rows"])["fp32"]["fps"] == first_fp32["fps"]  # read back, not timed again
    assert {path: path.stat().st_mtime_ns for path in exports} == exports


def test_changed_settings_remeasure_without_exporting_again(first_run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the export does not depend on the timing settings")

    monkeypatch.setattr("edgeseg.export.onnx_export.export_onnx", refuse)
    again = run_zoo(zoo_argv(first_run["checkpoint"], first_run["out"], "--camera-size", "90x120"))
    measured = [row for row in again["rows"] if row["status"] == "ok"]
    assert again["exports"] == 0 and len(measured) == 2
    assert all(row["settings"]["camera_size"] == [90, 120] for row in measured)


def test_changed_checkpoint_is_exported_and_measured_again(tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    out = tmp_path / "zoo"
    argv = zoo_argv(checkpoint, out)
    argv[argv.index("--precisions") + 1:argv.index("--devices")] = ["fp32"]
    save_tiny_checkpoint(checkpoint, seed=0)
    assert run_zoo(argv)["exports"] == 1
    save_tiny_checkpoint(checkpoint, seed=1)  # the run trained on: same path, other weights
    again = run_zoo(argv)
    assert again["exports"] == 1 and again["rows"][0]["status"] == "ok"


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nothing_here.pt"
    assert zoo.main(zoo_argv(missing, tmp_path / "zoo")) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(missing) in error


def test_missing_dataset_is_one_line_error(first_run, tmp_path, capsys):
    argv = zoo_argv(first_run["checkpoint"], tmp_path / "zoo")
    argv[argv.index("--data") + 1] = f"camvid:{tmp_path / 'no_camvid'}"
    assert zoo.main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no_camvid" in error
    assert not (tmp_path / "zoo.md").exists()
