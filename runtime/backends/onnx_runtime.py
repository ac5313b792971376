"""ONNX Runtime backend: runs ``.onnx`` exports on the CPU, CUDA or ONNX Runtime's TensorRT provider.

Two traps shape this module. First, ``onnxruntime.get_available_providers()`` lists the providers compiled into the
wheel even when their CUDA/cuDNN/TensorRT libraries are missing; the session then quietly runs on the CPU. So the
providers of the *created* session are compared with the request, and a fallback is an error (or, with
``device="auto"``, a warning). Second, a plain ``session.run`` copies inputs and outputs across the bus inside every
call; on a GPU the backend binds them with IO binding instead, so only the one output copy to the host remains.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from ..errors import BackendUnavailable, MetadataError, ModelFormatError
from ..metadata import METADATA_KEY, ModelMeta
from .base import Backend, adopt_input_size, default_threads, parse_device

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
GPU_EPS = (TENSORRT_EP, CUDA_EP)

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}

_LOAD_ERRORS = (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.NoSuchFile,
                ort_errors.NotImplemented, ort_errors.InvalidArgument, ort_errors.RuntimeException)


def trt_cache_dir() -> Path:
    """Where ONNX Runtime's TensorRT provider keeps built engines and timing caches between runs.

    Building engines takes minutes; without a cache every process start pays it again.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeseg" / "ort-tensorrt"


def provider_request(device: str, available: list[str]) -> list[str | tuple[str, dict]]:
    """The provider list to ask ONNX Runtime for, best first, as chosen by ``device``.

    ``auto`` takes TensorRT, CUDA, CPU among the available ones. An explicit GPU device that the installed
    onnxruntime cannot provide at all is an error right away, before any session is built.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return [CPU_EP]
    if kind == "auto":
        wanted = [ep for ep in GPU_EPS if ep in available]
    else:
        wanted = [TENSORRT_EP, CUDA_EP] if kind == "tensorrt" else [CUDA_EP]
        missing = [ep for ep in wanted if ep not in available]
        if missing:
            raise BackendUnavailable(
                f"device {device!r} needs {' and '.join(missing)}, but this onnxruntime offers only "
                f"{', '.join(available)}; install the GPU build (pip install 'edgeseg[gpu]', which brings "
                "onnxruntime-gpu; uninstall the CPU 'onnxruntime' package first, they share one import name)")
    providers: list[str | tuple[str, dict]] = []
    for ep in wanted:
        if ep == TENSORRT_EP:
            cache = str(trt_cache_dir())
            providers.append((ep, {"device_id": index, "trt_engine_cache_enable": True,
                                   "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
                                   "trt_timing_cache_path": cache}))
        else:
            providers.append((ep, {"device_id": index}))
    return [*providers, CPU_EP]


def read_onnx_meta(session, path: str) -> ModelMeta:
    """The edgeseg model card stored in the ONNX file's metadata."""
    custom = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in custom:
        raise MetadataError(
            f"{path} carries no edgeseg metadata (no '{METADATA_KEY}' entry in its metadata_props), so it was not "
            "exported by edgeseg and the runtime cannot know its classes, palette or normalisation; export the "
            "checkpoint with 'edgeseg export', which embeds them")
    return ModelMeta.from_json(custom[METADATA_KEY], source=path)


class OnnxRuntimeBackend(Backend):
    """An ``onnxruntime.InferenceSession`` on the providers that ``device`` asks for.

    Args:
        path: The ``.onnx`` file, exported by edgeseg (its metadata is required).
        device: ``auto`` (best available, warn on fallback), ``cpu``, ``cuda[:N]`` or ``tensorrt[:N]`` (fail when
            the session does not really run there).
        threads: Intra-op CPU threads; defaults to the usable cores (see :func:`~.base.default_threads`).
        spinning: Whether idle intra-op workers spin-wait for the next task instead of sleeping. Off by default: a
            video pipeline's decode/encode threads need those cycles; spinning shortens each call of a small model
            (issue 17), so ``edgeseg`` chooses it per command (``--ort-spinning``).
    """

    name = "onnxruntime"

    def __init__(self, path: str, device: str = "auto", threads: int | None = None, spinning: bool = False) -> None:
        self.path = str(path)
        requested = provider_request(device, onnxruntime.get_available_providers())
        requested_names = [p if isinstance(p, str) else p[0] for p in requested]
        if any(ep in GPU_EPS for ep in requested_names) and hasattr(onnxruntime, "preload_dlls"):
            # CUDA/cuDNN from the nvidia-* pip wheels; directory="" keeps it from looking at torch.
            onnxruntime.preload_dlls(directory="")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = onnxruntime.InferenceSession(self.path, sess_options=options, providers=requested)
        except ort_errors.EPFail as err:
            raise BackendUnavailable(f"{self.path}: execution provider failed to start ({err})") from err
        except _LOAD_ERRORS as err:
            raise ModelFormatError(f"{self.path} is not a loadable ONNX model: {err}") from err

        self.providers = list(self.session.get_providers())
        self._check_fallback(device, requested_names)
        _, gpu_index = parse_device(device)
        self.gpu_index = gpu_index
        if TENSORRT_EP in self.providers:
            self.device = f"tensorrt:{gpu_index}"
        elif CUDA_EP in self.providers:
            self.device = f"cuda:{gpu_index}"
        else:
            self.device = "cpu"

        self.meta = read_onnx_meta(self.session, self.path)
        self._bind_io()

    def _check_fallback(self, device: str, requested: list[str]) -> None:
        lost = [ep for ep in requested if ep in GPU_EPS and ep not in self.providers]
        if not lost:
            return
        message = (f"{self.path}: asked for {', '.join(lost)} but the session runs on {', '.join(self.providers)}; "
                   "the provider libraries (CUDA, cuDNN or TensorRT) failed to load, see onnxruntime's log above")
        if parse_device(device)[0] == "auto":
            warnings.warn(message + "; continuing on what is available", RuntimeWarning, stacklevel=3)
        else:
            raise BackendUnavailable(message)

    def _bind_io(self) -> None:
        """Match the graph's inputs/outputs with the metadata and learn the static batch and size it takes."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        graph_input = inputs.get(self.meta.input_name)
        if graph_input is None:
            if len(inputs) != 1:
                raise MetadataError(f"{self.path}: metadata names input {self.meta.input_name!r}, the graph has "
                                    f"{sorted(inputs)}")
            graph_input = next(iter(inputs.values()))
        self.input_name = graph_input.name
        self.output_name = self.meta.output_name if self.meta.output_name in outputs else outputs[0]

        self.input_dtype = ORT_TYPES.get(graph_input.type)
        if self.input_dtype is None or np.dtype(self.input_dtype) != np.dtype(self.meta.input_dtype):
            raise MetadataError(f"{self.path}: metadata says input dtype {self.meta.input_dtype}, the graph takes "
                                f"{graph_input.type}")
        shape = list(graph_input.shape)
        adopt_input_size(self.meta, shape, self.path, "metadata", "graph")
        batch = shape[0]
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self.input_dtype:
            raise ModelFormatError(f"{self.path} takes {np.dtype(self.input_dtype)} input, got {batch.dtype}")
        if self.device == "cpu":
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        # One binding per call: sessions are thread-safe, a shared binding would not be (the HTTP server runs
        # requests concurrently). Input is copied to the GPU at bind time, the output stays there until copied out.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        binding.bind_output(self.output_name, "cuda", self.gpu_index)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def close(self) -> None:
        self.session = None
