"""TensorRT backend: runs serialized engines (``.engine`` / ``.plan``) built by ``edgeseg export``.

An engine file holds no class list; its JSON sidecar (:mod:`.engine_sidecar`) carries the model card and the
TensorRT version and GPU that built it. Engines only run with the TensorRT version and on the GPU model that built
them; the sidecar lets this module say so in one line instead of surfacing TensorRT's serialization assertion.

Written against the TensorRT 10/11 name-based API (``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), which TensorRT 11 keeps unchanged; ``make test`` type-checks this file against NVIDIA's
``tensorrt-stubs``. Device and pinned host memory come from ``cuda-python``, never torch: the runtime must stay
torch-free. Both packages are imported only when an engine is opened.
"""

from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailable, MetadataError, ModelFormatError
from .base import Backend, adopt_input_size, parse_device
from .engine_sidecar import read_sidecar

if TYPE_CHECKING:  # the annotations below name TensorRT's classes, checked against tensorrt-stubs (make test)
    import tensorrt as trt

GPU_EXTRA = "pip install 'edgeseg[gpu]' (tensorrt and cuda-python; on Jetson use the JetPack TensorRT)"
TENSORRT_HINT = ("install TensorRT: pip install 'edgeseg[gpu]' on a desktop GPU host, or on Jetson the JetPack "
                 "package python3-libnvinfer (apt install python3-libnvinfer)")

TRT_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}
"""TensorRT ``DataType`` member names -> numpy; BF16, FP8 and INT4 have no numpy type and are refused at load."""


def require_tensorrt(purpose: str) -> None:
    """Fail with one line naming the install when the real ``tensorrt`` package is absent.

    Installing the ``tensorrt-stubs`` package (type stubs only) leaves a bare ``tensorrt`` folder that imports as an
    empty namespace package, so a successful import alone does not mean TensorRT is there: the real module has a
    ``__version__``.
    """
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailable(f"{purpose} needs the tensorrt package, which is not installed here ({err}); "
                                 f"{TENSORRT_HINT}") from None
    if not getattr(tensorrt, "__version__", None):
        raise BackendUnavailable(f"{purpose} needs the tensorrt package, but only its type stubs are installed "
                                 f"here ({getattr(tensorrt, '__path__', 'tensorrt')}); {TENSORRT_HINT}")


def _version_triple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _gpu_key(name: str) -> str:
    return " ".join(name.lower().replace("nvidia", "").split())


def check_engine_compatibility(engine_path: str | Path, built_version: str, built_gpu: str, running_version: str,
                               running_gpu: str) -> None:
    """Refuse an engine built by another TensorRT release (major.minor.patch) or on another GPU model."""
    problems = []
    if _version_triple(built_version) != _version_triple(running_version):
        problems.append(f"TensorRT {built_version} built it, this machine has {running_version}")
    if _gpu_key(built_gpu) != _gpu_key(running_gpu):
        problems.append(f"it was built on {built_gpu!r}, this GPU is {running_gpu!r}")
    if problems:
        raise ModelFormatError(f"{engine_path} cannot run here: {'; '.join(problems)}. TensorRT engines only run "
                               "with the TensorRT version and GPU model that built them; rebuild it on this machine "
                               "from the ONNX export with 'edgeseg export'")


def numpy_dtype(trt_dtype) -> np.dtype:
    """TensorRT ``DataType`` -> numpy dtype, by member name so that the mapping needs no TensorRT to test."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name not in TRT_DTYPES:
        raise ModelFormatError(f"engine tensor type {name} has no numpy equivalent; export with float32, float16, "
                               "uint8 or int32/int64 inputs and outputs")
    return np.dtype(TRT_DTYPES[name])


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """A ``Dims`` as a tuple of ints (-1 = dynamic), by index: the stubs declare no ``__iter__`` on it."""
    return tuple(int(dims[axis]) for axis in range(len(dims)))


@dataclass(frozen=True)
class TensorInfo:
    """One engine input or output as the engine declares it; -1 marks a dynamic dimension."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]


def describe_tensors(engine: trt.ICudaEngine) -> list[TensorInfo]:
    """The engine's I/O tensors in binding order, via the name-based API of TensorRT 10+ (unchanged in 11)."""
    import tensorrt as trt

    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        tensors.append(TensorInfo(
            name=name,
            is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            dtype=numpy_dtype(engine.get_tensor_dtype(name)),
            shape=dims_tuple(engine.get_tensor_shape(name)),
        ))
    return tensors


