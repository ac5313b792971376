"""``edgeseg export --format onnx``: parity with PyTorch, metadata, fused graphs, FP16, OpenCV DNN, and every error.

Parity is measured on the embedded CamVid sample. References are computed here from the PyTorch network and the
runtime's preprocessing functions, never from the export code under test.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeseg.cli import main
from edgeseg.export import onnx_export
from edgeseg.export.check import randomize_for_parity
from edgeseg.export.formats import FORMATS, format_table, get_format, reject_foreign_options
from edgeseg.export.onnx_export import OnnxOptions, export_onnx
from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.errors import ConfigError
from edgeseg.runtime.metadata import METADATA_KEY
from edgeseg.runtime.preprocess import normalize, resize_image, resize_labels
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.training.checkpoint import load_checkpoint, model_card, save_checkpoint
from edgeseg.training.models import create_model

SIZE = (64, 96)


def make_checkpoint(folder, name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = randomize_for_parity(create_model(name, num_classes=CAMVID.num_classes)).eval()
    card = model_card(model_name=name, model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      input_size=list(SIZE), config={"data": {"dataset": "camvid", "val_split": "val"}})
    path = folder / f"{name}.pt"
    save_checkpoint(path, card, model.state_dict())
    return path, model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny_segnet")


@pytest.fixture(scope="module")
def sample_images():
    dataset = open_dataset("camvid", "val")
    return [dataset.read_image(i) for i in (0, 7, 14)]


def torch_class_map(model: nn.Module, image: np.ndarray, size) -> np.ndarray:
    """What the checkpoint predicts for an image, mapped back to the image grid as the runtime does."""
    batch = torch.from_numpy(normalize(resize_image(image, size)[None], IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        ids = model(batch).argmax(1)[0].numpy().astype(np.uint8)
    return resize_labels(ids, image.shape[:2])


def agreement_lines(text: str) -> list[float]:
    return [float(line.split("argmax agreement ")[1].split("%")[0]) / 100 for line in text.splitlines()
            if "argmax agreement" in line]


def test_help_lists_every_format_from_the_table(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for fmt in FORMATS:
        assert fmt.name in out and fmt.summary[:40] in out


def test_readme_shows_the_format_table_the_code_holds():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert format_table(markdown=True) in readme  # regenerate with: python -m edgeseg.export.formats


def test_foreign_option_error_names_the_formats_that_take_it():
    defaults = {"sources": 1, "workspace": 4.0}
    with pytest.raises(ConfigError, match="--sources does not apply to --format onnx.*--format deepstream"):
        reject_foreign_options(get_format("onnx"), {"sources": 3, "workspace": 4.0}, defaults)
    reject_foreign_options(get_format("deepstream"), {"sources": 3, "workspace": 4.0}, defaults)  # accepted


def test_static_fp32_export_checks_and_carries_metadata(tiny, sample_images, capsys):
    checkpoint, model = tiny
    assert main(["export", str(checkpoint), "--check", "--check-images", "3"]) == 0
    out = capsys.readouterr().out
    path = checkpoint.parent / "tiny_segnet_64x96_fp32.onnx"  # default name, beside the checkpoint
    assert agreement_lines(out) and min(agreement_lines(out)) >= 0.999

    segmenter = Segmenter.load(path, device="cpu")
    meta = segmenter.meta
    assert meta.model == "tiny_segnet" and meta.classes == list(CAMVID.names)
    assert meta.palette == [list(c) for c in CAMVID.palette]
    assert meta.mean == list(IMAGENET_MEAN) and meta.std == list(IMAGENET_STD)
    assert meta.input_size == list(SIZE) and meta.batch == 1
    assert (meta.input_name, meta.output_name, meta.input_layout) == ("images", "logits", "NCHW")
    assert (meta.input_dtype, meta.output_dtype, meta.precision) == ("float32", "float32", "fp32")
    assert not meta.fused_pre and not meta.fused_post
    assert meta.extra["opset"] == 17 and meta.extra["source_checkpoint"] == "tiny_segnet.pt"
    assert meta.extra["edgeseg_version"] and "dynamo=False" in meta.extra["exporter"]
    assert dt.datetime.fromisoformat(meta.extra["export_date"]).tzinfo is not None
    for image in sample_images:
        np.testing.assert_array_equal(segmenter.segment(image), torch_class_map(model, image, SIZE))


def test_dynamic_fused_graph_takes_uint8_and_returns_class_ids(tiny, sample_images, tmp_path, capsys):
    checkpoint, model = tiny
    path = tmp_path / "fused.onnx"
    assert main(["export", str(checkpoint), "--dynamic", "all", "--fuse", "all", "--out", str(path), "--check",
                 "--check-images", "3"]) == 0
    out = capsys.readouterr().out
    assert "64x96 batch 2" in out and "96x128 batch 2" in out  # export size and a second size, batched
    assert min(agreement_lines(out)) >= 0.999

    graph = onnx.load(str(path))
    (images,), (classes,) = graph.graph.input, graph.graph.output
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim] == ["batch", "height", "width", 3]
    assert classes.name == "classes" and classes.type.tensor_type.elem_type == onnx.TensorProto.UINT8

    size = (128, 160)  # neither the export size nor the checked second size
    segmenter = Segmenter.load(path, device="cpu", size=size)
    meta = segmenter.meta
    assert meta.fused_pre and meta.fused_post and meta.input_layout == "NHWC" and meta.input_dtype == "uint8"
    assert meta.input_size == [None, None] and meta.batch is None
    maps = segmenter.segment_batch(sample_images)
    for image, class_map in zip(sample_images, maps):
        expected = torch_class_map(model, image, size)
        assert (class_map == expected).mean() >= 0.999


def test_int32_class_ids(tiny, tmp_path):
    checkpoint, _ = tiny
    path = tmp_path / "ids32.onnx"
    assert main(["export", str(checkpoint), "--fuse", "post", "--class-dtype", "int32", "--out", str(path)]) == 0
    output = onnx.load(str(path)).graph.output[0]
    assert output.type.tensor_type.elem_type == onnx.TensorProto.INT32
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY])
    assert meta["output_dtype"] == "int32" and meta["input_dtype"] == "float32"


def test_fp16_export_runs_and_reports_agreement(tiny, tmp_path, capsys):
    checkpoint, _ = tiny
    path = tmp_path / "half.onnx"
    assert main(["export", str(checkpoint), "--precision", "fp16", "--fuse", "post", "--out", str(path),
                 "--check", "--check-images", "3"]) == 0
    out = capsys.readouterr().out
    assert min(agreement_lines(out)) >= 0.99 and "need >= 99.0%" in out
    graph = onnx.load(str(path)).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # runtime preprocessing unchanged
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
    argmax = next(node for node in inferred.node if node.op_type == "ArgMax")
    assert types[argmax.input[0]] == onnx.TensorProto.FLOAT  # the decision is taken on FP32 logits
    convs = [node for node in inferred.node if node.op_type == "Conv"]
    assert convs and all(types.get(node.output[0]) == onnx.TensorProto.FLOAT16 for node in convs)


def test_check_failure_exits_nonzero(tiny, tmp_path, capsys):
    checkpoint, _ = tiny
    code = main(["export", str(checkpoint), "--precision", "fp16", "--out", str(tmp_path / "h.onnx"), "--check",
                 "--check-images", "1", "--max-abs-error", "1e-12"])
    assert code == 1
    assert "FAILED" in capsys.readouterr().out


def test_opencv_dnn_runs_the_unfused_graph(tiny, sample_images):
    checkpoint, _ = tiny
    path = checkpoint.parent / "tiny_segnet_64x96_fp32.onnx"
    if not path.exists():
        assert main(["export", str(checkpoint)]) == 0
    net = cv2.dnn.readNetFromONNX(str(path))
    segmenter = Segmenter.load(path, device="cpu")
    for image in sample_images:
        batch = segmenter.prepare([image])
        net.setInput(batch)
        opencv_ids = net.forward().argmax(1)
        ort_ids = segmenter.class_ids(segmenter.run(batch))
        assert (opencv_ids == ort_ids).mean() >= 0.999


def test_real_student_fp32_parity_and_opencv(tmp_path, sample_images, capsys):
    checkpoint, model = make_checkpoint(tmp_path, "fastscnn")
    path = tmp_path / "student.onnx"
    assert main(["export", str(checkpoint), "--out", str(path), "--check", "--check-images", "2"]) == 0
    assert min(agreement_lines(capsys.readouterr().out)) >= 0.999
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Expand" in ops  # the pyramid pooling's 1x1 -> HxW upsampling became a broadcast (OpenCV DNN needs it)
    net = cv2.dnn.readNetFromONNX(str(path))
    segmenter = Segmenter.load(path, device="cpu")
    batch = segmenter.prepare(sample_images[:1])
    net.setInput(batch)
    assert (net.forward().argmax(1) == segmenter.class_ids(segmenter.run(batch))).mean() >= 0.999


class OddSizeRefuser(nn.Module):
    """A stand-in network that, like many real ones, refuses input sizes it cannot divide."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        if x.shape[-1] % 8:
            raise RuntimeError(f"width {x.shape[-1]} is not a multiple of 8")
        return self.conv(x)


