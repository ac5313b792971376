"""Segmenter and backends on the tiny ONNX models (see conftest.py); the CUDA provider path with a stand-in session
(TensorRT and Triton stand-ins: test_backend_standins.py)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import onnxruntime
import pytest

from edgeseg.runtime import ModelMeta, Segmenter
from edgeseg.runtime import backends as backend_registry
from edgeseg.runtime.backends import onnx_runtime
from edgeseg.runtime.arguments import ORT_SPINNING, add_model_arguments, backend_options
from edgeseg.runtime.backends import base as backend_base
from edgeseg.runtime.errors import BackendUnavailable, DataError, MetadataError, ModelFormatError

from conftest import TINY_MEAN, TINY_PALETTE, TINY_STD, tiny_metadata

ALL_MODELS = ("static", "dynamic", "fused", "fused_dynamic")
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
REAL_INFERENCE_SESSION = onnxruntime.InferenceSession


def quadrant_image(size: int = 64) -> np.ndarray:
    """Pure red, green, blue and black quadrants: by the tiny models' weights, classes 0, 1, 2, 3."""
    half = size // 2
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:half, :half], image[:half, half:], image[half:, :half] = RED, GREEN, BLUE
    return image


def quadrant_ids(size: int = 64) -> np.ndarray:
    half = size // 2
    ids = np.full((size, size), 3, dtype=np.uint8)
    ids[:half, :half], ids[:half, half:], ids[half:, :half] = 0, 1, 2
    return ids


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def segmenters(tiny_onnx):
    loaded = {name: Segmenter.load(getattr(tiny_onnx, name)) for name in ALL_MODELS}
    yield loaded
    for segmenter in loaded.values():
        segmenter.close()


# --- segmentation results -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_quadrant_colours_give_their_classes(segmenters, name):
    class_map = segmenters[name].segment(quadrant_image())
    assert class_map.dtype == np.uint8
    np.testing.assert_array_equal(class_map, quadrant_ids())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_random_image_matches_numpy_reference(segmenters, tiny_onnx, name):
    image = random_image(64, 64, seed=3)
    np.testing.assert_array_equal(segmenters[name].segment(image), tiny_onnx.expected(image))


def test_fused_and_unfused_give_the_same_map_on_resized_images(segmenters):
    image = random_image(100, 150, seed=5)
    static, fused = segmenters["static"].segment(image), segmenters["fused"].segment(image)
    assert static.shape == (100, 150)
    np.testing.assert_array_equal(static, fused)
    dynamic, fused_dynamic = segmenters["dynamic"].segment(image), segmenters["fused_dynamic"].segment(image)
    np.testing.assert_array_equal(dynamic, fused_dynamic)


def test_a_fixed_batch_of_three_pads_short_calls_and_returns_only_real_images(tmp_path, segmenters):
    from conftest import TINY_SIZE, build_tiny_model

    h, w = TINY_SIZE
    path = build_tiny_model(tmp_path / "tiny_b3.onnx", False, h, w, 3,
                            tiny_metadata("tiny-b3", (h, w), fused=False, batch=3))
    images = [random_image(64, 64, seed) for seed in range(4)] + [quadrant_image(128)]
    with Segmenter.load(path) as segmenter:
        assert segmenter.backend.max_batch == 3
        calls = []
        original_run = segmenter.backend.run
        segmenter.backend.run = lambda batch: calls.append(len(batch)) or original_run(batch)
        maps = segmenter.segment_batch(images)
        single = segmenter.segment(images[0])
    assert calls == [3, 3, 3]  # 3 + (2 padded to 3), then one image padded to 3
    assert len(maps) == 5
    np.testing.assert_array_equal(single, segmenters["static"].segment(images[0]))
    for image, class_map in zip(images, maps):
        np.testing.assert_array_equal(class_map, segmenters["static"].segment(image))


def test_segment_batch_handles_mixed_sizes_and_splits_a_fixed_batch(segmenters):
    segmenter = segmenters["static"]
    assert segmenter.backend.max_batch == 1
    images = [random_image(64, 64, 1), random_image(40, 90, 2), quadrant_image(128)]
    calls = []
    original_run = segmenter.backend.run
    segmenter.backend.run = lambda batch: calls.append(batch.shape) or original_run(batch)
    try:
        maps = segmenter.segment_batch(images)
    finally:
        del segmenter.backend.run
    assert calls == [(1, 3, 64, 64)] * 3
    assert [m.shape for m in maps] == [(64, 64), (40, 90), (128, 128)]
    for image, class_map in zip(images, maps):
        np.testing.assert_array_equal(class_map, segmenter.segment(image))
    np.testing.assert_array_equal(maps[2], quadrant_ids(128))


