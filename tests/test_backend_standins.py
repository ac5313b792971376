"""The TensorRT and Triton backends without TensorRT, a GPU or a server: engine sidecars, the engine runner and the
backend through the Segmenter on stand-in modules (whose names tests/test_tensorrt_stubs.py checks against NVIDIA's
stubs), and the Triton client on a fake client module. The real Triton server is in test_triton_server.py.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import types

import numpy as np
import pytest

from edgeseg.runtime import ModelMeta, Segmenter
from edgeseg.runtime.backends import tensorrt_engine
from edgeseg.runtime.backends.base import adopt_input_size
from edgeseg.runtime.backends.engine_sidecar import read_sidecar
from edgeseg.runtime.backends.tensorrt_engine import EngineRunner, check_engine_compatibility, numpy_dtype
from edgeseg.runtime.backends.triton_client import parse_triton_uri
from edgeseg.runtime.errors import BackendUnavailable, MetadataError, ModelFormatError

from conftest import TINY_BIAS, TINY_CLASSES, TINY_WEIGHT, tiny_metadata
from test_segmenter import REAL_INFERENCE_SESSION, random_image

# --- TensorRT, without TensorRT -------------------------------------------------------------------------------


def write_engine(tmp_path, sidecar_name="tiny.engine.json", **overrides):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"serialized plan")
    sidecar = {**tiny_metadata("tiny-engine", (None, None), fused=False, batch=None),
               "tensorrt_version": "10.3.0.26", "gpu": "NVIDIA Orin", **overrides}
    (tmp_path / sidecar_name).write_text(json.dumps({k: v for k, v in sidecar.items() if v is not None}))
    return engine


@pytest.mark.parametrize("sidecar_name", ["tiny.engine.json", "tiny.json"])
def test_sidecar_is_read_from_either_name(tmp_path, sidecar_name):
    sidecar = read_sidecar(write_engine(tmp_path, sidecar_name))
    meta = sidecar.meta
    assert isinstance(meta, ModelMeta) and meta.classes == list(TINY_CLASSES)
    assert (sidecar.tensorrt_version, sidecar.gpu) == ("10.3.0.26", "NVIDIA Orin")
    assert sidecar.path == tmp_path / sidecar_name and sidecar.profile_max_batch is None
    assert "tensorrt_version" not in meta.extra


def test_sidecar_errors(tmp_path):
    engine = tmp_path / "lonely.plan"
    engine.write_bytes(b"x")
    with pytest.raises(MetadataError, match="lonely.plan.json"):
        read_sidecar(engine)
    (tmp_path / "lonely.plan.json").write_text("{not json")
    with pytest.raises(MetadataError, match="unreadable"):
        read_sidecar(engine)
    with pytest.raises(MetadataError, match="tensorrt_version"):
        read_sidecar(write_engine(tmp_path, tensorrt_version=None))
    with pytest.raises(MetadataError, match=r"tiny\.engine\.json: metadata misses required keys \['classes'\]"):
        read_sidecar(write_engine(tmp_path, classes=None))


def test_engine_compatibility_check():
    check_engine_compatibility("m.engine", "10.3.0.26", "NVIDIA Orin", "10.3.0", "Orin")
    with pytest.raises(ModelFormatError, match=r"TensorRT 10\.3\.0\.26 built it, this machine has 11\.4\.0"):
        check_engine_compatibility("m.engine", "10.3.0.26", "Orin", "11.4.0", "Orin")
    with pytest.raises(ModelFormatError, match="RTX 4090"):
        check_engine_compatibility("m.engine", "10.3.0", "NVIDIA GeForce RTX 4090", "10.3.0", "NVIDIA H100 PCIe")


def test_tensorrt_dtype_mapping():
    member = types.SimpleNamespace
    assert numpy_dtype(member(name="FLOAT")) == np.float32
    assert numpy_dtype(member(name="HALF")) == np.float16
    assert numpy_dtype(member(name="UINT8")) == np.uint8
    assert numpy_dtype("DataType.INT64") == np.int64
    with pytest.raises(ModelFormatError, match="BF16"):
        numpy_dtype(member(name="BF16"))


class FakeCuda:
    """Device memory as numpy arrays keyed by fake pointers; counts allocations to check buffer reuse."""

    def __init__(self, device_name="Orin"):
        self.memory, self.pinned, self.next_pointer = {}, {}, 4096
        self.allocations, self.freed, self.synchronized = 0, 0, 0
        self.name = device_name

    def set_device(self, index):
        self.index = index

    def device_name(self, index):
        return self.name

    def stream(self):
        return 7

    def destroy_stream(self, stream):
        self.stream_destroyed = True

    def synchronize(self, stream):
        self.synchronized += 1

    def malloc(self, nbytes):
        self.next_pointer += 4096
        self.memory[self.next_pointer] = np.zeros(nbytes, np.uint8)
        self.allocations += 1
        return self.next_pointer

    def free(self, pointer):
        del self.memory[pointer]
        self.freed += 1

    def pinned_array(self, shape, dtype):
        self.next_pointer += 4096
        return self.next_pointer, np.zeros(shape, dtype)

    def free_pinned(self, pointer):
        pass

    def copy_to_device(self, pointer, host, stream):
        self.memory[pointer][:] = host.view(np.uint8).reshape(-1)

    def copy_to_host(self, host, pointer, stream):
        host.view(np.uint8).reshape(-1)[:] = self.memory[pointer]


class FakeEngine:
    """A tiny-model 'engine' with a dynamic NCHW float input, logits output and an auxiliary output."""

    def __init__(self, cuda, input_shape=(-1, 3, -1, -1), max_batch=8):
        self._cuda, self._max_batch = cuda, max_batch
        self._io = [("images", "INPUT", "FLOAT", input_shape), ("logits", "OUTPUT", "FLOAT", (-1, 4, -1, -1)),
                    ("aux", "OUTPUT", "FLOAT", (-1, 4, -1, -1))]
        self.num_io_tensors = len(self._io)

    def _row(self, name):
        return next(row for row in self._io if row[0] == name)

    def get_tensor_name(self, index):
        return self._io[index][0]

    def get_tensor_mode(self, name):
        return getattr(FAKE_TRT.TensorIOMode, self._row(name)[1])

    def get_tensor_dtype(self, name):
        return types.SimpleNamespace(name=self._row(name)[2])

    def get_tensor_shape(self, name):
        return self._row(name)[3]

    def get_tensor_profile_shape(self, name, profile):
        return (1, 3, 16, 16), (1, 3, 64, 64), (self._max_batch, 3, 512, 512)

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self._engine, self._addresses, self._input_shape = engine, {}, None

    def set_input_shape(self, name, shape):
        self._input_shape = shape
        return shape[0] <= self._engine._max_batch

    def get_tensor_shape(self, name):
        n, _, h, w = self._input_shape
        return (n, 4, h, w)

    def set_tensor_address(self, name, pointer):
        self._addresses[name] = pointer

    def execute_async_v3(self, stream):
        memory = self._engine._cuda.memory
        images = memory[self._addresses["images"]].view(np.float32).reshape(self._input_shape)
        logits = np.einsum("kc,nchw->nkhw", TINY_WEIGHT, images) + TINY_BIAS[None, :, None, None]
        memory[self._addresses["logits"]][:] = logits.astype(np.float32).view(np.uint8).reshape(-1)
        return True


FAKE_TRT = types.ModuleType("tensorrt")
"""The part of TensorRT the engine runner uses; the backend fixture below adds the rest."""
FAKE_TRT.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
FAKE_TRT.ICudaEngine, FAKE_TRT.IExecutionContext = FakeEngine, FakeContext


@pytest.fixture
def runner_trt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FAKE_TRT)


def test_engine_runner_allocates_per_shape_and_returns_the_output(runner_trt):
    cuda = FakeCuda()
    runner = EngineRunner(FakeEngine(cuda), cuda, "images", "logits")
    assert runner.max_batch == 8 and runner.output.name == "logits"
    batch = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    first = runner.run(batch)
    expected = np.einsum("kc,nchw->nkhw", TINY_WEIGHT, batch) + TINY_BIAS[None, :, None, None]
    np.testing.assert_allclose(first, expected, rtol=1e-6)
    assert cuda.allocations == 3 and cuda.synchronized == 1
    runner.run(batch)
    assert cuda.allocations == 3, "same shape must reuse the buffers"
    assert runner.run(batch[:1, :, :4, :4]).shape == (1, 4, 4, 4)
    assert cuda.allocations == 6 and cuda.freed == 3
    with pytest.raises(ModelFormatError, match="float32"):
        runner.run(batch.astype(np.float16))
    with pytest.raises(ModelFormatError, match="optimization profile"):
        runner.run(np.zeros((9, 3, 8, 8), np.float32))
    runner.close()
    assert cuda.memory == {} and cuda.stream_destroyed


def test_engine_runner_checks_static_dimensions(runner_trt):
    cuda = FakeCuda()
    runner = EngineRunner(FakeEngine(cuda, input_shape=(1, 3, 64, 64)), cuda, "images", "logits")
    assert runner.max_batch == 1
    with pytest.raises(ModelFormatError, match="1x3x64x64"):
        runner.run(np.zeros((1, 3, 32, 32), np.float32))


def fake_runtime_tensorrt(cuda: FakeCuda) -> types.ModuleType:
    """The TensorRT stand-in the backend runs on (test_tensorrt_stubs.py checks its names against the stubs)."""
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.3.0"
    module.TensorIOMode, module.ICudaEngine, module.IExecutionContext = (FAKE_TRT.TensorIOMode, FakeEngine,
                                                                          FakeContext)
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    module.init_libnvinfer_plugins = lambda logger, namespace: True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return FakeEngine(cuda) if data == b"serialized plan" else None

    module.Runtime = Runtime
    return module


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT and CUDA stand-ins, so the whole backend runs through Segmenter without a GPU."""
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_runtime_tensorrt(cuda))
    monkeypatch.setattr(tensorrt_engine, "CudaRuntime", lambda: cuda)
    return cuda


