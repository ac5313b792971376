"""The TensorRT engine builder, driven through a fake ``tensorrt`` module.

TensorRT cannot be installed on the CPU-only test machines, so NO ENGINE IS BUILT HERE. What is tested is everything
around the TensorRT calls: that the network is created strongly typed, the workspace and the optimisation profile
handed to the builder, parser-error reporting, timing-cache loading and saving, the atomic plan + sidecar writes,
the sidecar content (read back by the runtime's own sidecar reader) and the equivalent trtexec command.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import types

import pytest
import torch

from edgeseg.cli import main
from edgeseg.export import tensorrt_build
from edgeseg.export.onnx_graph import read_metadata
from edgeseg.export.tensorrt_build import EngineOptions, build_engine, parse_shape
from edgeseg.runtime.backends.engine_sidecar import read_sidecar
from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.runtime.errors import BackendUnavailable, ConfigError, ModelFormatError
from edgeseg.training.checkpoint import model_card, save_checkpoint
from edgeseg.training.models import create_model


class ParserError:
    def __init__(self, text: str, node_name: str, operator: str) -> None:
        self._text, self._name, self._operator = text, node_name, operator

    def desc(self) -> str:
        return self._text

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._operator

    def node(self) -> int:
        return -1


class FakeTensorRT(types.ModuleType):
    """Records what the builder code asks of TensorRT; configurable parser errors and build failure.

    Its classes carry TensorRT's own names and only TensorRT's attributes (test_tensorrt_stubs.py checks them against
    NVIDIA's stubs); test bookkeeping lives on the module's ``calls``.
    """

    def __init__(self, parser_errors=(), build_fails=False, version="10.3.0.26") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: dict = {"profiles": []}
        fake = self

        class Logger:
            WARNING = "warning"

            def __init__(self, severity) -> None:
                fake.calls["log_severity"] = severity

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 3

        class MemoryPoolType:
            WORKSPACE = "workspace-pool"

        class Dims(tuple):
            pass

        class ITimingCache:
            def __init__(self, data: bytes) -> None:
                self._data = data

            def serialize(self) -> bytes:
                return self._data + b"+tuned"

        class IOptimizationProfile:
            def __init__(self) -> None:
                self._shapes = {}

            def set_shape(self, name, low, opt, high) -> None:
                assert all(isinstance(dims, Dims) for dims in (low, opt, high))  # what the stubs declare
                self._shapes[name] = (tuple(low), tuple(opt), tuple(high))

        class IBuilderConfig:
            def set_memory_pool_limit(self, pool, size) -> None:
                fake.calls["pool"] = (pool, size)

            def add_optimization_profile(self, profile) -> None:
                fake.calls["profiles"].append(profile._shapes)

            def create_timing_cache(self, data: bytes) -> ITimingCache:
                fake.calls["cache_loaded"] = data
                return ITimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch) -> None:
                fake.calls["cache_set"] = (cache, ignore_mismatch)

            def set_flag(self, flag) -> None:  # must never be called: precision comes from the graph
                raise AssertionError(f"builder flag {flag} set on a strongly typed build")

        class Builder:
            def __init__(self, logger) -> None:
                pass

            def create_network(self, flags: int) -> object:
                fake.calls["network_flags"] = flags
                return object()

            def create_builder_config(self) -> IBuilderConfig:
                return IBuilderConfig()

            def create_optimization_profile(self) -> IOptimizationProfile:
                return IOptimizationProfile()

            def build_serialized_network(self, network, config):
                fake.calls["built"] = True
                return None if build_fails else memoryview(b"FAKE-PLAN")

        class OnnxParser:
            def __init__(self, network, logger) -> None:
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                fake.calls["parsed"] = path
                self.num_errors = len(parser_errors)
                return not parser_errors

            def get_error(self, index: int) -> ParserError:
                return ParserError(*parser_errors[index])

        for cls in (Logger, Builder, OnnxParser, NetworkDefinitionCreationFlag, MemoryPoolType, Dims, ITimingCache,
                    IOptimizationProfile, IBuilderConfig, ParserError):
            setattr(self, cls.__name__, cls)


@pytest.fixture
def fake_trt(monkeypatch):
    module = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(tensorrt_build, "describe_gpu", lambda index: ("NVIDIA Jetson AGX Orin", "8.7"))
    return module


def test_missing_tensorrt_names_the_package(monkeypatch, tiny_onnx, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailable, match=r"edgeseg\[gpu\].*python3-libnvinfer"):
        build_engine(tiny_onnx.static, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_stubs_only_tensorrt_is_not_taken_for_tensorrt(monkeypatch, tiny_onnx, tmp_path):
    stubs_only = types.ModuleType("tensorrt")  # what `import tensorrt` gives where only tensorrt-stubs is installed
    stubs_only.__path__ = [str(tmp_path / "site-packages" / "tensorrt")]
    monkeypatch.setitem(sys.modules, "tensorrt", stubs_only)
    with pytest.raises(BackendUnavailable, match="only its type stubs are installed"):
        build_engine(tiny_onnx.static, tmp_path / "m.engine")


def test_tensorrt_11_is_strongly_typed_without_the_deprecated_flag(monkeypatch, tiny_onnx, tmp_path):
    module = FakeTensorRT(version="11.4.0.106")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(tensorrt_build, "describe_gpu", lambda index: ("NVIDIA H100", "9.0"))
    build_engine(tiny_onnx.static, tmp_path / "m.engine", log=lambda line: None)
    assert module.calls["network_flags"] == 0


def test_static_graph_builds_strongly_typed_without_profile(fake_trt, tiny_onnx, tmp_path):
    engine = tmp_path / "out" / "tiny.engine"
    build = build_engine(tiny_onnx.static, engine, EngineOptions(workspace_gb=2), log=lambda line: None)

    assert fake_trt.calls["network_flags"] == 1 << 3  # 1 << STRONGLY_TYPED, nothing else
    assert fake_trt.calls["pool"] == ("workspace-pool", 2 * 1024 ** 3)
    assert fake_trt.calls["profiles"] == []
    assert fake_trt.calls["parsed"] == str(tiny_onnx.static)
    assert engine.read_bytes() == b"FAKE-PLAN"
    assert build.profile is None

    words = shlex.split(build.trtexec)
    assert words[0] == "trtexec" and "--stronglyTyped" in words
    assert f"--onnx={tiny_onnx.static}" in words and f"--saveEngine={engine}" in words
    assert "--memPoolSize=workspace:2048M" in words
    assert not any(word.startswith(("--minShapes", "--fp16", "--int8")) for word in words)


def test_sidecar_holds_meta_and_build_facts_and_the_runtime_reads_it(fake_trt, tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    build = build_engine(tiny_onnx.static, engine, log=lambda line: None)
    assert build.sidecar.path == tmp_path / "tiny.engine.json"

    data = json.loads(build.sidecar.path.read_text())
    assert data["tensorrt_version"] == "10.3.0.26"
    assert data["gpu"] == "NVIDIA Jetson AGX Orin" and data["compute_capability"] == "8.7"
    assert data["onnx_sha256"] == hashlib.sha256(tiny_onnx.static.read_bytes()).hexdigest()
    assert data["profile"] is None
    assert [t["name"] for t in data["io"]] == ["images", "logits"]
    assert data["io"][0]["shape"] == [1, 3, 64, 64]

    sidecar = read_sidecar(engine)  # the runtime's reader
    meta, source_meta = sidecar.meta, read_metadata(tiny_onnx.static)
    assert (sidecar.tensorrt_version, sidecar.gpu) == ("10.3.0.26", "NVIDIA Jetson AGX Orin")
    assert sidecar.io == data["io"] and sidecar.onnx_sha256 == data["onnx_sha256"] and "io" not in meta.extra
    assert meta.classes == source_meta.classes and meta.mean == source_meta.mean
    assert meta.input_size == source_meta.input_size and meta.output_name == source_meta.output_name


def test_dynamic_graph_gets_default_profile_around_the_size(fake_trt, tiny_onnx, tmp_path):
    build = build_engine(tiny_onnx.dynamic, tmp_path / "d.engine", size=(96, 160), log=lambda line: None)
    # batch 1..8 (opt 1); height/width from half the size (rounded up to 32) to twice the size
    expected = ((1, 3, 64, 96), (1, 3, 96, 160), (8, 3, 192, 320))
    assert fake_trt.calls["profiles"] == [{"images": expected}]
    assert build.sidecar.profile == {"images": {"min": [1, 3, 64, 96], "opt": [1, 3, 96, 160],
                                                        "max": [8, 3, 192, 320]}}
    words = shlex.split(build.trtexec)
    assert "--minShapes=images:1x3x64x96" in words
    assert "--optShapes=images:1x3x96x160" in words
    assert "--maxShapes=images:8x3x192x320" in words


def test_fused_nhwc_graph_profiles_height_and_width_axes(fake_trt, tiny_onnx, tmp_path):
    build_engine(tiny_onnx.fused_dynamic, tmp_path / "f.engine", size=(64, 64), log=lambda line: None)
    low, opt, high = fake_trt.calls["profiles"][0]["images"]
    assert (low, opt, high) == ((1, 32, 32, 3), (1, 64, 64, 3), (8, 128, 128, 3))


def test_user_shapes_override_defaults(fake_trt, tiny_onnx, tmp_path):
    options = EngineOptions(min_shape=(1, 3, 32, 32), opt_shape=(2, 3, 64, 64), max_shape=(4, 3, 128, 128))
    build = build_engine(tiny_onnx.dynamic, tmp_path / "d.engine", options, log=lambda line: None)
    assert fake_trt.calls["profiles"][0]["images"] == ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128))
    assert "--optShapes=images:2x3x64x64" in shlex.split(build.trtexec)


@pytest.mark.parametrize("options, message", [
    (EngineOptions(min_shape=(1, 3, 32), opt_shape=(1, 3, 64, 64), max_shape=(1, 3, 64, 64)), "has 3 dims"),
    (EngineOptions(min_shape=(1, 4, 32, 32), opt_shape=(1, 4, 64, 64), max_shape=(1, 4, 64, 64)), "fixed at 3"),
    (EngineOptions(min_shape=(1, 3, 96, 96), opt_shape=(1, 3, 64, 64), max_shape=(1, 3, 128, 128)),
     "min <= opt <= max"),
])
def test_bad_profile_shapes_are_rejected_before_building(fake_trt, tiny_onnx, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        build_engine(tiny_onnx.dynamic, tmp_path / "d.engine", options, log=lambda line: None)
    assert "built" not in fake_trt.calls


def test_shapes_for_a_static_graph_are_rejected(fake_trt, tiny_onnx, tmp_path):
    with pytest.raises(ConfigError, match="apply only to graphs exported with --dynamic"):
        build_engine(tiny_onnx.static, tmp_path / "s.engine", EngineOptions(opt_shape=(1, 3, 64, 64)))


def test_dynamic_graph_without_size_asks_for_shapes(fake_trt, tiny_onnx, tmp_path):
    with pytest.raises(ConfigError, match="--min-shape, --opt-shape and --max-shape"):
        build_engine(tiny_onnx.dynamic, tmp_path / "d.engine", log=lambda line: None)


def test_parser_errors_are_all_reported(monkeypatch, tiny_onnx, tmp_path):
    errors = [("Unsupported operator GridSample", "/head/GridSample", "GridSample"),
              ("Invalid weights type INT64", "/model/Conv_3", "Conv")]
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(parser_errors=errors))
    with pytest.raises(ModelFormatError) as caught:
        build_engine(tiny_onnx.static, tmp_path / "m.engine", log=lambda line: None)
    message = str(caught.value)
    assert "2 error(s)" in message
    assert "Unsupported operator GridSample (node /head/GridSample, op GridSample)" in message
    assert "Invalid weights type INT64 (node /model/Conv_3, op Conv)" in message
    assert not (tmp_path / "m.engine").exists()


def test_failed_build_keeps_the_previous_engine(monkeypatch, tiny_onnx, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(build_fails=True))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"OLD-PLAN")
    with pytest.raises(ModelFormatError, match="could not build"):
        build_engine(tiny_onnx.static, engine, log=lambda line: None)
    assert engine.read_bytes() == b"OLD-PLAN"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine"]  # no sidecar, no temp files


def test_timing_cache_is_loaded_and_saved(fake_trt, tiny_onnx, tmp_path):
    cache = tmp_path / "trt.cache"
    build_engine(tiny_onnx.static, tmp_path / "a.engine", EngineOptions(timing_cache=cache), log=lambda line: None)
    assert fake_trt.calls["cache_loaded"] == b""  # no cache yet: start empty
    assert fake_trt.calls["cache_set"][1] is False  # a cache from another device/version is an error, not ignored
    assert cache.read_bytes() == b"+tuned"

    build = build_engine(tiny_onnx.static, tmp_path / "b.engine", EngineOptions(timing_cache=cache),
                         log=lambda line: None)
    assert fake_trt.calls["cache_loaded"] == b"+tuned"
    assert cache.read_bytes() == b"+tuned+tuned"
    assert f"--timingCacheFile={cache}" in shlex.split(build.trtexec)


def test_parse_shape():
    assert parse_shape("1x3x360x480", "--opt-shape") == (1, 3, 360, 480)
    for bad in ("1x3x0x480", "1x3xAx4", ""):
        with pytest.raises(ConfigError, match="--opt-shape"):
            parse_shape(bad, "--opt-shape")


def test_cli_builds_engine_from_onnx_and_prints_trtexec(fake_trt, tiny_onnx, tmp_path, capsys):
    engine = tmp_path / "cli.engine"
    code = main(["export", str(tiny_onnx.dynamic), "--format", "engine", "--out", str(engine), "--workspace", "1",
                 "--min-shape", "1x3x32x32", "--opt-shape", "1x3x64x64", "--max-shape", "2x3x64x64"])
    out = capsys.readouterr().out
    assert code == 0 and engine.read_bytes() == b"FAKE-PLAN"
    assert "trtexec" in out and "--maxShapes=images:2x3x64x64" in out and "--memPoolSize=workspace:1024M" in out


def test_cli_rejects_engine_options_for_onnx_format(tiny_onnx, capsys):
    code = main(["export", "model.pt", "--workspace", "2"])
    assert code == 1
    assert "--workspace does not apply to --format onnx" in capsys.readouterr().err


def test_cli_rejects_graph_options_for_an_exported_onnx(fake_trt, tiny_onnx, capsys):
    code = main(["export", str(tiny_onnx.static), "--format", "engine", "--precision", "fp16"])
    assert code == 1
    assert "is already exported" in capsys.readouterr().err
    assert "built" not in fake_trt.calls


def test_cli_without_tensorrt_fails_before_exporting(monkeypatch, tiny_onnx, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["export", str(tiny_onnx.static), "--format", "engine", "--out", str(tmp_path / "m.engine")]) == 1
    err = capsys.readouterr().err
    assert "needs the tensorrt package" in err and "edgeseg[gpu]" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_cli_exports_checkpoint_then_builds_engine(fake_trt, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("tiny_segnet", num_classes=CAMVID.num_classes)
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, input_size=[64, 96], config={})
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", card, model.state_dict())
    engine = tmp_path / "deploy" / "tiny.engine"
    assert main(["export", str(checkpoint), "--format", "engine", "--out", str(engine), "--precision", "fp16",
                 "--dynamic", "hw"]) == 0
    onnx_file = engine.with_suffix(".onnx")
    assert fake_trt.calls["parsed"] == str(onnx_file)  # the engine is built from the precision-carrying ONNX
    assert read_metadata(onnx_file).precision == "fp16"
    sidecar = json.loads((tmp_path / "deploy" / "tiny.engine.json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["input_size"] == [None, None]
    # the profile is derived from the checkpoint's 64x96: half (rounded up to 32) .. twice
    assert sidecar["profile"]["images"] == {"min": [1, 3, 32, 64], "opt": [1, 3, 64, 96], "max": [1, 3, 128, 192]}
    assert "--optShapes=images:1x3x64x96" in capsys.readouterr().out