def test_segment_batch_runs_dynamic_batches_together(segmenters, tiny_onnx):
    segmenter = segmenters["fused"]
    images = [random_image(64, 64, seed) for seed in range(5)]
    maps = segmenter.segment_batch(images, batch_size=2)
    for image, class_map in zip(images, maps):
        np.testing.assert_array_equal(class_map, tiny_onnx.expected(image))


def test_prepare_normalises_into_nchw_or_keeps_uint8_nhwc_when_fused(segmenters):
    image = random_image(64, 64, seed=7)
    unfused = segmenters["static"].prepare([image])
    assert unfused.shape == (1, 3, 64, 64) and unfused.dtype == np.float32
    by_hand = ((image / 255.0 - np.array(TINY_MEAN)) / np.array(TINY_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(unfused[0], by_hand, atol=1e-5)
    fused = segmenters["fused"].prepare([image, image])
    assert fused.shape == (2, 64, 64, 3) and fused.dtype == np.uint8
    np.testing.assert_array_equal(fused[1], image)


def test_finish_resizes_class_maps_with_nearest_neighbour(segmenters):
    segmenter = segmenters["static"]
    image = random_image(64, 64, seed=9)
    raw = segmenter.run(segmenter.prepare([image]))
    assert raw.shape == (1, 4, 64, 64) and raw.dtype == np.float32
    at_network, doubled = segmenter.finish(raw, [(64, 64)])[0], segmenter.finish(raw, [(128, 128)])[0]
    np.testing.assert_array_equal(doubled, np.repeat(np.repeat(at_network, 2, axis=0), 2, axis=1))


def test_argmax_keeps_the_lowest_class_on_ties(segmenters):
    logits = np.zeros((1, 4, 2, 2), dtype=np.float32)
    logits[0, 2, 0, 0] = 1.0
    logits[0, 1, 1, 1] = logits[0, 3, 1, 1] = 5.0
    np.testing.assert_array_equal(segmenters["static"].class_ids(logits)[0], [[2, 0], [0, 1]])


def test_dynamic_model_input_size(tiny_onnx):
    with Segmenter.load(tiny_onnx.dynamic, size="32x48") as sized:
        assert sized.input_size == (32, 48)
        assert sized.prepare([random_image(100, 100)]).shape == (1, 3, 32, 48)
        assert sized.segment(random_image(100, 100)).shape == (100, 100)
    with Segmenter.load(tiny_onnx.fused_dynamic) as unsized:
        assert unsized.input_size is None
        # 100x150 rounds to multiples of 32: 96x160.
        assert unsized.prepare([random_image(100, 150)]).shape == (1, 96, 160, 3)


def test_static_model_refuses_another_size(tiny_onnx):
    with pytest.raises(ModelFormatError, match="fixed 64x64"):
        Segmenter.load(tiny_onnx.static, size=(32, 32))
    with Segmenter.load(tiny_onnx.static, size=(64, 64)) as same:
        assert same.input_size == (64, 64)


def test_overlay_blends_palette_colours(segmenters):
    segmenter = segmenters["static"]
    image = quadrant_image()
    class_map = segmenter.segment(image)
    np.testing.assert_array_equal(segmenter.overlay(image, class_map, alpha=0.0), image)
    full = segmenter.overlay(image, class_map, alpha=1.0)
    assert full.dtype == np.uint8 and full.shape == image.shape
    for (row, col), class_id in (((5, 5), 0), ((5, 60), 1), ((60, 5), 2), ((60, 60), 3)):
        assert tuple(full[row, col]) == TINY_PALETTE[class_id]
    with_legend = segmenter.overlay(image, class_map, alpha=1.0, legend=True)
    assert not np.array_equal(with_legend, full)


# --- input and model errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64), np.uint8),
                                 np.zeros((64, 64, 3), np.float32), [[0, 0, 0]]])
def test_bad_images_are_data_errors(segmenters, bad):
    with pytest.raises(DataError):
        segmenters["static"].segment(bad)


def test_model_without_metadata(tiny_onnx):
    with pytest.raises(MetadataError, match="edgeseg export") as caught:
        Segmenter.load(tiny_onnx.no_metadata)
    assert str(tiny_onnx.no_metadata) in str(caught.value)