def test_tensorrt_backend_through_segmenter_with_stand_ins(tmp_path, tiny_onnx, fake_tensorrt):
    with Segmenter.load(write_engine(tmp_path), device="cuda:0", size=(32, 32)) as segmenter:
        assert segmenter.backend.name == "tensorrt" and segmenter.backend.device == "cuda:0"
        assert segmenter.backend.max_batch == 8
        image = random_image(32, 32, seed=4)
        np.testing.assert_array_equal(segmenter.segment(image), tiny_onnx.expected(image))


def test_tensorrt_backend_refuses_engine_from_another_gpu(tmp_path, fake_tensorrt):
    fake_tensorrt.name = "NVIDIA GeForce RTX 3060"
    with pytest.raises(ModelFormatError, match="rebuild it on this machine"):
        Segmenter.load(write_engine(tmp_path))


def test_tensorrt_backend_takes_a_static_size_from_the_engine_and_refuses_a_contradicting_sidecar(
        tmp_path, monkeypatch, fake_tensorrt):
    static = FakeEngine(fake_tensorrt, input_shape=(1, 3, 64, 64))
    monkeypatch.setattr(sys.modules["tensorrt"].Runtime, "deserialize_cuda_engine", lambda self, data: static)
    with Segmenter.load(write_engine(tmp_path), device="cuda:0") as segmenter:
        assert segmenter.meta.input_size == [64, 64] and segmenter.input_size == (64, 64)
    with pytest.raises(MetadataError, match=r"sidecar says input size \[32, 32\], the engine takes \[64, 64\]"):
        Segmenter.load(write_engine(tmp_path, input_size=[32, 32]), device="cuda:0")


