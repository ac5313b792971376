"""OpenVINO backend: runs edgeseg's ``.onnx`` exports through OpenVINO's CPU plugin (x86 and ARM).

Chosen by name (``backend="openvino"``, ``--backend openvino``); ``.onnx`` files open with ONNX Runtime otherwise.
OpenVINO reads the ONNX file itself, the edgeseg card arriving in the model's ``framework`` rt_info, so fused and
unfused, static and dynamic, FP32 and Q/DQ INT8 exports run as exported. The honesty rule of the ORT backend applies
to precision: asked for bf16 on a CPU without BF16 units, OpenVINO quietly computes in f32. So a bf16 request is
checked against the plugin's capabilities before compiling and against the compiled model after, and
:attr:`compute_precision` is read back from the compiled model (and, for INT8 graphs, from which convolutions its
runtime graph executes in 8-bit), never copied from the request.
"""

from __future__ import annotations

import threading

import numpy as np
import openvino

from ..errors import BackendUnavailable, MetadataError, ModelFormatError
from ..metadata import METADATA_KEY, ModelMeta
from .base import Backend, adopt_input_size, default_threads, parse_device

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
"""edgeseg's names for OpenVINO's INFERENCE_PRECISION_HINT values. INT8 is not a hint: it comes from an INT8 export,
whose Q/DQ nodes OpenVINO runs as 8-bit kernels under either hint."""

_EIGHT_BIT = ("i8", "u8")


def cpu_capabilities(core: openvino.Core) -> list[str]:
    """What the CPU plugin says this processor computes natively (``FP32``, ``BF16``, ``INT8``, ...)."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def runtime_precision(compiled: openvino.CompiledModel) -> str:
    """The precision the compiled model really uses: its inference precision, and the share of convolutions the
    runtime graph executes in 8-bit where there are any (a Q/DQ export leaves its first and last convolution float)."""
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    floating = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint) or hint
    convolutions = [str(op.get_rt_info()["runtimePrecision"].astype(str))
                    for op in compiled.get_runtime_model().get_ordered_ops()
                    if str(op.get_rt_info()["layerType"].astype(str)) == "Convolution"]
    quantised = sum(precision in _EIGHT_BIT for precision in convolutions)
    return f"int8 ({quantised}/{len(convolutions)} conv) + {floating}" if quantised else floating


class OpenVinoBackend(Backend):
    """An OpenVINO compiled model on the CPU, one inference request shared by callers that take turns.

    Args:
        path: The ``.onnx`` file, exported by edgeseg (its metadata is required).
        device: ``auto`` or ``cpu``; OpenVINO's GPU/NPU plugins are for Intel devices, not NVIDIA's.
        precision: ``fp32`` (the default, ONNX Runtime's numerics) or ``bf16`` (about 2x faster on CPUs with BF16
            units, issue 17); refused on a CPU without them.
        threads: Inference threads; the same default and ``EDGESEG_ORT_THREADS`` override as the ORT backend.
    """

    name = "openvino"

    def __init__(self, path: str, device: str = "auto", precision: str = "fp32", threads: int | None = None) -> None:
        self.path = str(path)
        if parse_device(device)[0] not in ("auto", "cpu"):
            raise BackendUnavailable(f"the openvino backend runs on the CPU, not {device!r}; use the onnxruntime or "
                                     "tensorrt backend for an NVIDIA GPU")
        if precision not in PRECISION_HINTS:
            raise BackendUnavailable(f"unknown OpenVINO precision hint {precision!r}; choose "
                                     f"{' or '.join(PRECISION_HINTS)} (INT8 comes from an INT8 export, which runs as "
                                     "it is)")
        core = openvino.Core()
        capabilities = cpu_capabilities(core)
        if precision == "bf16" and "BF16" not in capabilities:
            raise BackendUnavailable(
                f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no BF16 units (OpenVINO lists "
                f"{', '.join(capabilities)}), so OpenVINO would compute in fp32 anyway; use precision fp32")
        try:
            model = core.read_model(self.path)
        except RuntimeError as err:
            raise ModelFormatError(f"{self.path} is not a model OpenVINO can read: {_last_line(err)}") from err
        self.meta = _read_meta(model, self.path)
        self._bind_io(model)
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
                  "INFERENCE_NUM_THREADS": threads or default_threads(), "PERFORMANCE_HINT": "LATENCY"}
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as err:
            raise ModelFormatError(f"{self.path}: OpenVINO cannot compile it: {_last_line(err)}") from err
        self.compute_precision = runtime_precision(self.compiled)
        if precision == "bf16" and "bf16" not in self.compute_precision:
            raise BackendUnavailable(f"{self.path}: asked OpenVINO for bf16, the compiled model runs "
                                     f"{self.compute_precision}")
        self.providers = [str(d) for d in self.compiled.get_property("EXECUTION_DEVICES")]
        self.device = "cpu"
        self._request: openvino.InferRequest | None = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def _bind_io(self, model: openvino.Model) -> None:
        """Match the graph's input/output with the metadata and learn the static batch and size it takes."""
        if len(model.inputs) != 1:
            raise MetadataError(f"{self.path}: expected one image input, the graph has {len(model.inputs)}")
        graph_input = model.inputs[0]
        dtype = np.dtype(graph_input.get_element_type().to_dtype())
        if dtype != np.dtype(self.meta.input_dtype):
            raise MetadataError(f"{self.path}: metadata says input dtype {self.meta.input_dtype}, the graph takes "
                                f"{dtype}")
        self.input_dtype = dtype
        names = [output.get_names() for output in model.outputs]
        self._output = next((i for i, n in enumerate(names) if self.meta.output_name in n), 0)
        shape = [d.get_length() if d.is_static else None for d in graph_input.get_partial_shape()]
        adopt_input_size(self.meta, shape, self.path, "metadata", "graph")
        self.max_batch = shape[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self.input_dtype:
            raise ModelFormatError(f"{self.path} takes {self.input_dtype} input, got {batch.dtype}")
        with self._lock:  # one request: its input and output tensors are per-call state
            if self._request is None:
                raise ModelFormatError(f"{self.path}: the OpenVINO backend is closed")
            return self._request.infer([np.ascontiguousarray(batch)])[self._output]

    def close(self) -> None:
        self._request = None
        self.compiled = None


def _read_meta(model: openvino.Model, path: str) -> ModelMeta:
    """The edgeseg card: OpenVINO keeps an ONNX file's metadata_props under the model's ``framework`` rt_info."""
    if not model.has_rt_info(["framework", METADATA_KEY]):
        raise MetadataError(f"{path} carries no edgeseg metadata (no '{METADATA_KEY}' entry in its metadata_props); "
                            "export the checkpoint with 'edgeseg export', which embeds it")
    return ModelMeta.from_json(str(model.get_rt_info(["framework", METADATA_KEY]).astype(str)), source=path)


def _last_line(err: Exception) -> str:
    """OpenVINO's message without the C++ file:line frames it stacks above it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Exception from ")]
    return (useful or lines or [type(err).__name__])[-1]
