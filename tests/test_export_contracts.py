"""Contracts over the registries: every student of the model zoo exports and matches PyTorch, every row of the
format table writes its artefact through the library call, and the CLI's flags are exactly the library's options.

A new student or a new format is covered here without a new test; one that breaks the contract fails here.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import pytest
import torch

from edgeseg.export import tensorrt_build
from edgeseg.export.api import DEFAULTS, ExportOptions, export_checkpoint
from edgeseg.export.check import randomize_for_parity
from edgeseg.export.commands import add_export_arguments
from edgeseg.export.formats import CHECK_OPTIONS, DEEPSTREAM_OPTIONS, ENGINE_OPTIONS, FORMATS, GRAPH_OPTIONS, \
    TRITON_OPTIONS
from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.training.checkpoint import model_card, save_checkpoint
from edgeseg.training.models import create_model, list_models

from test_tensorrt_build import FakeTensorRT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 64)
"""Twice the deepest stride of the zoo (32): the smallest size every student takes, to keep 24 exports fast."""


def random_checkpoint(folder, name: str):
    torch.manual_seed(0)
    model = randomize_for_parity(create_model(name, num_classes=CAMVID.num_classes)).eval()
    card = model_card(model_name=name, model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      input_size=list(SIZE), config={})
    return save_checkpoint(folder / f"{name}.pt", card, model.state_dict())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny_segnet")


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(role="student"))
def test_every_student_exports_static_and_dynamic_fused_and_not_and_matches_pytorch(name, tmp_path):
    checkpoint = random_checkpoint(tmp_path, name)
    for dynamic in ("none", "all"):
        for fuse in ("none", "all"):
            options = ExportOptions(dynamic=dynamic, fuse=fuse, check=True, check_data="camvid", check_images=2)
            result = export_checkpoint(checkpoint, "onnx", options, out=tmp_path / f"{dynamic}_{fuse}.onnx",
                                       log=lambda line: None)
            label = f"{name} dynamic={dynamic} fuse={fuse}"
            assert result.passed, f"{label}: " + "; ".join(r.describe() for r in result.parity)
            assert [r.size for r in result.parity][:1] == [SIZE], label
            assert len(result.parity) == (2 if dynamic == "all" else 1), label  # a dynamic graph at a second size
            assert result.onnx.meta.fused_post == (fuse == "all") and result.path.is_file()


@pytest.fixture
def fake_trt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(tensorrt_build, "describe_gpu", lambda index: ("NVIDIA Jetson AGX Orin", "8.7"))


ARTEFACTS = {"onnx": lambda out: [out], "engine": lambda out: [out, out.with_name(out.name + ".json")],
             "triton": lambda out: [out / "tiny_segnet" / "config.pbtxt", out / "tiny_segnet" / "1" / "model.onnx"],
             "deepstream": lambda out: [out / "config_infer_tiny_segnet.txt", out / "deepstream_app_tiny_segnet.txt"]}
"""What each format writes under ``out``; a row without an entry here fails the test below."""


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.name)
def test_every_row_of_the_format_table_writes_its_artefact(fmt, tiny, tmp_path, fake_trt):
    out = tmp_path / ("model" + (fmt.artefact.split()[0] if fmt.artefact.startswith(".") else ""))
    result = export_checkpoint(tiny, fmt.name, ExportOptions(check=True, check_images=2), out=out,
                               log=lambda line: None)
    assert result.format == fmt.name and result.passed and result.parity
    assert result.path == (out / "tiny_segnet" if fmt.name == "triton" else out)  # the model folder in the repository
    for path in ARTEFACTS[fmt.name](out):
        assert path.is_file(), f"--format {fmt.name} did not write {path}"


@pytest.mark.parametrize("fmt", [fmt for fmt in FORMATS if fmt.name != "onnx"], ids=lambda fmt: fmt.name)
def test_a_failed_parity_check_writes_nothing_past_the_onnx_file(fmt, tiny, tmp_path, fake_trt):
    out = tmp_path / ("model" + (".engine" if fmt.name == "engine" else ""))
    options = ExportOptions(check=True, check_images=2, max_abs_error=0.0)  # FP32 rounding alone exceeds 0
    result = export_checkpoint(tiny, fmt.name, options, out=out, log=lambda line: None)
    assert not result.passed and result.path.suffix == ".onnx"
    assert not any(path.exists() for path in ARTEFACTS[fmt.name](out))


def test_cli_flags_are_exactly_the_library_options_with_their_defaults():
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    flags = {action.dest: action.default for action in parser._actions
             if action.dest not in ("help", "checkpoint", "format", "out")}
    assert flags == DEFAULTS
    grouped = set(GRAPH_OPTIONS + CHECK_OPTIONS + ENGINE_OPTIONS + TRITON_OPTIONS + DEEPSTREAM_OPTIONS)
    assert grouped == {f.name for f in fields(ExportOptions)}  # every option is taken by some format
    assert all(dest in fmt.options or dest not in grouped for fmt in FORMATS for dest in fmt.options)