@pytest.mark.parametrize("layout, shape, expected", [
    ("NCHW", [1, 3, 48, 64], [48, 64]),
    ("NHWC", [1, 48, 64, 3], [48, 64]),
    ("NCHW", ["batch", 3, "height", "width"], [None, None]),  # ONNX symbolic dims
    ("NCHW", [-1, 3, -1, -1], [None, None]),  # TensorRT dynamic dims
])
def test_backends_adopt_the_static_input_size_of_the_network(layout, shape, expected):
    meta = ModelMeta.from_dict({**tiny_metadata("m", (None, None), fused=False, batch=1), "input_layout": layout})
    adopt_input_size(meta, shape, "m.onnx", "metadata", "graph")
    assert meta.input_size == expected


def test_backends_refuse_a_card_that_contradicts_the_network():
    meta = ModelMeta.from_dict(tiny_metadata("m", (32, 32), fused=False, batch=1))
    with pytest.raises(MetadataError, match=r"m\.onnx: metadata says input size \[32, 32\], the graph takes"):
        adopt_input_size(meta, [1, 3, 48, 64], "m.onnx", "metadata", "graph")
    with pytest.raises(ModelFormatError, match=r"m\.onnx: expected a 4-D image input, the graph takes shape"):
        adopt_input_size(meta, [1, 3, 48], "m.onnx", "metadata", "graph")
    adopt_input_size(meta, [1, 3, 32, 32], "m.onnx", "metadata", "graph")  # agreeing sizes are fine
    assert meta.input_size == [32, 32]