@pytest.mark.parametrize("change, problem", [
    ({"classes": None}, r"misses required keys \['classes'\]"),
    ({"palette": [[0, 0, 0]]}, "4 classes but 1 colours"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"classes": 4}, "malformed model metadata"),
])
def test_unusable_metadata_is_one_error_naming_its_source(change, problem):
    card = {**tiny_metadata("m", (32, 32), fused=False, batch=1), **change}
    with pytest.raises(MetadataError, match=f"^model.onnx: .*{problem}"):
        ModelMeta.from_json(json.dumps({k: v for k, v in card.items() if v is not None}), source="model.onnx")


def test_unknown_missing_and_corrupt_model_files(tmp_path):
    text = tmp_path / "model.txt"
    text.write_text("not a model")
    with pytest.raises(ModelFormatError, match="unknown model type '.txt'"):
        Segmenter.load(text)
    with pytest.raises(ModelFormatError, match="not found"):
        Segmenter.load(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage" * 32)
    with pytest.raises(ModelFormatError, match="corrupt.onnx"):
        Segmenter.load(corrupt)


def test_checkpoint_without_training_stage(tmp_path, monkeypatch):
    monkeypatch.delitem(backend_registry._FACTORIES, ".pt", raising=False)
    checkpoint = tmp_path / "student.pt"
    checkpoint.write_bytes(b"0")
    with pytest.raises(BackendUnavailable, match=r"edgeseg\[train\]"):
        Segmenter.load(checkpoint)


def test_backend_must_fit_the_model_kind(tiny_onnx):
    with pytest.raises(ModelFormatError, match="tensorrt"):
        Segmenter.load(tiny_onnx.static, backend="tensorrt")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        Segmenter.load(tiny_onnx.static, backend="ncnn")
    with pytest.raises(BackendUnavailable, match="unknown device"):
        Segmenter.load(tiny_onnx.static, device="npu")


def test_registered_backend_opens_its_suffix(tiny_onnx, tmp_path, monkeypatch):
    seen = []

    def factory(path, device):
        seen.append((path, device))
        return onnx_runtime.OnnxRuntimeBackend(str(tiny_onnx.static), device="cpu")

    monkeypatch.setattr(backend_registry, "_FACTORIES", dict(backend_registry._FACTORIES))
    backend_registry.register_backend(".mine", factory)
    model = tmp_path / "student.mine"
    model.write_bytes(b"any bytes: the factory decides")
    with Segmenter.load(model, device="cpu") as segmenter:
        np.testing.assert_array_equal(segmenter.segment(quadrant_image()), quadrant_ids())
    assert seen == [(str(model), "cpu")]
    with pytest.raises(ValueError, match="suffix"):
        backend_registry.register_backend("mine", factory)


# --- ONNX Runtime providers -----------------------------------------------------------------------------------


def test_cpu_session_reports_its_provider(segmenters):
    segmenter = segmenters["static"]
    assert segmenter.backend.name == "onnxruntime"
    assert segmenter.providers == ["CPUExecutionProvider"] and segmenter.backend.device == "cpu"


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="this onnxruntime has CUDA, so asking for it is not an error")
def test_cuda_device_without_gpu_build(tiny_onnx):
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        Segmenter.load(tiny_onnx.static, device="cuda")


