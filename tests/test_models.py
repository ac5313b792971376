"""The model zoo: registry behaviour, the forward/taps contract of every model, weight loading and ONNX export."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.training.models import (Tap, count_flops, count_params, count_traffic, create_model, list_models,
                                     load_backbone_weights, model_info, register_model, taps_of)
from edgeseg.training.models.layers import adaptive_avg_pool2d
from edgeseg.training.models.resnet import resnet18, resnet50

NUM_CLASSES = 5
TEACHERS = ["deeplabv3_resnet50", "deeplabv3_resnet101", "pspnet_resnet101"]
STUDENTS = ["deeplabv3_resnet18", "pspnet_resnet18", "deeplabv3plus_mobilenetv2", "lraspp_mobilenetv3_large",
            "bisenetv2", "fastscnn", "tiny_segnet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    """One instance per model for the whole module: building the ResNet-101 teachers alone takes seconds."""
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES)


def _forward_with_taps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    captured: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(tap.module).register_forward_hook(
            lambda module, args, output, alias=alias: captured.__setitem__(alias, output))
        for alias, tap in taps_of(model).items()
    ]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, captured


def _check_contract(model: nn.Module, height: int, width: int) -> None:
    """Output at input size, and every tap where and how big it says it is."""
    model.eval()
    x = torch.randn(1, 3, height, width)
    out, captured = _forward_with_taps(model, x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, NUM_CLASSES, height, width)
    assert torch.isfinite(out).all()
    taps = taps_of(model)
    assert {"stage1", "stage2", "feature", "logits"} <= set(taps)
    assert taps["feature"].kind == "feature" and taps["logits"].kind == "logits"
    assert taps["logits"].channels == NUM_CLASSES
    for alias, tap in taps.items():
        tensor = captured[alias]
        assert tensor.shape[1] == tap.channels, alias
        assert abs(tensor.shape[2] - height / tap.stride) < 1, (alias, tensor.shape, tap)
        assert abs(tensor.shape[3] - width / tap.stride) < 1, (alias, tensor.shape, tap)
    # The logits tap is the classifier output before the final resize: resizing it must give the model output.
    resized = F.interpolate(captured["logits"], size=(height, width), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized, out)
    # Where the classifier is a single conv, the feature tap must be exactly what it consumes.
    classifier = model.get_submodule(taps["logits"].module)
    if isinstance(classifier, nn.Conv2d):
        torch.testing.assert_close(classifier(captured["feature"]), captured["logits"])


def test_registry_holds_exactly_the_agreed_models():
    assert sorted(list_models()) == sorted(TEACHERS + STUDENTS)
    assert list_models(role="teacher") == sorted(TEACHERS)
    assert list_models(role="student") == sorted(STUDENTS)
    assert set(list_models("deeplabv3*")) == {"deeplabv3_resnet18", "deeplabv3_resnet50", "deeplabv3_resnet101",
                                             "deeplabv3plus_mobilenetv2"}


@pytest.mark.parametrize("name", TEACHERS + STUDENTS)
def test_forward_shape_and_taps(name):
    _check_contract(_model(name), 64, 64)


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("size", [(96, 128), (50, 75)], ids=["multiple_of_32", "odd"])
def test_student_any_input_size(name, size):
    _check_contract(_model(name), *size)


@pytest.mark.parametrize("name", STUDENTS)
def test_student_backward_reaches_every_parameter(name):
    model = _model(name).train()
    model.zero_grad(set_to_none=True)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    F.cross_entropy(model(images), labels).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    classifier = model.get_submodule(taps_of(model)["logits"].module)
    assert any(p.grad.abs().sum() > 0 for p in classifier.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", STUDENTS)
def test_student_initialisation(name):
    model = _model(name)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.bias == 0)
            assert torch.all((module.weight == 1) | (module.weight == 0))  # 0: last BN of a residual block
    # The classifier starts near zero so that the first losses are close to log(num_classes).
    with torch.no_grad():
        logits = model.train()(torch.randn(2, 3, 64, 64))
    assert logits.abs().max() < 5


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_moves_the_last_stages(output_stride):
    model = create_model("deeplabv3_resnet18", num_classes=NUM_CLASSES, output_stride=output_stride)
    taps = taps_of(model)
    assert taps["stage4"].stride == output_stride and taps["logits"].stride == output_stride
    _check_contract(model, 64, 96)


def test_unsupported_output_stride_is_refused():
    with pytest.raises(ValueError, match="output_stride"):
        create_model("pspnet_resnet18", num_classes=NUM_CLASSES, output_stride=4)
    with pytest.raises(ValueError, match="output_stride"):
        create_model("deeplabv3plus_mobilenetv2", num_classes=NUM_CLASSES, output_stride=12)


@pytest.mark.parametrize("height, width", [(7, 9), (13, 5), (17, 23), (6, 12), (2, 3), (1, 1)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6, (2, 5)])
def test_pooling_helper_equals_adaptive_avg_pool(height, width, bins):
    x = torch.randn(2, 4, height, width)
    torch.testing.assert_close(adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins), rtol=1e-5, atol=1e-6)


def test_unknown_model_name_suggests_the_close_match():
    with pytest.raises(KeyError, match="did you mean 'deeplabv3_resnet18'") as info:
        create_model("deeplabv3_resnet19", num_classes=NUM_CLASSES)
    assert "pspnet_resnet101" in str(info.value)  # the full list of names follows
    with pytest.raises(KeyError, match="bisenet_v2"):
        model_info("bisenet_v2")


def test_duplicate_registration_raises_and_keeps_the_original():
    def tiny_segnet(*, num_classes: int) -> nn.Module:
        return nn.Conv2d(3, num_classes, 1)

    with pytest.raises(ValueError, match="already registered"):
        register_model(tiny_segnet)
    assert list_models().count("tiny_segnet") == 1
    assert not isinstance(create_model("tiny_segnet", num_classes=NUM_CLASSES), nn.Conv2d)


def test_builders_must_be_keyword_only():
    def positional_model(num_classes: int) -> nn.Module:
        return nn.Conv2d(3, num_classes, 1)

    with pytest.raises(ValueError, match="keyword-only"):
        register_model(positional_model)
    assert "positional_model" not in list_models()


def test_create_model_checks_options_and_class_count():
    with pytest.raises(TypeError, match="output_stride"):
        create_model("deeplabv3_resnet18", num_classes=NUM_CLASSES, output_strides=16)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("tiny_segnet", num_classes=0)


def test_model_info_reports_role_and_options():
    info = model_info("deeplabv3_resnet101")
    assert info.role == "teacher"
    assert info.options["output_stride"] == 8
    assert "num_classes" not in info.options
    assert info.summary
    assert model_info("fastscnn").role == "student"


def test_taps_of_rejects_models_without_taps():
    with pytest.raises(TypeError, match="taps"):
        taps_of(nn.Conv2d(3, 3, 1))
    model = create_model("tiny_segnet", num_classes=NUM_CLASSES)
    model.taps = {**model.taps, "broken": Tap("no.such.module", 8, 8, "stage")}
    with pytest.raises(ValueError, match="no.such.module"):
        taps_of(model)


def _randomised(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of the module's layout with distinctive values (positive where they are variances)."""
    torch.manual_seed(1)
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif value.is_floating_point():
            state[key] = torch.randn_like(value)
        else:
            state[key] = value + 7
    return state


