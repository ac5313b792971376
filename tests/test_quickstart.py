"""The quickstart's report figures, on the tiny ONNX models (the whole quickstart trains for minutes: not here)."""

from __future__ import annotations

import cv2
import pytest

from edgeseg.cli import _build_parser
from edgeseg.quickstart import miou_fps_plot, overlay_grid
from edgeseg.runtime.datasets import open_dataset


def test_overlay_grid_puts_image_truth_and_each_model_side_by_side(tmp_path, tiny_onnx):
    models = {"static model (tiny)": tiny_onnx.static, "fused model (tiny)": tiny_onnx.fused}
    path = overlay_grid(tmp_path, models, count=2)
    grid = cv2.imread(str(path))
    height, width = open_dataset("camvid", "val")[0][0].shape[:2]
    assert grid.shape == (28 + 2 * height, (2 + len(models)) * width, 3)  # a title strip above two rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlays.png"]  # written through a temporary file


def test_miou_fps_plot_writes_one_png(tmp_path):
    rows = [{"role": "teacher", "fps": 5.0, "miou": 0.6, "params_m": 3.3},
            {"role": "student", "fps": 40.0, "miou": 0.5, "params_m": 1.1}]
    path = miou_fps_plot(tmp_path, rows)
    assert cv2.imread(str(path)) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["miou_vs_fps.png"]


@pytest.mark.parametrize("option", ["--iterations", "--bench-iters"])
def test_counts_must_be_positive(option, capsys):
    with pytest.raises(SystemExit) as stop:
        _build_parser("quickstart").parse_args(["quickstart", option, "0"])
    assert stop.value.code == 2 and option in capsys.readouterr().err
