"""Shared fixtures: tiny ONNX segmentation models with edgeseg metadata, built with ``onnx.helper`` (no torch).

Fixture names are a stable interface for every test module:

``tiny_onnx`` (session scope) -> :class:`TinyOnnxModels` with these ``.onnx`` paths:

    ``static``         float32 NCHW [1, 3, 64, 64] in, float32 logits [1, 4, 64, 64] out (fixed batch of 1)
    ``dynamic``        float32 NCHW [N, 3, H, W] in, logits [N, 4, H, W] out
    ``fused``          uint8 NHWC [N, 64, 64, 3] in -> Cast, normalise -> conv -> ArgMax -> uint8 ids [N, 64, 64]
    ``fused_dynamic``  as ``fused`` with dynamic height and width
    ``no_metadata``    the ``static`` graph without the edgeseg metadata entry

``one_torch_thread``: torch runs on one intra-op thread during the test (modules that use torch turn it on with
``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

Every model is one 1x1 convolution with the fixed weights below over the normalised image, so the expected class
map is known by hand: pure red, green and blue pixels are classes 0, 1, 2 ("red", "green", "blue") and black
pixels are class 3 ("dark"). ``TinyOnnxModels.expected(image)`` computes the map with numpy alone, for images that
are already at the network size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

TINY_CLASSES = ("red", "green", "blue", "dark")
TINY_PALETTE = ((220, 40, 40), (40, 200, 60), (50, 80, 230), (30, 30, 30))
TINY_MEAN = (0.4, 0.5, 0.6)
TINY_STD = (0.2, 0.25, 0.3)
# logits = TINY_WEIGHT @ normalised_rgb + TINY_BIAS: one score per colour channel, plus "dark" that rises as all
# three channels fall. Distinct per-channel mean/std make a swapped channel order or layout show up as wrong ids.
# With this mean/std every difference of two logits of a uint8 pixel is a multiple of 1/765 plus the difference of
# the biases; the biases differ by k/3060 (k = 1..3), so no pixel is ever a tie (margin >= 1/3060), and float32
# rounding in any backend cannot flip a class.
TINY_WEIGHT = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]], dtype=np.float32)
TINY_BIAS = np.array([0, 1 / 3060, 2 / 3060, -2 + 3 / 3060], dtype=np.float32)
TINY_SIZE = (64, 64)

_OPSET = 17
_IR_VERSION = 9


@dataclass(frozen=True)
class TinyOnnxModels:
    """Paths of the tiny models (see the module docstring) and a numpy reference of what they compute."""

    static: Path
    dynamic: Path
    fused: Path
    fused_dynamic: Path
    no_metadata: Path
    classes: tuple[str, ...] = TINY_CLASSES
    palette: tuple[tuple[int, int, int], ...] = TINY_PALETTE
    size: tuple[int, int] = TINY_SIZE

    @staticmethod
    def expected(image: np.ndarray) -> np.ndarray:
        """Class ids the models give for an HxWx3 uint8 RGB image fed at its own size (numpy only)."""
        normalised = (image.astype(np.float64) / 255.0 - np.array(TINY_MEAN)) / np.array(TINY_STD)
        logits = normalised @ TINY_WEIGHT.T.astype(np.float64) + TINY_BIAS
        return np.argmax(logits, axis=-1).astype(np.uint8)


def tiny_metadata(model: str, size: tuple[int | None, int | None], fused: bool, batch: int | None) -> dict:
    """The edgeseg metadata entry of a tiny model, as export writes it."""
    return {
        "model": model,
        "classes": list(TINY_CLASSES),
        "palette": [list(c) for c in TINY_PALETTE],
        "mean": list(TINY_MEAN),
        "std": list(TINY_STD),
        "input_size": list(size),
        "batch": batch,
        "input_name": "images",
        "output_name": "class_ids" if fused else "logits",
        "input_layout": "NHWC" if fused else "NCHW",
        "input_dtype": "uint8" if fused else "float32",
        "output_dtype": "uint8" if fused else "float32",
        "fused_pre": fused,
        "fused_post": fused,
        "precision": "fp32",
        "dataset": "tiny",
    }


def _conv_initializers() -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(TINY_WEIGHT.reshape(4, 3, 1, 1), "weight"),
            numpy_helper.from_array(TINY_BIAS, "bias")]


def build_tiny_model(path: Path, fused: bool, height: int | str, width: int | str, batch: int | str,
                     metadata: dict | None) -> Path:
    """Write one tiny segmentation model; string dims are dynamic axes."""
    if fused:
        inputs = [helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, height, width, 3])]
        outputs = [helper.make_tensor_value_info("class_ids", TensorProto.UINT8, [batch, height, width])]
        shift = np.array(TINY_MEAN, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        scale = 1.0 / (np.array(TINY_STD, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0)
        initializers = _conv_initializers() + [numpy_helper.from_array(shift, "shift"),
                                               numpy_helper.from_array(scale, "scale")]
        nodes = [
            helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["pixels"], ["pixels_nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Sub", ["pixels_nchw", "shift"], ["centred"]),
            helper.make_node("Mul", ["centred", "scale"], ["normalised"]),
            helper.make_node("Conv", ["normalised", "weight", "bias"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["ids64"], axis=1, keepdims=0),
            helper.make_node("Cast", ["ids64"], ["class_ids"], to=TensorProto.UINT8),
        ]
    else:
        inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, height, width])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4, height, width])]
        initializers = _conv_initializers()
        nodes = [helper.make_node("Conv", ["images", "weight", "bias"], ["logits"])]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="edgeseg-tests")
    model.ir_version = _IR_VERSION
    if metadata is not None:
        helper.set_model_props(model, {"edgeseg": json.dumps(metadata)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> TinyOnnxModels:
    root = tmp_path_factory.mktemp("tiny_onnx")
    h, w = TINY_SIZE
    return TinyOnnxModels(
        static=build_tiny_model(root / "tiny_static.onnx", False, h, w, 1,
                                tiny_metadata("tiny-static", (h, w), fused=False, batch=1)),
        dynamic=build_tiny_model(root / "tiny_dynamic.onnx", False, "height", "width", "batch",
                                 tiny_metadata("tiny-dynamic", (None, None), fused=False, batch=None)),
        fused=build_tiny_model(root / "tiny_fused.onnx", True, h, w, "batch",
                               tiny_metadata("tiny-fused", (h, w), fused=True, batch=None)),
        fused_dynamic=build_tiny_model(root / "tiny_fused_dynamic.onnx", True, "height", "width", "batch",
                                       tiny_metadata("tiny-fused-dynamic", (None, None), fused=True, batch=None)),
        no_metadata=build_tiny_model(root / "tiny_no_metadata.onnx", False, h, w, 1, None),
    )


@pytest.fixture
def one_torch_thread():
    """Tests run tiny tensors on a shared, busy 2-core machine, where a second intra-op thread only adds
    synchronisation: small convolutions ran ~20x slower with two spinning threads than with one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