def test_backbone_weights_reload_from_a_torchvision_style_file(tmp_path):
    source = _randomised(resnet18())
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save({**source, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}, path)
    model = create_model("deeplabv3_resnet18", num_classes=NUM_CLASSES)
    report = load_backbone_weights(model, path)
    assert report.ignored == ("fc.bias", "fc.weight")
    assert not report.missing and not report.unexpected
    loaded = model.backbone.state_dict()
    for key, value in source.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    _check_contract(model.eval(), 64, 64)


def test_backbone_weights_unwrap_checkpoints_and_dataparallel_prefixes(tmp_path):
    source = _randomised(resnet18())
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}, "epoch": 3}, path)
    model = create_model("pspnet_resnet18", num_classes=NUM_CLASSES)
    load_backbone_weights(model, path)
    torch.testing.assert_close(model.backbone.conv1.weight, source["conv1.weight"])


def test_backbone_weights_report_missing_keys(tmp_path):
    source = _randomised(resnet18())
    partial = {k: v for k, v in source.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    model = create_model("deeplabv3_resnet18", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"missing from the file: layer4\."):
        load_backbone_weights(model, path)
    report = load_backbone_weights(model, path, strict=False)
    assert report.missing and all(k.startswith("layer4.") for k in report.missing)
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, source["layer3.0.conv1.weight"])


