"""Command-line pieces shared by the runtime's commands: ``edgeseg eval``, ``bench``, ``video`` and ``serve``.

All four load a deployed model, so they name it, choose its backend and device, and read sizes and counts with one
definition: an option means the same thing in every command, and a bad value is refused by argparse with the
option's name before a model is loaded.
"""

from __future__ import annotations

import argparse

from .backends import BACKEND_NAMES, backend_name
from .errors import ConfigError
from .sizes import parse_size

MODEL_HELP = ("model to run: .onnx, .engine/.plan (with its JSON sidecar), .pt checkpoint (needs the train extra) or "
              "triton://host:port/model")
DEVICE_HELP = ("where to run: auto (best available, warns on a CPU fallback), cpu, cuda, cuda:N, tensorrt[:N] "
               "(ONNX Runtime's TensorRT provider); explicit devices fail instead of falling back")


ORT_SPINNING = {"eval": False, "bench": True, "serve": False, "video": False}
"""Each command's default for ONNX Runtime's intra-op spinning (``--ort-spinning``), chosen by
``benchmarks/cpu_backends.py`` (issue 17; six students at 360x480 on a 2-core Xeon). ``bench`` times the model
alone, where spinning was faster for every student (1.02-1.12x). ``video`` overlaps decode, overlay and encode
threads with the model, and there spinning lowered the end-to-end FPS of four students (Fast-SCNN 52.4 -> 44.2,
LR-ASPP 30.6 -> 28.1, DeepLabV3+ 15.7 -> 14.8, DeepLabV3-R18 10.4 -> 10.1) and raised two by about 1%, so it stays
off. ``serve`` and ``eval`` run decode
threads beside the model as ``video`` does and were not measured: off, as before."""


def count_argument(minimum: int):
    """An argparse type for whole numbers of at least ``minimum`` (frames, iterations, workers...)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def size_argument(text: str) -> tuple[int, int]:
    """An argparse type for ``HxW`` sizes, parsed as the Segmenter parses them."""
    try:
        return parse_size(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def fraction_argument(text: str) -> float:
    """An argparse type for a number in [0, 1], such as an overlay's opacity."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The MODEL positional and ``--backend``/``--device``, which every command that loads a model takes."""
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                        help="inference backend; auto picks it from the model's suffix or scheme (default: auto)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--ov-precision", metavar="fp32|bf16",
                        help="OpenVINO's inference precision (--backend openvino; default: fp32). bf16 needs a CPU "
                             "with BF16 units and is refused elsewhere; an INT8 export runs its Q/DQ graph as it is")
    parser.add_argument("--ort-spinning", choices=("on", "off"),
                        help="whether ONNX Runtime's idle CPU threads spin-wait instead of sleeping: shorter calls, "
                             "but fewer cycles for other threads such as video decode (default: on for bench only)")


def backend_options(args: argparse.Namespace, command: str) -> dict:
    """The backend settings of a model command's flags, for :meth:`Segmenter.load`: given ones, plus this command's
    spinning policy (:data:`ORT_SPINNING`) when the model runs on ONNX Runtime."""
    spinning = None if args.ort_spinning is None else args.ort_spinning == "on"
    if spinning is None and backend_name(args.model, args.backend) == "onnxruntime":
        spinning = ORT_SPINNING[command]
    return {"precision": args.ov_precision, "spinning": spinning}
