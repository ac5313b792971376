"""The export stage as a library: :func:`export_checkpoint` writes any format of the table in :mod:`.formats`.

``edgeseg export``, the quickstart and the benchmarks all call it, so a checkpoint is exported (INT8 calibration and
parity check included) one way. Each format's runner (named in its row of the table) gets an :class:`ExportJob`,
whose :meth:`ExportJob.export_graph` is the shared checkpoint -> ONNX -> parity step, and returns an
:class:`ExportResult`. Nothing heavy is imported here, so the CLI's ``--help`` starts without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.runtime.errors import ConfigError, DataError

from .formats import (CHECK_OPTIONS, DEFAULT_OPSET, GRAPH_OPTIONS, ExportFormat, get_format, option_flag,
                      reject_foreign_options)

if TYPE_CHECKING:
    from .check import ParityResult
    from .int8_budget import Int8Budget
    from .onnx_export import OnnxExport, OnnxOptions

Log = Callable[[str], None]


@dataclass
class ExportOptions:
    """Every option of ``edgeseg export`` with its default, the only place defaults are written.

    Field names are the CLI flags' ``dest`` (``--calib-images`` -> ``calib_images``); an option counts as given
    when it differs from its default, and a format refuses given options that it does not take (see
    :mod:`.formats`). Sizes and shapes take the CLI's text forms (``"360x480"``, ``"1x3x360x480"``) or tuples.
    """

    size: str | Sequence[int] | None = None
    batch: int | None = None
    dynamic: str | None = None
    opset: int = DEFAULT_OPSET
    precision: str = "fp32"
    calib: str | None = None
    calib_split: str = "train"
    calib_images: int = 32
    calib_method: str = "minmax"
    int8_scheme: str = "tensorrt"
    max_drop: float | None = None
    fuse: str = "none"
    class_dtype: str = "uint8"
    confidence: bool = False
    check: bool = False
    check_data: str | None = None
    check_images: int = 8
    min_agreement: float | None = None
    max_abs_error: float | None = None
    check_report: str | None = None
    workspace: float = 4.0
    timing_cache: str | None = None
    min_shape: str | Sequence[int] | None = None
    opt_shape: str | Sequence[int] | None = None
    max_shape: str | Sequence[int] | None = None
    gpu: int = 0
    name: str | None = None
    max_batch: int | None = None
    instances: int = 1
    instance_kind: str = "gpu"
    triton_backend: str | None = None
    preferred_batch: int | None = None
    max_queue_delay_us: int = 100
    sources: int = 1
    source: list[str] | None = None
    segmentation_threshold: float | None = None

    def given(self, dest: str) -> bool:
        return getattr(self, dest) != DEFAULTS[dest]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(ExportOptions)}

MIN_CALIB_IMAGES = 100
"""Fewer INT8 calibration images than this draw a warning: a segmentation network's activation ranges are set by
every class, and rare ones (poles, signs, cyclists) cover so few pixels that a small set can miss their extremes."""


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        format: The ``--format`` written.
        path: The artefact: the ``.onnx`` or ``.engine`` file, or the repository / config folder.
        passed: False when the parity check failed (then nothing past the ONNX file was written).
        onnx: The ONNX export, when the checkpoint was exported (None when starting from an exported file).
        parity: One result per checked size (empty without ``check``).
        next_steps: Lines telling the user how to use the artefact.
    """

    format: str
    path: Path
    passed: bool = True
    onnx: OnnxExport | None = None
    parity: list[ParityResult] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


@dataclass
class GraphExport:
    """The checkpoint exported to ONNX by :meth:`ExportJob.export_graph`, with the graph options and parity."""

    onnx: OnnxExport
    options: OnnxOptions
    parity: list[ParityResult]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.parity)


