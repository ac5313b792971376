"""The table of export formats: one row per format drives ``edgeseg export --help``, option validation, the README
and the export itself (the row names the function that writes the format).

Every option of ``edgeseg export`` belongs to a group, and each format lists the groups it accepts. An option that a
format does not take is *rejected* with a message that names the formats which do take it; nothing is silently
dropped or rewritten, so the file a user gets is always the file they asked for.

Adding a format is one module with a ``run(job: ExportJob) -> ExportResult`` function (see :mod:`.api`) and one row
here; options it needs beyond the groups below are fields of :class:`~.api.ExportOptions` plus their flags.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeseg.runtime.errors import ConfigError

if TYPE_CHECKING:
    from .api import ExportJob, ExportResult

DEFAULT_OPSET = 17
"""The newest opset that ONNX Runtime, OpenCV DNN and TensorRT 10.3 (JetPack 6) all read; see onnx_export."""

# Option groups, by ``dest``. Defaults live in api.ExportOptions; validation compares against them.
GRAPH_OPTIONS = ("size", "batch", "dynamic", "opset", "precision", "calib", "calib_split", "calib_images",
                 "calib_method", "int8_scheme", "max_drop", "fuse", "class_dtype", "confidence")
CHECK_OPTIONS = ("check", "check_data", "check_images", "min_agreement", "max_abs_error", "check_report")
ENGINE_OPTIONS = ("workspace", "timing_cache", "min_shape", "opt_shape", "max_shape", "gpu")
TRITON_OPTIONS = ("name", "max_batch", "instances", "instance_kind", "preferred_batch", "max_queue_delay_us",
                  "triton_backend")
DEEPSTREAM_OPTIONS = ("name", "sources", "source", "segmentation_threshold", "gpu")


@dataclass(frozen=True)
class ExportFormat:
    """One deployable artefact that ``edgeseg export`` can write.

    Attributes:
        name: Value of ``--format``.
        artefact: What ``--out`` names (a file suffix or a folder), shown in the help table.
        inputs: Suffixes of the SOURCE argument this format starts from (``.pt`` = export the checkpoint first).
        needs_gpu: Whether building the artefact needs an NVIDIA GPU on this machine.
        requires: Packages beyond the export extra, or ``""``.
        summary: One line for the help table.
        options: ``dest`` names of the options this format takes.
        runner: ``module:function`` in ``edgeseg.export`` that writes the format, imported only when used (so
            ``--help`` needs neither torch nor TensorRT).
    """

    name: str
    artefact: str
    inputs: tuple[str, ...]
    needs_gpu: bool
    requires: str
    summary: str
    options: frozenset[str]
    runner: str

    def load_runner(self) -> Callable[[ExportJob], ExportResult]:
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(f"edgeseg.export.{module}"), function)


FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("onnx", ".onnx", (".pt",), False, "",
                 "ONNX graph with edgeseg metadata; runs in the torch-free runtime, OpenCV DNN, Triton",
                 frozenset(GRAPH_OPTIONS + CHECK_OPTIONS), "onnx_export:run"),
    ExportFormat("engine", ".engine (+ .json sidecar)", (".pt", ".onnx"), True, "tensorrt>=10.3",
                 "TensorRT plan built on this GPU from the precision-carrying ONNX (strongly typed network)",
                 frozenset(GRAPH_OPTIONS + CHECK_OPTIONS + ENGINE_OPTIONS), "tensorrt_build:run"),
    ExportFormat("triton", "folder (model repository)", (".pt", ".onnx", ".engine", ".plan"), False, "",
                 "Triton model repository: model.onnx, model.plan or model.py (Python backend), config.pbtxt, "
                 "labels.txt",
                 frozenset(GRAPH_OPTIONS + CHECK_OPTIONS + TRITON_OPTIONS), "triton:run"),
    ExportFormat("deepstream", "folder (nvinfer + deepstream-app configs)", (".pt",), False, "",
                 "DeepStream nvinfer segmentation config and a deepstream-app config for N sources",
                 # nvinfer does its own argmax on logits, so --confidence (which rides on --fuse post) is refused
                 frozenset(GRAPH_OPTIONS + CHECK_OPTIONS + DEEPSTREAM_OPTIONS) - {"confidence"}, "deepstream:run"),
)

FORMAT_NAMES = tuple(fmt.name for fmt in FORMATS)


def get_format(name: str) -> ExportFormat:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise ConfigError(f"unknown export format {name!r}; choose one of {', '.join(FORMAT_NAMES)}")


def option_flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def formats_taking(dest: str) -> list[str]:
    return [fmt.name for fmt in FORMATS if dest in fmt.options]


def reject_foreign_options(fmt: ExportFormat, given: dict[str, object], defaults: dict[str, object]) -> None:
    """Refuse every option that was set (differs from its default) but that ``fmt`` does not take.

    Raises:
        ConfigError: naming the option, the format, and the formats that would take it.
    """
    for dest, value in given.items():
        if dest in defaults and value != defaults[dest] and dest not in fmt.options:
            takers = formats_taking(dest)
            raise ConfigError(f"{option_flag(dest)} does not apply to --format {fmt.name}; it is an option of "
                              f"--format {' / '.join(takers)}: drop it, or choose one of those formats")


def format_table(markdown: bool = False) -> str:
    """The format table as plain text (for ``--help``) or Markdown (for the README)."""
    header = ("format", "writes", "starts from", "GPU", "summary")
    rows = [(fmt.name, fmt.artefact, " ".join(fmt.inputs), "yes" if fmt.needs_gpu else "no",
             fmt.summary + (f" (needs {fmt.requires})" if fmt.requires else "")) for fmt in FORMATS]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + [f"| `{row[0]}` | " + " | ".join(row[1:]) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(markdown=True))
