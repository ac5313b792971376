"""Triton model repositories and DeepStream configs, checked against the real ONNX graph and model.

config.pbtxt is parsed back with a small protobuf-text reader written here; the expected names, types and dims come
from the ONNX file through the onnx package, not from the writer. The DeepStream test feeds the exported graph the
way nvinfer would (``net-scale-factor * (x - offsets)`` read from the written config) and compares it with PyTorch
fed the checkpoint's exact per-channel normalisation.
"""

from __future__ import annotations

import configparser
import json
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from edgeseg.cli import main
from edgeseg.export.check import randomize_for_parity
from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.preprocess import normalize, resize_image
from edgeseg.training.checkpoint import model_card, save_checkpoint
from edgeseg.training.models import create_model

SIZE = (64, 96)
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.UINT8: "TYPE_UINT8",
                  onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def parse_pbtxt(text: str) -> dict:
    """Minimal protobuf text-format reader: fields, nested messages, lists; repeated fields become lists."""
    tokens = re.findall(r'"(?:\\.|[^"\\])*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    position = 0

    def value():
        nonlocal position
        token = tokens[position]
        position += 1
        if token == "{":
            return message("}")
        if token == "[":
            items = []
            while tokens[position] != "]":
                items.append(value())
                if tokens[position] == ",":
                    position += 1
            position += 1
            return items
        if token.startswith('"'):
            return json.loads(token)
        return int(token) if re.fullmatch(r"-?\d+", token) else token

    def message(end):
        nonlocal position
        fields: dict = {}
        while position < len(tokens) and tokens[position] != end:
            key = tokens[position]
            position += 1
            if tokens[position] == ":":
                position += 1
            fields.setdefault(key, []).append(value())
        position += 1
        return {k: v[0] if len(v) == 1 else v for k, v in fields.items()}

    return message(None)


def graph_tensors(path):
    model = onnx.load(str(path))
    init = {i.name for i in model.graph.initializer}

    def describe(value):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        return value.name, ONNX_TO_TRITON[value.type.tensor_type.elem_type], dims

    return ([describe(v) for v in model.graph.input if v.name not in init],
            [describe(v) for v in model.graph.output])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_for_parity(create_model("tiny_segnet", num_classes=CAMVID.num_classes)).eval()
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, input_size=list(SIZE), config={})
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, card, model.state_dict())
    return path, model


def as_list(entry):
    return entry if isinstance(entry, list) else [entry]


def one(entry):
    """The single message of a list field such as ``output [ {...} ]``."""
    entries = as_list(entry)
    assert len(entries) == 1
    return entries[0]


def check_against_graph(config: dict, onnx_path, batched: bool) -> None:
    inputs, outputs = graph_tensors(onnx_path)
    for section, tensors in (("input", inputs), ("output", outputs)):
        entries = as_list(config[section])
        assert [e["name"] for e in entries] == [t[0] for t in tensors]
        for entry, (_, triton_type, dims) in zip(entries, tensors):
            assert entry["data_type"] == triton_type
            assert entry["dims"] == (dims[1:] if batched else dims)
            if batched:
                assert dims[0] == -1


def test_static_onnx_repository(tiny_onnx, tmp_path):
    assert main(["export", str(tiny_onnx.static), "--format", "triton", "--out", str(tmp_path / "repo"),
                 "--name", "tiny", "--instances", "2"]) == 0
    folder = tmp_path / "repo" / "tiny"
    assert (folder / "1" / "model.onnx").read_bytes() == tiny_onnx.static.read_bytes()
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert config["name"] == "tiny" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 0  # fixed batch: dims carry it, no dynamic batching
    assert "dynamic_batching" not in config
    check_against_graph(config, tiny_onnx.static, batched=False)
    assert one(config["instance_group"]) == {"count": 2, "kind": "KIND_GPU"}
    assert one(config["output"])["label_filename"] == "labels.txt"
    assert (folder / "labels.txt").read_text().split("\n")[:-1] == list(tiny_onnx.classes)
    meta = json.loads(config["parameters"]["value"]["string_value"])
    assert config["parameters"]["key"] == "edgeseg" and meta["classes"] == list(tiny_onnx.classes)