@dataclass
class ExportJob:
    """One export as a runner sees it: the source file, the format, the options, ``--out`` and the log."""

    source: Path
    format: ExportFormat
    options: ExportOptions
    out: Path | None
    log: Log

    def export_graph(self, out_path: Path | None = None, out_dir: Path | None = None, *,
                     default_dynamic: str | None = None, default_batch: int = 1,
                     channel_rescale: bool = False) -> GraphExport:
        """Export the checkpoint to ONNX (INT8-calibrated when asked) and run the parity check when asked.

        Without ``out_path`` the file gets its default name in ``out_dir`` (default: beside the checkpoint). The
        keywords are the format's own graph defaults (Triton: batch-dynamic; DeepStream: one batch per source,
        per-channel std folded into the graph for nvinfer's single scale factor).
        """
        from edgeseg.runtime.sizes import parse_size
        from edgeseg.training.checkpoint import build_model_from_card, load_checkpoint

        from . import onnx_export
        from .precision import load_calibration_images

        opts = self.options
        card = load_checkpoint(self.source)
        model = build_model_from_card(card).eval()
        size = parse_size(opts.size, "--size") if opts.size is not None else tuple(card["input_size"])
        dynamic = opts.dynamic or default_dynamic
        dynamic = None if dynamic == "none" else dynamic
        batch = opts.batch if opts.batch is not None else default_batch
        graph = onnx_export.OnnxOptions(size=size, batch=batch, dynamic=dynamic, opset=opts.opset,
                                        precision=opts.precision, fuse=opts.fuse, class_dtype=opts.class_dtype,
                                        confidence=opts.confidence, channel_rescale=channel_rescale,
                                        calib_method=opts.calib_method, int8_scheme=opts.int8_scheme)
        if out_path is None:
            name = default_onnx_name(card["model"]["name"], graph.size, graph.precision, dynamic, batch, graph.fuse)
            out_path = (out_dir or self.source.parent) / name
        calibration = budget = None
        if graph.precision == "int8":
            calibration = load_calibration_images(opts.calib or "", opts.calib_split, opts.calib_images)
            self.log(f"int8: calibrating on {len(calibration)} images of {opts.calib} ({opts.calib_split})")
            if len(calibration) < MIN_CALIB_IMAGES:
                self.log(f"warning: {len(calibration)} calibration images is below the {MIN_CALIB_IMAGES} a "
                         "segmentation network needs for reliable activation ranges (rare classes cover few pixels); "
                         "raise --calib-images")
            if opts.max_drop is not None:
                budget = self._budget(card, calibration, opts.max_drop)
        result = onnx_export.export_onnx(model, card, graph, out_path, self.source.name, calibration, budget)
        self.log(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB, opset {graph.opset})")
        for spec in result.io:
            shape = "x".join("?" if d is None else str(d) for d in spec.shape)
            self.log(f"  {'input ' if spec.is_input else 'output'} {spec.name}: {spec.dtype} {shape}")
        for note in result.notes:
            self.log(f"  {note}")
        parity = self._parity(model, result.path, card, graph.size) if opts.check else []
        if opts.check_report:
            if budget is not None:
                from .int8_budget import write_budget_report

                report = write_budget_report(opts.check_report, result.meta.extra["int8_budget"],
                                             f"{len(calibration or [])} images of {opts.calib} ({opts.calib_split})")
                self.log(f"int8 budget report: {report}")
            self._check_report(result.path, card)
        return GraphExport(result, graph, parity)

    def _budget(self, card: dict, calibration: list, max_drop: float) -> Int8Budget:
        """``--max-drop``: the budget search, on labelled check data (``check_data``, else the checkpoint's dataset
        val split, else the embedded CamVid sample) without the calibration images; all images unless
        ``--check-images`` is given."""
        from .int8_budget import Int8Budget, load_check_set

        opts = self.options
        data = (card.get("config") or {}).get("data") or {}
        if opts.check_data:
            spec, split = opts.check_data, "val"
        else:
            spec, split = data.get("dataset") or "camvid", data.get("val_split") or "val"
        count = opts.check_images if opts.given("check_images") else None
        check = load_check_set(spec, split, count, calibration)
        if check.overlap:
            self.log(f"int8 budget: {check.overlap} check image(s) of {check.spec} are calibration images and are "
                     "left out")
        return Int8Budget(max_drop, check, self.log)

    def _check_report(self, onnx_path: Path, card: dict) -> None:
        """``--check-report``: the ``edgeseg compare`` report of the checkpoint against the graph just written."""
        import edgeseg.training.inference  # noqa: F401  (registers the .pt backend)
        from edgeseg.runtime.compare import compare_models
        from edgeseg.runtime.datasets import open_dataset

        spec = self.options.check_data or ((card.get("config") or {}).get("data") or {}).get("dataset") or "camvid"
        try:
            dataset = open_dataset(spec, "val")
        except DataError as err:
            self.log(f"check report: {spec} is not readable here ({err}); using the embedded CamVid sample")
            dataset = open_dataset("camvid", "val")
        report = compare_models([self.source, onnx_path], dataset, self.options.check_report,
                                limit=self.options.check_images)
        self.log(f"check report: {report.markdown_path} ({report.summary_line()})")

    def failed(self, graph: GraphExport, what: str) -> ExportResult:
        """The result of an export whose parity check failed: the ONNX file stays, ``what`` was not written."""
        self.log(f"parity check failed: {what} not written")
        return ExportResult(self.format.name, graph.onnx.path, False, graph.onnx, graph.parity)

    def _check_images(self, card: dict) -> tuple[str, list]:
        """Images for the check: ``check_data``, else the checkpoint's dataset val split, else the embedded sample."""
        from .precision import load_calibration_images as load_images

        count = self.options.check_images
        if count < 1:
            raise ConfigError(f"--check-images must be positive, got {count}")
        if self.options.check_data:
            return self.options.check_data, load_images(self.options.check_data, "val", count, "check data")
        data = (card.get("config") or {}).get("data") or {}
        spec, split = data.get("dataset"), data.get("val_split") or "val"
        if spec:
            try:
                return f"{spec} ({split})", load_images(spec, split, count, "check data")
            except DataError as err:
                self.log(f"check: the checkpoint's dataset is not readable here ({err}); using the embedded CamVid "
                         "sample")
        return "camvid (embedded sample)", load_images("camvid", "val", count, "check data")

    def _parity(self, model, onnx_path: Path, card: dict, size: tuple[int, int]) -> list[ParityResult]:
        from .check import DEFAULT_MIN_AGREEMENT, TRAINED_SIZE_WARNING, check_parity, trained_size_agreement

        opts = self.options
        label, images = self._check_images(card)
        threshold = opts.min_agreement if opts.min_agreement is not None else DEFAULT_MIN_AGREEMENT[opts.precision]
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--min-agreement is a fraction in [0, 1], got {threshold}")
        self.log(f"check: ONNX Runtime (CPU) vs PyTorch on {len(images)} images of {label}")
        results = check_parity(model, onnx_path, card, images, size, threshold, opts.max_abs_error)
        for result in results:
            self.log("  " + result.describe())
        agreement = trained_size_agreement(model, onnx_path, card, images, size)
        if agreement is not None:
            trained = "x".join(str(v) for v in card["input_size"])
            self.log(f"  against the checkpoint at its trained size {trained}: {100 * agreement:.2f}% of pixels "
                     "agree")
            if agreement < TRAINED_SIZE_WARNING:
                self.log(f"warning: at {size[0]}x{size[1]} the export changes {100 * (1 - agreement):.1f}% of the "
                         f"predictions the checkpoint makes at its trained size {trained}: the size itself costs "
                         "accuracy")
        return results


