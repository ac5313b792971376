"""Precision lives in the ONNX graph: an FP16 graph, or INT8 QuantizeLinear/DequantizeLinear pairs.

TensorRT 11 removed the FP16/INT8 builder flags and calibrators; a strongly typed network takes every tensor's type
from the graph. Putting the precision into the ONNX file therefore builds the same engine on TensorRT 10.3
(JetPack 6) and 11.x, and lets ONNX Runtime run (and check) exactly what TensorRT will build.

- FP16: onnxconverter-common's converter with FP32 inputs/outputs kept (``keep_io_types``), so the runtime's
  pre-processing is unchanged. Ops whose FP16 result drifts (reductions, softmax, the argmax input, Resize whose
  scale inputs must stay float) stay in FP32 behind Cast nodes.
- INT8: ONNX Runtime static quantisation in QDQ form, S8S8 with symmetric activations and symmetric per-channel
  weights, so every zero point is 0 as TensorRT's explicit quantisation requires; biases stay float (TensorRT fuses
  them into the convolution). Calibration reads real images prepared exactly like the runtime prepares them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from edgeseg.runtime.errors import BackendUnavailable, ConfigError, DataError
from edgeseg.runtime.metadata import ModelMeta
from edgeseg.runtime.preprocess import normalize, resize_image

FP16_KEEP_FLOAT = ("ArgMax", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                   "ReduceL2", "GlobalAveragePool", "Resize", "Upsample", "TopK", "Range", "CumSum")
"""Op types the FP16 pass leaves in FP32. GlobalAveragePool is a sum over a whole feature map (context branches of
LR-ASPP and ASPP), where FP16 accumulation loses the small differences the attention gates depend on."""

CALIB_METHODS = ("minmax", "entropy", "percentile")


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 copy of an FP32 graph with FP32 inputs and outputs (see the module docstring)."""
    try:
        from onnxconverter_common import float16
    except ImportError as err:
        raise BackendUnavailable("FP16 export needs onnxconverter-common: pip install 'edgeseg[export]' "
                                 "(or pip install onnxconverter-common)") from err
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FLOAT))
    return float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)


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


def load_calibration_images(spec: str, split: str, count: int) -> list[np.ndarray]:
    """``count`` images spread evenly over a dataset split (every k-th image, not the first few of one sequence)."""
    from edgeseg.runtime.datasets import open_dataset

    if count < 1:
        raise ConfigError(f"--calib-images must be positive, got {count}")
    try:
        dataset = open_dataset(spec, split, validate=False)
    except DataError as err:
        raise DataError(f"calibration set {spec!r} (split {split!r}) cannot be opened: {err}") from err
    indices = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    return [dataset.read_image(int(i)) for i in dict.fromkeys(indices.tolist())]


def float_boundary_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes to keep in float: the first and the last convolution and everything after the last one.

    The first convolution sees raw normalised pixels and has 3 input channels (little to gain, much to lose); the
    last one is the classifier, whose logits decide the argmax; after it come the resize to input size and the
    fused argmax, where INT8 would only quantise the answer itself.
    """
    nodes = list(model.graph.node)
    conv_indices = [i for i, node in enumerate(nodes) if node.op_type in ("Conv", "ConvTranspose")]
    if not conv_indices:
        return []
    keep = {conv_indices[0], *range(conv_indices[-1], len(nodes))}
    names = []
    for index in sorted(keep):
        node = nodes[index]
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        names.append(node.name)
    return names


def quantize_int8(model: onnx.ModelProto, reader: ImageCalibrationReader, workdir: Path,
                  calib_method: str = "minmax", keep_float_ends: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """Quantise an FP32 graph to INT8 Q/DQ; returns the graph and the names of the nodes left in float.

    Args:
        model: FP32 graph (simplified, with shapes).
        reader: Calibration batches for ``model``'s input.
        workdir: Scratch folder for the intermediate files ONNX Runtime's tools read and write.
        calib_method: ``minmax``, ``entropy`` or ``percentile`` activation-range estimation.
        keep_float_ends: Keep the first convolution, the classifier and what follows it in float.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if calib_method not in methods:
        raise ConfigError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {calib_method!r}")
    fp32_path, prepared_path, int8_path = workdir / "fp32.onnx", workdir / "prepared.onnx", workdir / "int8.onnx"
    onnx.save(model, str(fp32_path))
    quant_pre_process(str(fp32_path), str(prepared_path), skip_symbolic_shape=False)
    prepared = onnx.load(str(prepared_path))
    excluded = float_boundary_nodes(prepared) if keep_float_ends else []
    onnx.save(prepared, str(prepared_path))  # float_boundary_nodes may have named anonymous nodes
    quantize_static(
        str(prepared_path), str(int8_path), reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=excluded,
        calibrate_method=methods[calib_method],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return onnx.load(str(int8_path)), excluded
