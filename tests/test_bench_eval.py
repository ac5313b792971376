"""``edgeseg bench`` and ``edgeseg eval`` on the tiny ONNX models (conftest.py), with hand-computed expectations."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.runtime import ClassSpec, Segmenter, datasets
from edgeseg.runtime.bench import benchmark, latency_summary
from edgeseg.runtime.errors import ModelFormatError
from edgeseg.runtime.evaluate import evaluate

from conftest import TINY_CLASSES, TINY_PALETTE

FAST = ["--iters", "3", "--warmup", "1", "--camera-size", "48x64"]


def last_json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def quadrant_image(size: int = 64) -> np.ndarray:
    """Red, green, blue and black quadrants: the tiny models predict classes 0, 1, 2, 3 for them."""
    half = size // 2
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:half, :half], image[:half, half:], image[half:, :half] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    return image


# --- bench ----------------------------------------------------------------------------------------------------


def test_latency_summary_percentiles():
    summary = latency_summary([ms / 1000 for ms in range(1, 101)])  # 1..100 ms
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p90"] == pytest.approx(90.1)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["mean"] == pytest.approx(50.5)
    assert (summary["min"], summary["max"]) == (pytest.approx(1.0), pytest.approx(100.0))


def test_bench_json_last_line(tiny_onnx, capsys):
    assert main(["bench", str(tiny_onnx.static), *FAST, "--json"]) == 0
    result = last_json_line(capsys.readouterr().out)
    for key in ("backend", "device", "size", "batch", "latency_ms", "fps", "e2e_fps", "e2e_latency_ms",
                "providers", "precision", "machine"):
        assert key in result, key
    assert (result["backend"], result["device"], result["size"], result["batch"]) == ("onnxruntime", "cpu",
                                                                                        [64, 64], 1)
    latency = result["latency_ms"]
    assert set(latency) >= {"p50", "p90", "p99", "mean"}
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert result["fps"] == pytest.approx(1000.0 / latency["mean"])
    assert result["e2e_fps"] == pytest.approx(1000.0 / result["e2e_latency_ms"]["mean"])
    assert result["machine"]["cpu_cores"] >= 1


def test_bench_one_row_per_size_on_a_dynamic_model(tiny_onnx, capsys, tmp_path):
    saved = tmp_path / "bench.json"
    assert main(["bench", str(tiny_onnx.fused_dynamic), *FAST, "--size", "32x32", "48x64", "--batch", "2",
                 "--json", "--save", str(saved)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["size"] for row in lines] == [[32, 32], [48, 64]]
    assert all(row["batch"] == 2 for row in lines)
    assert [row["size"] for row in json.loads(saved.read_text())] == [[32, 32], [48, 64]]


def test_bench_human_table(tiny_onnx, capsys):
    assert main(["bench", str(tiny_onnx.static), *FAST]) == 0
    out = capsys.readouterr().out
    assert "64x64" in out and "CPUExecutionProvider" in out
    assert "computed in" not in out  # ONNX Runtime runs the graph's own precision


def test_bench_table_names_what_each_rate_is(tiny_onnx, capsys):
    """Issue 17: serial end-to-end rates above model-only ones read as a bug unless the table says how each is
    taken; neither may pass for the pipelined throughput of edgeseg video."""
    assert main(["bench", str(tiny_onnx.static), *FAST]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    title = next(index for index, line in enumerate(lines) if "model-only (ms)" in line)
    assert "end-to-end, serial (ms)" in lines[title]
    header = lines[title + 1].split()
    assert header[-1] == "frames/s" and "img/s" in header and "FPS" not in header
    notes = " ".join(lines[-3:])
    assert "model-only: the network call on a prepared batch" in notes
    assert "end-to-end, serial: frame -> prepare -> run -> finish -> map" in notes
    assert "not pipelined throughput" in notes and "timed in alternation" in notes


def test_bench_alternates_model_only_and_end_to_end_calls(tiny_onnx):
    """Issue 17: timed as two blocks, drifting load could put the end-to-end rate above the model-only one."""
    with Segmenter.load(tiny_onnx.static) as segmenter:
        order = []
        run, prepare = segmenter.backend.run, segmenter.prepare
        segmenter.backend.run = lambda batch: order.append("run") or run(batch)
        segmenter.prepare = lambda images: order.append("prepare") or prepare(images)
        benchmark(segmenter, batch=1, warmup=1, iters=3, camera_size=(48, 64), progress=False)
    order = order[1:]  # the input prepared once for the model-only calls
    assert order == ["run", "prepare", "run"] * 4  # (warm-up + 3 rounds) x (model-only, end-to-end)


def test_bench_static_model_refuses_another_size(tiny_onnx, capsys):
    assert main(["bench", str(tiny_onnx.static), *FAST, "--size", "64x64", "32x32"]) == 1
    captured = capsys.readouterr()
    assert "fixed 64x64" in captured.err and "32x32" in captured.err
    assert captured.out == ""


def test_bench_splits_batches_for_a_fixed_batch_model(tiny_onnx):
    with Segmenter.load(tiny_onnx.static) as segmenter:
        shapes = []
        original = segmenter.backend.run
        segmenter.backend.run = lambda batch: shapes.append(batch.shape) or original(batch)
        row = benchmark(segmenter, batch=3, warmup=0, iters=2, camera_size=(48, 64), progress=False)
    # 2 model-only calls and 2 end-to-end calls, each split into 3 runs of the batch-1 model.
    assert shapes == [(1, 3, 64, 64)] * 12
    assert row["batch"] == 3 and row["size"] == [64, 64]


# --- eval -----------------------------------------------------------------------------------------------------


class FakeDataset:
    """The open_dataset interface over in-memory samples."""

    def __init__(self, samples, name="fake", split="val"):
        self.samples, self.name, self.split = samples, name, split
        self.classes = ClassSpec("tiny", TINY_CLASSES, TINY_PALETTE)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    def paths(self, index):
        return f"image{index}.png", f"label{index}.png"


def first_sample():
    """Quadrant image; labels: TL right, TR half wrong (class 0 where 1 is predicted), BL right, BR ignored."""
    label = np.full((64, 64), 255, dtype=np.uint8)
    label[:32, :32] = 0
    label[:32, 32:48] = 0
    label[:32, 48:] = 1
    label[32:, :32] = 2
    return quadrant_image(), label


def second_sample():
    """Quadrant image with a half-resolution label that is entirely right: predictions go to the label grid."""
    label = np.full((32, 32), 3, dtype=np.uint8)
    label[:16, :16], label[:16, 16:], label[16:, :16] = 0, 1, 2
    return quadrant_image(), label


# Hand counts for the first sample (1024 px per quadrant): class 0: TP 1024, FN 512; class 1: TP 512, FP 512;
# class 2: TP 1024; class 3 absent (only on ignored pixels). The second adds 256 correct px to each class.
FIRST_IOU = {"red": 1024 / 1536, "green": 512 / 1024, "blue": 1.0, "dark": None}
BOTH_IOU = {"red": 1280 / 1792, "green": 768 / 1280, "blue": 1.0, "dark": 1.0}


@pytest.mark.parametrize("model", ["static", "fused_dynamic"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_eval_matches_hand_computed_iou(tiny_onnx, model, batch_size):
    dataset = FakeDataset([first_sample(), second_sample()])
    with Segmenter.load(getattr(tiny_onnx, model), size=(64, 64)) as segmenter:
        result = evaluate(segmenter, dataset, batch_size=batch_size, progress=False)
    assert result["per_class_iou"] == pytest.approx(BOTH_IOU)
    assert result["miou"] == pytest.approx(np.mean(list(BOTH_IOU.values())))
    assert result["pixel_acc"] == pytest.approx((2560 + 1024) / (3072 + 1024))
    assert (result["images"], result["pixels"], result["dataset"], result["split"]) == (2, 4096, "fake", "val")
    assert result["backend"] == "onnxruntime" and result["seconds"] > 0


def test_eval_scores_every_image_when_the_last_batch_is_partial(tiny_onnx):
    dataset = FakeDataset([first_sample(), second_sample(), first_sample()])
    with Segmenter.load(tiny_onnx.fused_dynamic, size=(64, 64)) as segmenter:
        result = evaluate(segmenter, dataset, batch_size=2, progress=False)
    # Twice the first sample's counts plus the second's (see the hand counts above).
    expected = {"red": 2304 / 3328, "green": 1280 / 2304, "blue": 1.0, "dark": 1.0}
    assert result["per_class_iou"] == pytest.approx(expected)
    assert (result["images"], result["pixels"]) == (3, 7168)
    assert result["pixel_acc"] == pytest.approx((2 * 2560 + 1024) / 7168)


def test_eval_limit_and_ignored_class(tiny_onnx):
    with Segmenter.load(tiny_onnx.static) as segmenter:
        result = evaluate(segmenter, FakeDataset([first_sample(), second_sample()]), limit=1, progress=False)
    assert result["images"] == 1
    assert result["per_class_iou"] == {k: (pytest.approx(v) if v is not None else None) for k, v in FIRST_IOU.items()}
    assert result["miou"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert result["pixel_acc"] == pytest.approx(2560 / 3072)


def test_eval_refuses_a_dataset_with_other_classes(tiny_onnx):
    dataset = FakeDataset([first_sample()])
    dataset.classes = ClassSpec("five", tuple("abcde"), ((0, 0, 0),) * 5)
    with Segmenter.load(tiny_onnx.static) as segmenter, pytest.raises(ModelFormatError) as caught:
        evaluate(segmenter, dataset, progress=False)
    assert "4 classes" in str(caught.value) and "has 5" in str(caught.value)


def write_folder_dataset(root):
    """The two fake samples as a real 'folder' dataset on disk (labels at the image size)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"{name} {r} {g} {b}\n"
                                              for name, (r, g, b) in zip(TINY_CLASSES, TINY_PALETTE)))
    image, label = first_sample()
    cv2.imwrite(str(root / "images" / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "masks" / "a.png"), label)
    image, label = second_sample()
    cv2.imwrite(str(root / "images" / "b.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "masks" / "b.png"), cv2.resize(label, (64, 64), interpolation=cv2.INTER_NEAREST))


def test_eval_command_json_on_a_folder_dataset(tiny_onnx, tmp_path, capsys):
    write_folder_dataset(tmp_path / "tinyset")
    saved = tmp_path / "eval.json"
    code = main(["eval", str(tiny_onnx.fused), "--data", f"folder:{tmp_path / 'tinyset'}", "--split", "val",
                 "--batch", "2", "--json", "--save", str(saved)])
    assert code == 0
    result = last_json_line(capsys.readouterr().out)
    # The second label is now full-size: 1024 correct px per class instead of 256.
    expected = {"red": 2048 / 2560, "green": 1536 / 2048, "blue": 1.0, "dark": 1.0}
    assert result["per_class_iou"] == pytest.approx(expected)
    assert result["miou"] == pytest.approx(np.mean(list(expected.values())))
    assert result["pixel_acc"] == pytest.approx((2560 + 4096) / (3072 + 4096))
    for key in ("images", "seconds", "model", "backend", "dataset", "split"):
        assert key in result
    assert (result["images"], result["dataset"], result["split"]) == (2, "folder", "val")
    assert json.loads(saved.read_text())["miou"] == pytest.approx(result["miou"])


def test_eval_command_table_and_class_mismatch(tiny_onnx, tmp_path, capsys, monkeypatch):
    write_folder_dataset(tmp_path / "tinyset")
    assert main(["eval", str(tiny_onnx.static), "--data", f"folder:{tmp_path / 'tinyset'}"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "green" in out

    eleven = FakeDataset([first_sample()], name="camvid")
    eleven.classes = ClassSpec("camvid", tuple(f"c{i}" for i in range(11)), ((0, 0, 0),) * 11)
    monkeypatch.setattr(datasets, "open_dataset", lambda spec, split: eleven)
    assert main(["eval", str(tiny_onnx.static), "--data", "camvid"]) == 1
    err = capsys.readouterr().err
    assert "4 classes" in err and "camvid has 11" in err
