"""Precision lives in the ONNX graph: an FP16 graph, or INT8 QuantizeLinear/DequantizeLinear pairs.

TensorRT 11 removed the FP16/INT8 builder flags and calibrators; a strongly typed network takes every tensor's type
from the graph. Putting the precision into the ONNX file therefore builds the same engine on TensorRT 10.3
(JetPack 6) and 11.x, and lets ONNX Runtime run (and check) exactly what TensorRT will build.

- FP16: an own pass (:func:`convert_to_fp16`) with FP32 inputs/outputs kept, so the runtime's pre-processing is
  unchanged. Only an allow-list of ops runs in FP16; ops whose FP16 result drifts (reductions, softmax, the argmax
  input, Resize) stay in FP32 behind Cast nodes. (onnxconverter-common's converter was tried first; with
  ``keep_io_types`` its cast clean-up raises on graphs whose output comes from a blocked op, as Resize is here.)
- INT8: ONNX Runtime static quantisation in QDQ form, S8S8 with symmetric activations and symmetric per-channel
  weights, so every zero point is 0 as TensorRT's explicit quantisation requires; biases stay float (TensorRT fuses
  them into the convolution). Calibration reads real images prepared exactly like the runtime prepares them.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx

from edgeseg.runtime.errors import ConfigError, DataError
from edgeseg.runtime.metadata import ModelMeta
from edgeseg.runtime.preprocess import normalize, resize_image

FP16_OPS = frozenset({
    "Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Add", "Sub", "Mul", "Div", "Concat", "MaxPool", "AveragePool", "Reshape", "Transpose",
    "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity", "Pad", "Gemm", "MatMul", "Expand", "Tile",
    "DepthToSpace", "SpaceToDepth",
})
"""Op types the FP16 pass runs in half precision: convolutions, their elementwise neighbours and data movement.