def test_backbone_weights_refuse_the_wrong_architecture(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(ValueError, match="wrong shape"):
        load_backbone_weights(create_model("deeplabv3_resnet18", num_classes=NUM_CLASSES), path)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None], ids=["garbage", "list"])
def test_backbone_weights_refuse_files_that_are_not_state_dicts(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="weights.pth"):
        load_backbone_weights(create_model("deeplabv3_resnet18", num_classes=NUM_CLASSES), path)


def test_models_without_a_pretrainable_backbone_say_so(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="FastSCNN has no pretrained-compatible 'backbone'"):
        load_backbone_weights(create_model("fastscnn", num_classes=NUM_CLASSES), path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter announces its retirement
@pytest.mark.parametrize("name", ["pspnet_resnet18", "fastscnn"])
def test_onnx_export_with_dynamic_size_matches_torch(name, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    # Give batch norm the statistics of real activations, so that eval-mode logits are not all near zero.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one batch sets the statistics
            module.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 64, 64))
    model.eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {2: "height", 3: "width"}, "logits": {2: "height", 3: "width"}})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 96, 160)  # pooled maps of 12x20 (PSPNet) and 3x5 (Fast-SCNN): not multiples of 6
    with torch.no_grad():
        expected = model(x).numpy()
    (actual,) = session.run(None, {"images": x.numpy()})
    assert actual.shape == expected.shape == (1, NUM_CLASSES, 96, 160)
    assert np.abs(expected).max() > 1e-2  # a real comparison, not one of near-zero outputs
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_count_params_and_flops_of_a_known_network():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2, bias=False))
    assert count_params(net) == (3 * 8 * 9 + 8) + 8 * 4
    net[0].weight.requires_grad_(False)
    assert count_params(net, trainable_only=True) == 8 + 8 * 4
    net.train()
    multiply_adds = 3 * 8 * 9 * 32 * 48 + 8 * 4 * 16 * 24
    assert count_flops(net, (32, 48)) == pytest.approx(2 * multiply_adds / 1e9)
    assert net.training  # the count runs in eval mode and restores the previous mode


def test_count_traffic_of_a_known_network():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2, bias=False))
    first = 3 * 32 * 48 + 8 * 32 * 48 + (3 * 8 * 9 + 8)  # input, output, weights and bias of the 3x3 conv
    second = 8 * 32 * 48 + 4 * 16 * 24 + 8 * 4  # the ReLU is taken as fused: its output is the next conv's input
    assert count_traffic(net, (32, 48)) == pytest.approx(4 * (first + second) / 1e6)
    assert count_traffic(net.double(), (32, 48)) == pytest.approx(8 * (first + second) / 1e6)
    assert not [m for m in net.modules() if m._forward_hooks]  # the hooks are removed


def test_tiny_segnet_is_tiny():
    assert count_params(_model("tiny_segnet")) < 100_000
    assert count_params(_model("tiny_segnet")) < count_params(_model("fastscnn")) / 10