def test_dynamic_fused_export_from_checkpoint(tiny_checkpoint, tmp_path):
    checkpoint, _ = tiny_checkpoint
    repo = tmp_path / "repo"
    assert main(["export", str(checkpoint), "--format", "triton", "--out", str(repo), "--fuse", "all",
                 "--max-batch", "16", "--preferred-batch", "4", "--max-queue-delay-us", "500",
                 "--instance-kind", "cpu"]) == 0
    folder = repo / "tiny_segnet"
    model_file = folder / "1" / "model.onnx"
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    check_against_graph(config, model_file, batched=True)  # triton exports are batch-dynamic by default
    assert config["max_batch_size"] == 16
    assert one(config["input"])["data_type"] == "TYPE_UINT8" and one(config["input"])["dims"] == [SIZE[0], SIZE[1], 3]
    assert one(config["output"])["name"] == "classes" and one(config["output"])["dims"] == list(SIZE)
    assert config["dynamic_batching"] == {"preferred_batch_size": [4], "max_queue_delay_microseconds": 500}
    assert one(config["instance_group"])["kind"] == "KIND_CPU"
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    batch = np.zeros((3, SIZE[0], SIZE[1], 3), dtype=np.uint8)
    assert session.run(None, {"images": batch})[0].shape == (3, *SIZE)  # the declared batch axis really is free


@pytest.mark.parametrize("sidecar_name", ["m.engine.json", "m.json"])  # both names the runtime reads
def test_engine_repository_uses_sidecar_io(tmp_path, tiny_onnx, sidecar_name):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    meta = json.loads(onnx.load(str(tiny_onnx.dynamic)).metadata_props[0].value)
    sidecar = {**meta, "tensorrt_version": "10.3.0", "gpu": "Orin",
               "io": [{"name": "images", "dtype": "float32", "shape": [None, 3, None, None], "mode": "input"},
                      {"name": "logits", "dtype": "float32", "shape": [None, 4, None, None], "mode": "output"}],
               "profile": {"images": {"min": [1, 3, 32, 32], "opt": [2, 3, 64, 64], "max": [4, 3, 128, 128]}}}
    (tmp_path / sidecar_name).write_text(json.dumps(sidecar))
    assert main(["export", str(engine), "--format", "triton", "--out", str(tmp_path / "repo")]) == 0
    folder = tmp_path / "repo" / meta["model"]
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert config["platform"] == "tensorrt_plan" and (folder / "1" / "model.plan").read_bytes() == b"PLAN"
    assert config["max_batch_size"] == 4  # the engine profile's maximum
    assert one(config["input"])["dims"] == [3, -1, -1] and one(config["output"])["dims"] == [4, -1, -1]
    assert main(["export", str(engine), "--format", "triton", "--out", str(tmp_path / "r2"),
                 "--max-batch", "8"]) == 1  # more than the profile allows


def test_engine_sidecar_without_io_names_the_file(tmp_path, tiny_onnx, capsys):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    meta = json.loads(onnx.load(str(tiny_onnx.dynamic)).metadata_props[0].value)
    (tmp_path / "m.engine.json").write_text(json.dumps({**meta, "tensorrt_version": "10.3.0", "gpu": "Orin"}))
    assert main(["export", str(engine), "--format", "triton", "--out", str(tmp_path / "repo")]) == 1
    assert f"{tmp_path / 'm.engine.json'} has no 'io' list" in capsys.readouterr().err


def test_failed_repository_write_keeps_existing_model(tiny_onnx, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["export", str(tiny_onnx.static), "--format", "triton", "--out", str(repo), "--name", "m"]) == 0
    before = (repo / "m" / "config.pbtxt").read_text()
    # a batch option on a fixed-batch graph fails after the old folder exists
    assert main(["export", str(tiny_onnx.static), "--format", "triton", "--out", str(repo), "--name", "m",
                 "--max-batch", "4"]) == 1
    assert "dynamic batch axis" in capsys.readouterr().err
    assert (repo / "m" / "config.pbtxt").read_text() == before
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