def check_input_shape(tensor: TensorInfo, shape: tuple[int, ...]) -> None:
    """A batch must have the engine input's rank and match every static dimension."""
    if len(shape) != len(tensor.shape) or any(d != -1 and d != s for d, s in zip(tensor.shape, shape)):
        declared = "x".join("?" if d == -1 else str(d) for d in tensor.shape)
        raise ModelFormatError(f"engine input {tensor.name!r} takes shape {declared}, got {'x'.join(map(str, shape))}")


class CudaRuntime:
    """The few CUDA runtime calls the backend needs, through cuda-python, with errors turned into exceptions."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart  # pyright: ignore[reportMissingImports] (no stubs here)
        except ImportError:
            try:
                from cuda import cudart  # pyright: ignore[reportMissingImports] (cuda-python before 12.6)
            except ImportError as err:
                raise BackendUnavailable(f"TensorRT engines need the CUDA runtime bindings: {GPU_EXTRA}") from err
        self.cudart = cudart

    def _check(self, result) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.cudart.cudaError_t.cudaSuccess:
            message = self.cudart.cudaGetErrorString(err)[1]
            raise BackendUnavailable(f"CUDA error: {message.decode() if isinstance(message, bytes) else message}")
        return values[0] if len(values) == 1 else values

    def set_device(self, index: int) -> None:
        self._check(self.cudart.cudaSetDevice(index))

    def device_name(self, index: int) -> str:
        name = self._check(self.cudart.cudaGetDeviceProperties(index)).name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()

    def stream(self):
        return self._check(self.cudart.cudaStreamCreate())

    def destroy_stream(self, stream) -> None:
        self._check(self.cudart.cudaStreamDestroy(stream))

    def synchronize(self, stream) -> None:
        self._check(self.cudart.cudaStreamSynchronize(stream))

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(max(1, nbytes))))

    def free(self, pointer: int) -> None:
        self._check(self.cudart.cudaFree(pointer))

    def pinned_array(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, np.ndarray]:
        """Page-locked host memory seen as a numpy array: copies from it overlap and run at full bus speed."""
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        pointer = int(self._check(self.cudart.cudaMallocHost(nbytes)))
        raw = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_uint8)), shape=(nbytes,))
        return pointer, raw[: int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

    def free_pinned(self, pointer: int) -> None:
        self._check(self.cudart.cudaFreeHost(pointer))

    def copy_to_device(self, device_pointer: int, host: np.ndarray, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(device_pointer, host.ctypes.data, host.nbytes, kind, stream))

    def copy_to_host(self, host: np.ndarray, device_pointer: int, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, device_pointer, host.nbytes, kind, stream))


class EngineRunner:
    """Executes one engine on one stream; buffers are allocated per input shape and reused while it stays the same.

    Kept apart from TensorRT loading so that shape handling, buffer management and copies can be tested with a
    fake engine and fake CUDA calls.

    Args:
        engine: A deserialized ``ICudaEngine`` (or a stand-in with the same methods).
        cuda: A :class:`CudaRuntime` (or stand-in).
        input_name: Preferred input tensor (from the metadata); the only input is taken when it is absent.
        output_name: The output to return; others (auxiliary heads) get device buffers but are not copied back.
    """

    def __init__(self, engine: trt.ICudaEngine, cuda: CudaRuntime, input_name: str, output_name: str) -> None:
        self.engine = engine
        self.cuda = cuda
        self.tensors = describe_tensors(engine)
        inputs = [t for t in self.tensors if t.is_input]
        outputs = [t for t in self.tensors if not t.is_input]
        if len(inputs) != 1 or not outputs:
            raise ModelFormatError(f"expected an engine with one input and at least one output, got inputs "
                                   f"{[t.name for t in inputs]} and outputs {[t.name for t in outputs]}")
        self.input = inputs[0]
        if input_name != self.input.name and input_name in {t.name for t in self.tensors}:
            raise MetadataError(f"metadata input {input_name!r} is an output of the engine")
        self.output = next((t for t in outputs if t.name == output_name), outputs[0])
        self._context: trt.IExecutionContext | None = engine.create_execution_context()
        self.stream = cuda.stream()
        self._shape: tuple[int, ...] | None = None
        self._lock = threading.Lock()  # one context and one set of buffers: concurrent callers take turns
        self._device: dict[str, int] = {}
        self._pinned: dict[str, tuple[int, np.ndarray]] = {}

    @property
    def context(self) -> trt.IExecutionContext:
        if self._context is None:
            raise ModelFormatError("the TensorRT engine runner is closed")
        return self._context

    @property
    def max_batch(self) -> int | None:
        """The static batch, or the largest one the engine's first optimization profile allows."""
        declared = self.input.shape[0]
        if declared != -1:
            return declared
        return int(self.engine.get_tensor_profile_shape(self.input.name, 0)[2][0])

    def _release(self) -> None:
        for pointer in self._device.values():
            self.cuda.free(pointer)
        for pointer, _ in self._pinned.values():
            self.cuda.free_pinned(pointer)
        self._device, self._pinned, self._shape = {}, {}, None

    def _allocate(self, shape: tuple[int, ...]) -> None:
        self._release()
        if not self.context.set_input_shape(self.input.name, shape):
            raise ModelFormatError(f"engine input {self.input.name!r} rejects shape {shape}: outside its "
                                   "optimization profile")
        for tensor in self.tensors:
            tensor_shape = shape if tensor.is_input else dims_tuple(self.context.get_tensor_shape(tensor.name))
            if any(d < 0 for d in tensor_shape):
                raise ModelFormatError(f"engine output {tensor.name!r} has a data-dependent shape {tensor_shape}")
            pointer = self.cuda.malloc(int(np.prod(tensor_shape)) * tensor.dtype.itemsize)
            self._device[tensor.name] = pointer
            self.context.set_tensor_address(tensor.name, pointer)
            if tensor.is_input or tensor is self.output:
                self._pinned[tensor.name] = self.cuda.pinned_array(tensor_shape, tensor.dtype)
        self._shape = shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self.input.dtype:
            raise ModelFormatError(f"engine input {self.input.name!r} takes {self.input.dtype}, got {batch.dtype}")
        shape = tuple(batch.shape)
        check_input_shape(self.input, shape)
        with self._lock:
            return self._run_locked(batch, shape)

    def _run_locked(self, batch: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if shape != self._shape:
            self._allocate(shape)
        host_input = self._pinned[self.input.name][1]
        np.copyto(host_input, batch)
        self.cuda.copy_to_device(self._device[self.input.name], host_input, self.stream)
        if not self.context.execute_async_v3(int(self.stream)):
            raise ModelFormatError("TensorRT failed to enqueue the engine (see the TensorRT log above)")
        host_output = self._pinned[self.output.name][1]
        self.cuda.copy_to_host(host_output, self._device[self.output.name], self.stream)
        self.cuda.synchronize(self.stream)
        # The pinned buffer is overwritten by the next call; the caller gets its own array.
        return host_output.copy()

    def close(self) -> None:
        with self._lock:
            self._release()
            if self._context is not None:
                self.cuda.destroy_stream(self.stream)
                self._context = None  # the context goes before the engine, as TensorRT requires


class TensorRTBackend(Backend):
    """A TensorRT engine with its sidecar metadata, on GPU ``N`` of ``cuda:N`` / ``tensorrt:N`` (default 0)."""

    name = "tensorrt"

    def __init__(self, path: str, device: str = "auto") -> None:
        self.path = str(path)
        kind, index = parse_device(device)
        if kind == "cpu":
            raise BackendUnavailable(f"{self.path}: TensorRT engines run only on an NVIDIA GPU, not on the cpu; "
                                     "run the ONNX export for CPU inference")
        sidecar = read_sidecar(self.path)
        self.meta = sidecar.meta
        require_tensorrt(f"{self.path} is a TensorRT engine: running it")
        import tensorrt as trt

        cuda = CudaRuntime()
        cuda.set_device(index)
        check_engine_compatibility(self.path, sidecar.tensorrt_version, sidecar.gpu, trt.__version__,
                                   cuda.device_name(index))

        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(Path(self.path).read_bytes())
        if engine is None:  # the stubs say ICudaEngine; the binding returns None when deserialization fails
            raise ModelFormatError(f"{self.path}: TensorRT could not deserialize the engine (see its log above)")
        self._engine: trt.ICudaEngine | None = engine
        runner = EngineRunner(engine, cuda, self.meta.input_name, self.meta.output_name)
        self._runner: EngineRunner | None = runner
        self._apply_engine_io(runner)
        self.device = f"cuda:{index}"
        self.providers = [f"tensorrt-{trt.__version__}:cuda:{index}"]

    def _apply_engine_io(self, runner: EngineRunner) -> None:
        """The engine is authoritative for dtype and static size; metadata that contradicts it is an error."""
        tensor = runner.input
        if tensor.dtype != np.dtype(self.meta.input_dtype):
            raise MetadataError(f"{self.path}: sidecar says input dtype {self.meta.input_dtype}, the engine takes "
                                f"{tensor.dtype}")
        adopt_input_size(self.meta, tensor.shape, self.path, "sidecar", "engine")
        self.max_batch = runner.max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._runner is None:
            raise ModelFormatError(f"{self.path}: the TensorRT backend is closed")
        return self._runner.run(np.ascontiguousarray(batch))

    def close(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.close()
            self._runner = None
        self._engine = None