Everything else stays FP32 behind Cast nodes: reductions and GlobalAveragePool (sums over whole feature maps, where
FP16 accumulation loses the small differences attention gates depend on), Softmax, ArgMax (its input is the
decision itself), Resize (its scale inputs must stay float) and any op not listed, so an unfamiliar op is never
silently run at lower precision."""

FP16_MAX = 65504.0
CALIB_METHODS = ("minmax", "entropy", "percentile")
# INT8 Q/DQ flavours. "tensorrt": signed 8-bit activations with zero point 0, the only form TensorRT's explicit
# quantization accepts. "cpu": unsigned 8-bit activations with a free zero point, which ONNX Runtime's x86 kernels
# run fast (DeepLabV3-R18 at 180x240 on an AMD EPYC: 0.36x the FP32 latency, against 0.91x for "tensorrt";
# benchmarks/results/export_precision.md).
INT8_SCHEMES = ("tensorrt", "cpu")


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 copy of an FP32 graph whose inputs and outputs stay FP32 (see :data:`FP16_OPS`).

    Walks the nodes in order, tracking each float tensor's current type, and inserts one Cast wherever a node needs
    its input in the other precision. Initializers read only by FP16 nodes are stored in FP16 (halving the file);
    shared ones stay FP32 and are cast. The runtime's input preparation therefore does not change with precision.
    """
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    float_tensors = {value.name for value in [*graph.input, *graph.output, *graph.value_info]
                     if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    float_tensors |= {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    half = onnx.TensorProto.FLOAT16
    single = onnx.TensorProto.FLOAT
    tensor_type: dict[str, int] = {}
    for init in graph.initializer:
        users = readers.get(init.name, [])
        if init.data_type == single and users and all(node.op_type in FP16_OPS for node in users):
            values = np.clip(onnx.numpy_helper.to_array(init), -FP16_MAX, FP16_MAX).astype(np.float16)
            init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
            tensor_type[init.name] = half

    nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def typed(name: str, wanted: int) -> str:
        if tensor_type.get(name, single) == wanted:
            return name
        if (name, wanted) not in casts:
            cast_name = f"{name}_as_{'fp16' if wanted == half else 'fp32'}"
            nodes.append(onnx.helper.make_node("Cast", [name], [cast_name], to=wanted, name=cast_name))
            casts[(name, wanted)] = cast_name
        return casts[(name, wanted)]

    for node in graph.node:
        wanted = half if node.op_type in FP16_OPS else single
        for index, name in enumerate(node.input):
            if name in float_tensors:
                node.input[index] = typed(name, wanted)
        nodes.append(node)
        for name in node.output:
            if name in float_tensors:
                tensor_type[name] = wanted
    for output in graph.output:
        if tensor_type.get(output.name) == half:
            internal = f"{output.name}_fp16"
            for node in nodes:
                node.output[:] = [internal if name == output.name else name for name in node.output]
                node.input[:] = [internal if name == output.name else name for name in node.input]
            nodes.append(onnx.helper.make_node("Cast", [internal], [output.name], to=single,
                                               name=f"{output.name}_as_fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # the recorded types are stale; runtimes infer them again
    return model


class ImageCalibrationReader:
    """Feeds calibration batches to ONNX Runtime's quantiser, prepared exactly as the runtime prepares images.

    Images are resized with :func:`~edgeseg.runtime.preprocess.resize_image` and normalised with
    :func:`~edgeseg.runtime.preprocess.normalize` (or kept as uint8 NHWC for graphs with fused pre-processing), so
    the activation ranges the quantiser measures are the ranges the deployed model will see.

    Args:
        images: RGB uint8 images of any size.
        meta: Metadata of the graph being quantised (normalisation, layout, dtype, fixed batch).
        size: ``(height, width)`` to feed.
    """

    def __init__(self, images: list[np.ndarray], meta: ModelMeta, size: tuple[int, int]) -> None:
        if not images:
            raise DataError("no calibration images")
        self.meta = meta
        self.size = size
        self.batch = meta.batch or 1
        self.images = images
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def _prepare(self, images: list[np.ndarray]) -> np.ndarray:
        pixels = np.stack([resize_image(image, self.size) for image in images])
        if self.meta.fused_pre:
            return np.ascontiguousarray(pixels)
        return normalize(pixels, self.meta.mean, self.meta.std)

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        usable = len(self.images) - len(self.images) % self.batch
        if usable == 0:
            raise DataError(f"{len(self.images)} calibration images cannot fill one batch of {self.batch}")
        for start in range(0, usable, self.batch):
            yield {self.meta.input_name: self._prepare(self.images[start:start + self.batch])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self.batches()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


def load_calibration_images(spec: str, split: str, count: int, what: str = "calibration set") -> list[np.ndarray]:
    """``count`` images spread evenly over a dataset split (every k-th image, not the first few of one sequence).

    ``what`` names the set in errors (the parity check reads its images through here too).
    """
    from edgeseg.runtime.datasets import open_dataset

    if count < 1:
        raise ConfigError(f"the {what} needs a positive number of images, got {count}")
    try:
        dataset = open_dataset(spec, split, validate=False)
    except DataError as err:
        raise DataError(f"{what} {spec!r} (split {split!r}) cannot be opened: {err}") from err
    indices = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    return [dataset.read_image(int(i)) for i in dict.fromkeys(indices.tolist())]


def name_nodes(model: onnx.ModelProto) -> None:
    """Name every anonymous node (``<op>_<index>``): quantize_static excludes nodes by name only."""
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"


def float_boundary_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes to keep in float: the first and the last convolution and everything after the last one.

    The first convolution sees raw normalised pixels and has 3 input channels (little to gain, much to lose); the
    last one is the classifier, whose logits decide the argmax; after it come the resize to input size and the
    fused argmax, where INT8 would only quantise the answer itself. Expects named nodes (:func:`name_nodes`).
    """
    nodes = list(model.graph.node)
    conv_indices = [i for i, node in enumerate(nodes) if node.op_type in ("Conv", "ConvTranspose")]
    if not conv_indices:
        return []
    keep = {conv_indices[0], *range(conv_indices[-1], len(nodes))}
    return [nodes[index].name for index in sorted(keep)]


LAYER_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def layer_groups(model: onnx.ModelProto, boundary: list[str]) -> dict[str, list[str]]:
    """The quantised nodes in layers: each weighted op (named by it) with the nodes that follow it in graph order
    up to the next one (its activation, residual add, resize...), so keeping a layer in float keeps all of it.

    Nodes in ``boundary`` (always float) and those between a boundary node and the next weighted op belong to no
    layer.
    """
    groups: dict[str, list[str]] = {}
    current: str | None = None
    skip = set(boundary)
    for node in model.graph.node:
        if node.name in skip:
            current = None
            continue
        if node.op_type in LAYER_OPS:
            current = node.name
            groups[current] = []
        if current is not None:
            groups[current].append(node.name)
    return groups


class Int8Quantizer:
    """Quantises one FP32 graph to INT8 Q/DQ, as often as asked, with chosen nodes kept in float.

    The INT8 budget (:mod:`.int8_budget`) quantises the same graph dozens of times with different nodes excluded.
    Calibration ranges do not depend on the exclusions, so where ONNX Runtime's ``quantize_static`` takes a
    ``calibration_cache_path`` (1.32 and later) they are measured once and reused; older releases calibrate again
    on every call (same ranges, slower).

    Args:
        model: FP32 graph (simplified, with shapes).
        reader: Calibration batches for ``model``'s input.
        workdir: Scratch folder for the intermediate files ONNX Runtime's tools read and write.
        calib_method: ``minmax``, ``entropy`` or ``percentile`` activation-range estimation.
        scheme: ``tensorrt`` (S8S8, symmetric) or ``cpu`` (U8S8, asymmetric activations); see ``INT8_SCHEMES``.

    Attributes:
        prepared: The graph as quantised (after ONNX Runtime's pre-processing), every node named.
        boundary: Nodes always kept in float (:func:`float_boundary_nodes`).
    """

    def __init__(self, model: onnx.ModelProto, reader: ImageCalibrationReader, workdir: Path,
                 calib_method: str = "minmax", scheme: str = "tensorrt") -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if calib_method not in CALIB_METHODS:
            raise ConfigError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {calib_method!r}")
        if scheme not in INT8_SCHEMES:
            raise ConfigError(f"--int8-scheme must be one of {', '.join(INT8_SCHEMES)}, got {scheme!r}")
        self.reader, self.calib_method, self.scheme = reader, calib_method, scheme
        fp32_path, self._prepared_path = workdir / "fp32.onnx", workdir / "prepared.onnx"
        self._int8_path, self._ranges_path = workdir / "int8.onnx", workdir / "calibration_ranges.json"
        onnx.save(model, str(fp32_path))
        quant_pre_process(str(fp32_path), str(self._prepared_path), skip_symbolic_shape=False)
        self.prepared = onnx.load(str(self._prepared_path))
        name_nodes(self.prepared)
        self.boundary = float_boundary_nodes(self.prepared)
        onnx.save(self.prepared, str(self._prepared_path))

    def quantize(self, keep_float: Sequence[str] = ()) -> tuple[onnx.ModelProto, list[str]]:
        """The INT8 graph with the boundary nodes and ``keep_float`` in float; returns it and all float nodes."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        cache = ({"calibration_cache_path": str(self._ranges_path)}
                 if "calibration_cache_path" in inspect.signature(quantize_static).parameters else {})
        for_cpu = self.scheme == "cpu"
        excluded = [*self.boundary, *keep_float]
        self.reader.rewind()
        quantize_static(
            str(self._prepared_path), str(self._int8_path), self.reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8 if for_cpu else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=excluded,
            calibrate_method=methods[self.calib_method],
            extra_options={"ActivationSymmetric": not for_cpu, "WeightSymmetric": True, "QuantizeBias": False},
            **cache,
        )
        return onnx.load(str(self._int8_path)), excluded