def default_onnx_name(model: str, size: tuple[int, int], precision: str, dynamic: str | None, batch: int,
                      fuse: str) -> str:
    """``<model>_<H>x<W>_<precision>[_b<N>|_dynbatch][_fused...].onnx`` (``dynamic`` replaces HxW for free H/W)."""
    parts = [model, "dynamic" if dynamic in ("hw", "all") else f"{size[0]}x{size[1]}", precision]
    if dynamic in ("batch", "all"):
        parts.append("dynbatch")
    elif batch != 1:
        parts.append(f"b{batch}")
    if fuse != "none":
        parts.append({"pre": "fusedpre", "post": "fusedpost", "all": "fused"}[fuse])
    return "_".join(parts) + ".onnx"


def validate(fmt: ExportFormat, source: Path, options: ExportOptions) -> None:
    """The rules that hold for every format, checked before any work starts (a format's runner checks its own)."""
    reject_foreign_options(fmt, options.as_dict(), DEFAULTS)
    suffix = source.suffix.lower()
    if suffix not in fmt.inputs:
        raise ConfigError(f"--format {fmt.name} starts from {' / '.join(fmt.inputs)} files, not {source}")
    if suffix != ".pt":
        given = [option_flag(d) for d in GRAPH_OPTIONS + CHECK_OPTIONS if options.given(d)]
        if given:
            raise ConfigError(f"{', '.join(given)} set(s) how a checkpoint is exported, but {source} is already "
                              "exported: pass the checkpoint (.pt) instead, or drop them")
    if options.precision == "int8" and options.calib is None:
        raise ConfigError("--precision int8 needs calibration images: add --calib DATASET[:ROOT] (e.g. --calib camvid "
                          "for the embedded CamVid sample, or --calib camvid:/data/camvid)")
    calib_given = [option_flag(d) for d in ("calib", "calib_split", "calib_images", "calib_method", "int8_scheme",
                                            "max_drop") if options.given(d)]
    if options.precision != "int8" and calib_given:
        raise ConfigError(f"{', '.join(calib_given)} only apply to --precision int8")
    for dest in ("class_dtype", "confidence"):
        if options.fuse not in ("post", "all") and options.given(dest):
            raise ConfigError(f"{option_flag(dest)} applies to fused class ids: add --fuse post (or all)")
    if options.batch is not None and options.dynamic in ("batch", "all"):
        raise ConfigError("--batch fixes the batch size, --dynamic batch frees it: use one (an engine's batch range "
                          "is set with --min-shape/--opt-shape/--max-shape)")
    if options.max_drop is not None and options.max_drop < 0:
        raise ConfigError(f"--max-drop is a number of mIoU points, 0 or more; got {options.max_drop}")
    budget_takes = ("check_data", "check_images", "check_report") if options.max_drop is not None else ()
    check_only = [option_flag(d) for d in CHECK_OPTIONS
                  if d != "check" and d not in budget_takes and options.given(d)]
    if check_only and not options.check:
        raise ConfigError(f"{', '.join(check_only)} configure the parity check: add --check")


def export_checkpoint(source: str | Path, format: str = "onnx", options: ExportOptions | None = None,
                      out: str | Path | None = None, log: Log = print) -> ExportResult:
    """Export ``source`` (a checkpoint, or an exported file where the format takes one) to ``format``.

    Args:
        source: An edgeseg checkpoint (``.pt``), or an ``.onnx`` / ``.engine`` where the format's row allows it.
        format: A name of the format table (:data:`.formats.FORMAT_NAMES`).
        options: Export options (defaults: :class:`ExportOptions`); ``check=True`` runs the parity check.
        out: The output file or folder (default: beside the source, as the CLI's ``--out`` help says).
        log: Where progress lines go (``lambda line: None`` for silence).

    Raises:
        ConfigError: an option the format does not take, or a combination that cannot work, before any work.
        DataError, ModelFormatError, BackendUnavailable: unreadable data or models, a missing TensorRT.
    """
    fmt = get_format(format)
    options = options or ExportOptions()
    source = Path(source)
    validate(fmt, source, options)
    return fmt.load_runner()(ExportJob(source, fmt, options, Path(out) if out else None, log))
