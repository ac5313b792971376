"""The ``edgeseg`` command: a thin dispatcher that imports a stage only when its subcommand runs.

``edgeseg video`` and ``edgeseg bench`` therefore start on a Jetson image without torch, while ``edgeseg train``
pulls in the training stack. Each subcommand lives in a module that defines ``add_<name>_arguments(parser)`` and
``run_<name>(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# name -> (module that implements it, one-line summary shown by `edgeseg --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("edgeseg.training.commands", "train a model, or distil a student from a teacher, from a YAML config"),
    "eval": ("edgeseg.runtime.commands", "mIoU, pixel accuracy and per-class IoU of a .pt/.onnx/.engine model"),
    "export": ("edgeseg.export.commands", "export a checkpoint to ONNX, a TensorRT engine, Triton or DeepStream"),
    "bench": ("edgeseg.runtime.commands", "model-only and end-to-end latency/FPS of a deployed model"),
    "compare": ("edgeseg.runtime.compare", "per-class and per-image cost of deployment steps against a reference"),
    "video": ("edgeseg.runtime.video", "segment a video file, camera, RTSP stream or image folder"),
    "serve": ("edgeseg.runtime.serve.commands", "HTTP segmentation service with a live video page"),
    "quickstart": ("edgeseg.quickstart", "the whole pipeline on the embedded CamVid sample, with a report"),
}

# Subcommands whose MODEL argument may be a PyTorch checkpoint: the .pt backend comes from the training stage.
_MODEL_COMMANDS = {"eval", "bench", "video", "serve", "compare"}


def _build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeseg",
        description="Distil compact segmentation students, export them, and run them fast on edge GPUs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'edgeseg COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:  # only the chosen subcommand's module is imported
            getattr(importlib.import_module(module_name), f"add_{name}_arguments")(sub)
    return parser


def _register_checkpoint_backend(args: argparse.Namespace) -> None:
    """Let the runtime open .pt checkpoints when the user passes one (needs torch)."""
    given = getattr(args, "models", None) or [getattr(args, "model", None)]
    model = next((m for m in given if isinstance(m, str) and m.endswith(".pt")), None)
    if args.command in _MODEL_COMMANDS and model is not None:
        try:
            importlib.import_module("edgeseg.training.inference")
        except ImportError as err:
            raise SystemExit(f"edgeseg: {model} is a PyTorch checkpoint, which needs the training extra "
                             f"(pip install 'edgeseg[train]'): {err}") from None


def _one_line(err: Exception) -> str:
    """The error's own message; a DataLoader worker wraps it in the worker's traceback, whose last line it is."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = _build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _register_checkpoint_backend(args)
    module_name = SUBCOMMANDS[args.command][0]
    run = getattr(importlib.import_module(module_name), f"run_{args.command}")
    from edgeseg.runtime.errors import EdgesegError

    try:
        return int(run(args) or 0)
    except EdgesegError as err:
        print(f"edgeseg {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except OSError as err:  # the user's file system: a directory where a file goes, read-only, no space...
        where = f"{err.filename}: " if err.filename else ""
        print(f"edgeseg {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgeseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