def read_ini(path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(path.read_text())
    return parser


def test_deepstream_configs_match_model_and_normalise_exactly(tiny_checkpoint, tmp_path):
    checkpoint, model = tiny_checkpoint
    folder = tmp_path / "ds"
    assert main(["export", str(checkpoint), "--format", "deepstream", "--out", str(folder), "--sources", "2",
                 "--source", "file:///videos/a.mp4", "--source", "/dev/video0", "--check"]) == 0
    infer_path = folder / "config_infer_tiny_segnet.txt"
    prop = read_ini(infer_path)["property"]
    onnx_path = folder / prop["onnx-file"]
    inputs, outputs = graph_tensors(onnx_path)
    assert prop["network-type"] == "2" and prop["model-color-format"] == "0"
    assert int(prop["num-detected-classes"]) == CAMVID.num_classes == outputs[0][2][1]
    assert prop["infer-dims"] == f"3;{SIZE[0]};{SIZE[1]}" and inputs[0][2][1:] == [3, *SIZE]
    assert prop["output-blob-names"] == outputs[0][0] == "logits"
    assert int(prop["batch-size"]) == 2 == inputs[0][2][0]
    assert prop["network-mode"] == "0"
    labels = (folder / prop["labelfile-path"]).read_text().split("\n")[:-1]
    assert labels == list(CAMVID.names)

    # Feed the graph exactly as nvinfer would, from the written config, and compare with PyTorch fed the
    # checkpoint's per-channel normalisation: the single net-scale-factor must not cost accuracy.
    scale = float(prop["net-scale-factor"])
    offsets = np.array([float(v) for v in prop["offsets"].split(";")], dtype=np.float32)
    dataset = open_dataset("camvid", "val")
    pixels = np.stack([resize_image(dataset.read_image(i), SIZE) for i in (0, 5)]).astype(np.float32)
    nvinfer_input = np.ascontiguousarray((scale * (pixels - offsets)).transpose(0, 3, 1, 2))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    deployed = session.run(None, {"images": nvinfer_input})[0]
    with torch.no_grad():
        reference = model(torch.from_numpy(normalize(pixels.astype(np.uint8), IMAGENET_MEAN, IMAGENET_STD))).numpy()
    assert np.abs(deployed - reference).max() < 1e-3
    assert (deployed.argmax(1) == reference.argmax(1)).mean() >= 0.999

    app = read_ini(folder / "deepstream_app_tiny_segnet.txt")
    assert app["source0"]["type"] == "3" and app["source0"]["uri"] == "file:///videos/a.mp4"
    assert app["source1"]["type"] == "1" and app["source1"]["camera-v4l2-dev-node"] == "0"
    assert app["streammux"]["batch-size"] == "2" and app["primary-gie"]["batch-size"] == "2"
    assert app["primary-gie"]["config-file"] == infer_path.name
    assert app["segvisual"]["enable"] == "1"
    assert (app["segvisual"]["height"], app["segvisual"]["width"]) == (str(SIZE[0]), str(SIZE[1]))


@pytest.mark.parametrize("extra, message", [
    (["--fuse", "post"], "cannot take --fuse"),
    (["--dynamic", "hw"], "needs a fixed input size"),
    (["--source", "ftp://camera"], "is not a DeepStream source"),
    (["--max-batch", "4"], "--max-batch does not apply to --format deepstream"),
])
def test_deepstream_rejects_what_nvinfer_cannot_run(tiny_checkpoint, tmp_path, capsys, extra, message):
    checkpoint, _ = tiny_checkpoint
    assert main(["export", str(checkpoint), "--format", "deepstream", "--out", str(tmp_path / "ds"), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").glob("*.onnx"))