def test_tensorrt_missing_is_backend_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match=r"edgeseg\[gpu\]"):
        Segmenter.load(write_engine(tmp_path))
    with pytest.raises(BackendUnavailable, match="only on an NVIDIA GPU"):
        Segmenter.load(write_engine(tmp_path), device="cpu")


# --- Triton, without a server ---------------------------------------------------------------------------------


def test_triton_uri_parsing():
    address = parse_triton_uri("triton://gpu-box:8001/bisenet/3")
    assert (address.host, address.port, address.model, address.version, address.protocol) == \
        ("gpu-box", 8001, "bisenet", "3", "grpc")
    assert parse_triton_uri("triton://localhost:8000/m").protocol == "http"
    assert parse_triton_uri("triton://localhost/m").port == 8001
    http = parse_triton_uri("triton://localhost/m?protocol=http")
    assert (http.port, http.protocol) == (8000, "http")
    for bad in ("triton://localhost:8001", "triton://:8001/m", "triton://h:port/m", "triton://h/m?protocol=smtp"):
        with pytest.raises(ModelFormatError):
            parse_triton_uri(bad)


def test_triton_client_missing_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    with pytest.raises(BackendUnavailable, match=r"edgeseg\[triton\]"):
        Segmenter.load("triton://localhost:8001/model")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_triton_server_fails_fast_and_clearly(protocol):
    pytest.importorskip(f"tritonclient.{protocol}", reason="needs the Triton client (edgeseg[triton])")
    uri = f"triton://127.0.0.1:{_closed_port()}/model?protocol={protocol}"
    started = time.perf_counter()
    with pytest.raises(BackendUnavailable, match="cannot reach a Triton server"):
        Segmenter.load(uri)
    assert time.perf_counter() - started < 10


def fake_triton_module(model_path, config):
    """A ``tritonclient.grpc`` stand-in whose server runs the tiny model with onnxruntime."""
    session = REAL_INFERENCE_SESSION(str(model_path), providers=["CPUExecutionProvider"])
    module = types.ModuleType("tritonclient.grpc")
    module.requests = []

    class InferInput:
        def __init__(self, name, shape, datatype):
            self.name, self.shape, self.datatype = name, shape, datatype

        def set_data_from_numpy(self, array):
            self.array = array

    class InferRequestedOutput:
        def __init__(self, name):
            self.name = name

    class InferenceServerClient:
        def __init__(self, url):
            self.url = url

        def is_server_live(self, client_timeout=None):
            return True

        def get_model_config(self, model, version, as_json=False, client_timeout=None):
            assert as_json
            return {"config": config}

        def infer(self, model, inputs, model_version="", outputs=None, client_timeout=None):
            module.requests.append((model, model_version, [(i.name, i.shape, i.datatype) for i in inputs]))
            logits = session.run([outputs[0].name], {inputs[0].name: inputs[0].array})[0]
            return types.SimpleNamespace(as_numpy=lambda name: logits)

        def close(self):
            pass

    module.InferInput, module.InferRequestedOutput = InferInput, InferRequestedOutput
    module.InferenceServerClient = InferenceServerClient
    return module


def test_triton_backend_reads_the_config_parameter_and_runs(tiny_onnx, monkeypatch):
    meta = json.dumps(tiny_metadata("tiny-dynamic", (None, None), fused=False, batch=None))
    config = {"name": "tiny", "max_batch_size": 4, "parameters": {"edgeseg": {"string_value": meta}}}
    module = fake_triton_module(tiny_onnx.dynamic, config)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", module)
    with Segmenter.load("triton://server:8001/tiny/2", size=(32, 32)) as segmenter:
        assert segmenter.backend.name == "triton" and segmenter.backend.max_batch == 4
        assert segmenter.providers == ["triton-grpc:server:8001"]
        image = random_image(32, 32, seed=8)
        np.testing.assert_array_equal(segmenter.segment(image), tiny_onnx.expected(image))
    assert module.requests == [("tiny", "2", [("images", [1, 3, 32, 32], "FP32")])]


def test_triton_model_without_edgeseg_parameter(tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", fake_triton_module(tiny_onnx.dynamic, {"name": "bare"}))
    with pytest.raises(MetadataError, match="config.pbtxt"):
        Segmenter.load("triton://server/bare")
