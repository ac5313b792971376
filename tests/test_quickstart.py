"""The quickstart: its report figures on the tiny ONNX models, and the whole pipeline with a few iterations."""

from __future__ import annotations

import cv2
import pytest

from edgeseg.cli import _build_parser, main
from edgeseg.quickstart import TEACHER_ASSET, miou_fps_plot, overlay_grid
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


@pytest.mark.slow
def test_whole_pipeline_runs_on_the_committed_teacher_and_a_second_run_reuses_it(tmp_path, capsys):
    assert TEACHER_ASSET.is_file(), "the quickstart's teacher checkpoint is not committed"
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--iterations", "2", "--bench-iters", "2"]) == 0
    report = (out / "report.md").read_text()
    for role in ("teacher (BiSeNetV2)", "plain student (Fast-SCNN)", "CSC+ACE student (Fast-SCNN)"):
        assert f"| {role} |" in report
    for picture in ("overlays.png", "miou_vs_fps.png"):
        assert cv2.imread(str(out / picture)) is not None
    capture = cv2.VideoCapture(str(out / "video.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(open_dataset("camvid", "val"))
    capture.release()
    exports = {path: path.stat().st_mtime_ns for path in (out / "onnx").glob("*.onnx")}
    assert sorted(path.name for path in exports) == ["csc_ace.onnx", "plain.onnx", "teacher.onnx"]
    capsys.readouterr()
    assert main(["quickstart", "--out", str(out), "--iterations", "2", "--bench-iters", "2"]) == 0
    assert {path: path.stat().st_mtime_ns for path in (out / "onnx").glob("*.onnx")} == exports
    assert "(parity check passed)" not in capsys.readouterr().out  # nothing exported again
    # Other settings must not reuse those artefacts.
    assert main(["quickstart", "--out", str(out), "--iterations", "1", "--bench-iters", "2"]) == 0
    printed = capsys.readouterr().out
    assert "redoing every stage" in printed and printed.count("(parity check passed)") == 3
    assert "Fast-SCNN, 1 iterations" in (out / "report.md").read_text()
