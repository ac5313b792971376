"""``edgeseg compare``: per-class IoU, agreement and worst images of candidates against a reference (torch-free).

The tiny ONNX models (conftest) give a class map known by hand, so every number of the report is checked against a
numpy reference computed here. A "shifted" candidate is the tiny graph with a larger "dark" bias: it turns dim
pixels dark, which costs a known share of pixels.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseg.cli import main
from edgeseg.runtime.compare import compare_models
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.errors import ModelFormatError
from edgeseg.runtime.metrics import ConfusionMatrix

from conftest import TINY_CLASSES

RNG = np.random.default_rng(3)
DARK_SHIFT = 1.5


def _images() -> list[np.ndarray]:
    """Four 64x96 images of random pure colours at random brightness (a multiple of 32: run at their own size)."""
    images = []
    for _ in range(4):
        channel = RNG.integers(0, 3, size=(8, 12))
        level = RNG.integers(40, 256, size=(8, 12))
        image = np.zeros((8, 12, 3), dtype=np.uint8)
        np.put_along_axis(image, channel[..., None], level[..., None].astype(np.uint8), axis=2)
        images.append(np.kron(image, np.ones((8, 8, 1), dtype=np.uint8)))
    return images


def _tiny_logits(image: np.ndarray, dark_shift: float = 0.0) -> np.ndarray:
    from conftest import TINY_BIAS, TINY_MEAN, TINY_STD, TINY_WEIGHT

    normalised = (image.astype(np.float64) / 255.0 - np.array(TINY_MEAN)) / np.array(TINY_STD)
    return normalised @ TINY_WEIGHT.T.astype(np.float64) + TINY_BIAS + np.array([0, 0, 0, dark_shift])


@pytest.fixture(scope="module")
def setup(tiny_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = root / "data"
    (data / "images" / "val").mkdir(parents=True)
    (data / "masks" / "val").mkdir(parents=True)
    (data / "classes.txt").write_text("\n".join(TINY_CLASSES) + "\n")
    images = _images()
    for index, image in enumerate(images):
        label = _tiny_logits(image).argmax(-1).astype(np.uint8)
        label[:8, :8] = 255  # an ignored corner
        cv2.imwrite(str(data / "images" / "val" / f"{index}.png"), image[..., ::-1])
        cv2.imwrite(str(data / "masks" / "val" / f"{index}.png"), label)
    shifted = onnx.load(str(tiny_onnx.dynamic))
    bias = next(init for init in shifted.graph.initializer if init.name == "bias")
    values = numpy_helper.to_array(bias).copy()
    values[3] += DARK_SHIFT
    bias.CopyFrom(numpy_helper.from_array(values, "bias"))
    onnx.save(shifted, str(root / "shifted.onnx"))
    return root, f"folder:{data}", images


def test_report_scores_each_model_against_the_labels_and_the_reference(tiny_onnx, setup):
    root, spec, images = setup
    report = compare_models([tiny_onnx.dynamic, root / "shifted.onnx"], open_dataset(spec, "val"), root / "out",
                            worst=2)
    reference = [_tiny_logits(image).argmax(-1) for image in images]
    shifted = [_tiny_logits(image, DARK_SHIFT).argmax(-1) for image in images]
    per_image = [float((a == b).mean()) for a, b in zip(reference, shifted)]
    assert 0 < min(per_image) < 1  # the shift really changes some pixels
    dataset = open_dataset(spec, "val")
    expected = ConfusionMatrix(4)
    for index, prediction in enumerate(shifted):
        expected.update(dataset[index][1], prediction)

    saved = json.loads((root / "out" / "compare.json").read_text())
    ref_row, cand_row = saved["models"]
    assert ref_row["miou"] == pytest.approx(1.0)  # the labels are the reference's own maps
    assert cand_row["miou"] == pytest.approx(expected.miou())
    assert cand_row["agreement"] == pytest.approx(sum(a * r.size for a, r in zip(per_image, reference))
                                                  / sum(r.size for r in reference))
    assert cand_row["per_class_change"]["dark"] == pytest.approx(cand_row["per_class_iou"]["dark"] - 1.0)
    assert [entry["index"] for entry in cand_row["worst"]] == list(np.argsort(per_image, kind="stable")[:2])
    assert cand_row["seconds"] > 0 and report.reference.name == "tiny_dynamic.onnx"

    grid = cv2.imread(str(root / "out" / cand_row["grid"]))
    assert grid.shape[1] == 4 * 320 and grid.shape[0] > 2 * 200  # 2 rows of image | ref | candidate | mask
    markdown = (root / "out" / "compare.md").read_text()
    assert f"![worst images]({cand_row['grid']})" in markdown and "| dark |" in markdown


def test_cli_fails_past_the_budget_with_one_line_and_passes_within_it(tiny_onnx, setup, capsys):
    root, spec, _ = setup
    report = compare_models([tiny_onnx.dynamic, root / "shifted.onnx"], open_dataset(spec, "val"), root / "b",
                            worst=0)
    drop = report.miou_drop(report.models[1])
    assert drop > 1
    args = ["compare", str(tiny_onnx.dynamic), str(root / "shifted.onnx"), "--data", spec, "--out", str(root / "c"),
            "--worst", "0"]
    assert main([*args, "--max-drop", f"{drop + 0.5:.2f}"]) == 0
    capsys.readouterr()
    assert main([*args, "--max-drop", f"{drop - 0.5:.2f}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shifted.onnx loses" in err[0] and "mIoU points" in err[0]


def test_models_of_other_classes_than_the_data_are_refused(tiny_onnx, tmp_path):
    with pytest.raises(ModelFormatError, match="predicts 4 classes"):
        compare_models([tiny_onnx.dynamic, tiny_onnx.static], open_dataset("camvid", "val"), tmp_path)