def hand_made_card() -> dict:
    return model_card(model_name="refuser", model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      input_size=[32, 32], config={})


def test_size_the_model_cannot_take(tmp_path):
    target = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="refuser cannot run on an input of shape 1x3x32x30: width 30"):
        export_onnx(OddSizeRefuser().eval(), hand_made_card(), OnnxOptions(size=(32, 30)), target, "m.pt")
    assert not target.exists()
    export_onnx(OddSizeRefuser().eval(), hand_made_card(), OnnxOptions(size=(32, 32)), target, "m.pt")
    assert target.exists()


def test_failed_export_keeps_the_existing_file(tiny, tmp_path, monkeypatch):
    checkpoint, _ = tiny
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"previous export")

    def reject(model, *args, **kwargs):
        raise onnx.checker.ValidationError("simulated checker failure")

    monkeypatch.setattr(onnx_export.onnx.checker, "check_model", reject)
    assert main(["export", str(checkpoint), "--out", str(target)]) == 1
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.onnx"]  # no temporary file left behind


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "does not exist"),
    (["{corrupt}"], "is not a readable PyTorch checkpoint"),
    (["{foreign}"], "is not an edgeseg checkpoint"),
    (["{tiny}", "--size", "64x"], "--size must be HEIGHTxWIDTH"),
    (["{tiny}", "--size", "0x96"], "--size must be HEIGHTxWIDTH"),
    (["{tiny}", "--format", "tflite"], "unknown export format 'tflite'"),
    (["{tiny}", "--precision", "int4"], "--precision must be one of fp32, fp16, int8"),
    (["{tiny}", "--precision", "int8"], "needs calibration images: add --calib"),
    (["{tiny}", "--precision", "int8", "--calib", "camvid:/no/such/camvid"], "calibration set"),
    (["{tiny}", "--calib", "camvid"], "--calib only apply to --precision int8"),
    (["{tiny}", "--max-drop", "1"], "--max-drop only apply to --precision int8"),
    (["{tiny}", "--precision", "int8", "--calib", "camvid", "--max-drop", "-1"], "--max-drop is a number of mIoU"),
    (["{tiny}", "--check-images", "3"], "--check-images configure the parity check: add --check"),
    (["{tiny}", "--batch", "2", "--dynamic", "batch"], "use one"),
    (["{tiny}", "--class-dtype", "int32"], "add --fuse post"),
    (["{tiny}", "--workspace", "2"], "--workspace does not apply to --format onnx"),
    (["{tiny}", "--opset", "11"], "--opset must lie in 13.."),
    (["{onnx}"], "--format onnx starts from .pt files"),
])
def test_bad_input_is_one_clear_error(tiny, tmp_path, capsys, argv, message):
    checkpoint, _ = tiny
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a zip at all")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    (tmp_path / "model.onnx").write_bytes(b"")
    paths = {"missing": tmp_path / "missing.pt", "corrupt": tmp_path / "corrupt.pt",
             "foreign": tmp_path / "foreign.pt", "tiny": checkpoint, "onnx": tmp_path / "model.onnx"}
    argv = [arg.format(**paths) for arg in argv]
    assert main(["export", *argv, "--out", str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_file_system_and_checkpoint_problems_are_one_line_errors(tiny, tmp_path, capsys):
    """--out naming a directory, a read-only target, weights of another shape, a malformed class list and a
    data error raised inside a DataLoader worker all end in one line naming the problem and exit 1."""
    path, model = tiny
    folder = tmp_path / "a_directory.onnx"
    folder.mkdir()
    assert main(["export", str(path), "--format", "onnx", "--out", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a_directory.onnx" in err and "Traceback" not in err
    card = load_checkpoint(path)
    wrong = {k: (v[:5] if v.dim() and v.shape[0] == CAMVID.num_classes else v) for k, v in card["state_dict"].items()}
    resized = save_checkpoint(tmp_path / "resized.pt", {k: v for k, v in card.items() if k != "state_dict"}, wrong)
    assert main(["eval", str(resized), "--data", "camvid"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not fit tiny_segnet" in err and "size mismatch" in err
    broken = {**{k: v for k, v in card.items() if k != "state_dict"}, "classes": {"names": 5}}
    bad_classes = save_checkpoint(tmp_path / "classes.pt", broken, card["state_dict"])
    assert main(["export", str(bad_classes), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "malformed class list" in err


def test_a_data_error_from_a_loader_worker_is_shown_as_its_own_line():
    from torch._utils import ExceptionWrapper

    from edgeseg.cli import _one_line
    from edgeseg.runtime.errors import DataError

    try:
        raise DataError("labels/train/0001.png: label values outside the classes")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as caught:
        wrapped.reraise()
    assert "Original Traceback" in str(caught.value)  # what torch hands back: the worker's whole traceback
    assert _one_line(caught.value) == "labels/train/0001.png: label values outside the classes"


@pytest.mark.parametrize("size, message", [("7x7", "too small for tiny_segnet"), ("1x1", "too small"),
                                           ("100000x100000", "megapixels; the export limit")])
def test_unusable_export_sizes_are_refused(tiny, tmp_path, capsys, size, message):
    path, _ = tiny
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--format", "onnx", "--size", size, "--out", str(out), "--check"]) == 1
    assert message in capsys.readouterr().err and not out.exists()


def test_check_compares_a_changed_size_with_the_checkpoint_at_its_trained_size(tiny, tmp_path, capsys):
    path, _ = tiny
    trained = "x".join(str(v) for v in SIZE)
    assert main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "same.onnx"), "--check"]) == 0
    assert "trained size" not in capsys.readouterr().out  # same size: the parity check covers it
    assert main(["export", str(path), "--format", "onnx", "--size", "32x32", "--out", str(tmp_path / "small.onnx"),
                 "--check"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "against the checkpoint at its trained size" in line)
    assert trained in line
    share = float(line.split(": ")[-1].split("%")[0]) / 100
    assert 0.0 <= share <= 1.0
    assert ("warning: at 32x32 the export changes" in out) == (share < 0.9)
