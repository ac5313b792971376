"""The model arguments and value types that eval, bench, video and serve share (edgeseg.runtime.arguments)."""

from __future__ import annotations

import pytest

from edgeseg.cli import _build_parser

MODEL_COMMANDS = ("eval", "bench", "video", "serve")
REQUIRED = {"eval": ["--data", "camvid"], "bench": [], "video": ["clip.mp4"], "serve": []}


def parse(command: str, *options: str):
    return _build_parser(command).parse_args([command, "model.onnx", *REQUIRED[command], *options])


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_takes_the_same_model_backend_and_device_arguments(command):
    args = parse(command)
    assert (args.model, args.backend, args.device) == ("model.onnx", "auto", "auto")
    for backend in ("onnxruntime", "tensorrt", "torch", "triton"):
        assert parse(command, "--backend", backend).backend == backend
    assert parse(command, "--device", "cuda:1").device == "cuda:1"


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_size_is_parsed_and_checked_when_the_command_line_is_read(command, capsys):
    size = parse(command, "--size", "360x480").size
    assert size == ([(360, 480)] if command == "bench" else (360, 480))
    with pytest.raises(SystemExit) as stop:
        parse(command, "--size", "360x")
    assert stop.value.code == 2
    assert "--size" in capsys.readouterr().err


@pytest.mark.parametrize("command, option, bad", [
    ("video", "--alpha", "1.5"), ("serve", "--alpha", "-0.1"), ("video", "--alpha", "nan"),
    ("video", "--max-frames", "0"), ("video", "--queue", "two"), ("video", "--reconnect", "-1"),
    ("serve", "--workers", "0"), ("eval", "--batch", "0"), ("bench", "--warmup", "-1"),
])
def test_out_of_range_values_are_refused_with_the_option_named(command, option, bad, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(command, option, bad)
    assert stop.value.code == 2
    assert option in capsys.readouterr().err


def test_boundary_values_are_accepted():
    assert parse("video", "--alpha", "0", "--reconnect", "0").alpha == 0.0
    assert parse("serve", "--alpha", "1").alpha == 1.0
    assert parse("bench", "--warmup", "0").warmup == 0