class _CudaClaimingSession:
    """A real CPU session that claims CUDA when ``claim_cuda``, so the GPU code path runs on the CPU.

    Its IO binding is the real one with device "cuda" rewritten to "cpu": the calls and their arguments are the
    ones onnxruntime-gpu receives.
    """

    bindings: list = []

    def __init__(self, path, sess_options=None, providers=None, claim_cuda=True):
        self._session = REAL_INFERENCE_SESSION(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        self.claim_cuda = claim_cuda

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.claim_cuda else ["CPUExecutionProvider"]

    def io_binding(self):
        session = self._session

        class Binding:
            def __init__(self):
                self.real = session.io_binding()
                self.calls = []
                _CudaClaimingSession.bindings.append(self)

            def bind_cpu_input(self, name, array):
                self.calls.append(("input", name, array.dtype))
                self.real.bind_cpu_input(name, array)

            def bind_output(self, name, device_type, device_id):
                self.calls.append(("output", name, device_type, device_id))
                self.real.bind_output(name, "cpu" if device_type == "cuda" else device_type, device_id)

            def copy_outputs_to_cpu(self):
                return self.real.copy_outputs_to_cpu()

        return Binding()

    def run_with_iobinding(self, binding):
        self._session.run_with_iobinding(binding.real)

    def __getattr__(self, name):
        return getattr(self._session, name)


@pytest.fixture
def fake_cuda_ort(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda **kwargs: None, raising=False)
    _CudaClaimingSession.bindings = []
    return monkeypatch


def test_gpu_session_uses_io_binding(tiny_onnx, fake_cuda_ort):
    fake_cuda_ort.setattr(onnxruntime, "InferenceSession", _CudaClaimingSession)
    with Segmenter.load(tiny_onnx.fused, device="cuda:0") as segmenter:
        assert segmenter.backend.device == "cuda:0"
        image = random_image(64, 64, seed=11)
        np.testing.assert_array_equal(segmenter.segment(image), tiny_onnx.expected(image))
    (binding,) = _CudaClaimingSession.bindings
    assert binding.calls == [("input", "images", np.uint8), ("output", "class_ids", "cuda", 0)]


def test_silent_cpu_fallback_fails_when_asked_and_warns_on_auto(tiny_onnx, fake_cuda_ort):
    def falling_back(path, sess_options=None, providers=None):
        return _CudaClaimingSession(path, sess_options, providers, claim_cuda=False)

    fake_cuda_ort.setattr(onnxruntime, "InferenceSession", falling_back)
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        Segmenter.load(tiny_onnx.static, device="cuda")
    with pytest.warns(RuntimeWarning, match="session runs on CPUExecutionProvider"):
        segmenter = Segmenter.load(tiny_onnx.static, device="auto")
    with segmenter:
        assert segmenter.providers == ["CPUExecutionProvider"] and segmenter.backend.device == "cpu"
        np.testing.assert_array_equal(segmenter.segment(quadrant_image()), quadrant_ids())


def test_provider_request_orders_gpu_providers_first():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    names = [p if isinstance(p, str) else p[0] for p in onnx_runtime.provider_request("auto", available)]
    assert names == available
    cuda = onnx_runtime.provider_request("cuda:1", available)
    assert cuda[0] == ("CUDAExecutionProvider", {"device_id": 1}) and cuda[-1] == "CPUExecutionProvider"
    assert onnx_runtime.provider_request("cpu", available) == ["CPUExecutionProvider"]


def test_thread_count_override(monkeypatch):
    monkeypatch.delenv(backend_base.THREADS_ENV, raising=False)
    assert backend_base.default_threads() == len(os.sched_getaffinity(0))  # the cores this process may use
    monkeypatch.setenv(backend_base.THREADS_ENV, "1")
    assert backend_base.default_threads() == 1
    monkeypatch.setenv(backend_base.THREADS_ENV, "many")
    with pytest.raises(BackendUnavailable, match=backend_base.THREADS_ENV):
        backend_base.default_threads()


def spinning_of(segmenter: Segmenter) -> str:
    options = segmenter.backend.session.get_session_options()
    return options.get_session_config_entry("session.intra_op.allow_spinning")


def test_ort_spinning_is_an_option_off_by_default(tiny_onnx):
    with Segmenter.load(tiny_onnx.static, device="cpu") as default, \
            Segmenter.load(tiny_onnx.static, device="cpu", spinning=True) as spinning:
        assert spinning_of(default) == "0" and spinning_of(spinning) == "1"
        np.testing.assert_array_equal(spinning.segment(quadrant_image()), quadrant_ids())
    with pytest.raises(BackendUnavailable, match=r"'openvino' takes no option 'spinning' \(.* of onnxruntime\)"):
        Segmenter.load(tiny_onnx.static, backend="openvino", spinning=True)


def test_each_command_has_its_spinning_policy(tiny_onnx, monkeypatch):
    """--ort-spinning wins; otherwise the command's entry of ORT_SPINNING applies, and only to ONNX Runtime."""
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    parse = parser.parse_args
    monkeypatch.setitem(ORT_SPINNING, "video", True)
    assert backend_options(parse([str(tiny_onnx.static)]), "video")["spinning"] is True
    monkeypatch.setitem(ORT_SPINNING, "video", False)
    assert backend_options(parse([str(tiny_onnx.static)]), "bench")["spinning"] is ORT_SPINNING["bench"]
    assert backend_options(parse([str(tiny_onnx.static)]), "video")["spinning"] is False
    assert backend_options(parse([str(tiny_onnx.static), "--ort-spinning", "off"]), "bench")["spinning"] is False
    assert backend_options(parse([str(tiny_onnx.static), "--backend", "openvino"]), "bench")["spinning"] is None
    with pytest.raises(SystemExit):
        parse([str(tiny_onnx.static), "--ort-spinning", "maybe"])
