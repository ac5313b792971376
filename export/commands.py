"""``edgeseg export``: checkpoint -> ONNX, TensorRT engine, Triton model repository or DeepStream configs.

Which options a format takes comes from the table in :mod:`.formats`; an option that does not apply, or a
combination that cannot work (INT8 without calibration images, a fused argmax for DeepStream), is an error that
says what to do instead. Nothing is silently adjusted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgeseg.runtime.errors import ConfigError, DataError
from edgeseg.runtime.sizes import parse_size

from .formats import (
    CHECK_OPTIONS,
    DEFAULT_OPSET,
    FORMAT_NAMES,
    GRAPH_OPTIONS,
    format_table,
    get_format,
    option_flag,
    reject_foreign_options,
)

OPTION_DEFAULTS: dict[str, object] = {
    "size": None, "batch": None, "dynamic": None, "opset": DEFAULT_OPSET, "precision": "fp32", "calib": None,
    "calib_split": "train", "calib_images": 32, "calib_method": "minmax", "int8_scheme": "tensorrt", "fuse": "none",
    "class_dtype": "uint8",
    "check": False, "check_data": None, "check_images": 8, "min_agreement": None, "max_abs_error": None,
    "workspace": 4.0, "timing_cache": None, "min_shape": None, "opt_shape": None, "max_shape": None, "gpu": 0,
    "name": None, "max_batch": None, "instances": 1, "instance_kind": "gpu", "preferred_batch": None,
    "max_queue_delay_us": 100, "sources": 1, "source": None, "segmentation_threshold": None, "triton_backend": None,
}
"""Defaults of every option; an option counts as given when its value differs from this."""

DYNAMIC_DEFAULT = {"triton": "batch"}
"""Formats whose graphs are batch-dynamic unless --dynamic says otherwise (Triton batches requests)."""


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("formats (options a format does not take are refused):\n" + format_table() + "\n\nexamples:\n"
                     "  edgeseg export runs/student/best.pt --check\n"
                     "  edgeseg export best.pt --precision int8 --calib camvid:/data/camvid --check\n"
                     "  edgeseg export best.pt --format engine --dynamic hw --timing-cache trt.cache\n"
                     "  edgeseg export best.pt --format triton --out model_repository\n")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="edgeseg checkpoint (.pt); --format engine also takes an exported .onnx, --format triton "
                             "an .onnx or .engine")
    parser.add_argument("--format", default="onnx", metavar="|".join(FORMAT_NAMES), help="what to write (onnx)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="output file (onnx, engine) or folder (triton, deepstream); default beside the "
                             "checkpoint, named <model>_<H>x<W>_<precision>[_fused].onnx")
    graph = parser.add_argument_group("graph")
    graph.add_argument("--size", default=None, metavar="HxW", help="input size (default: the checkpoint's)")
    graph.add_argument("--batch", type=int, default=None, metavar="N", help="fixed batch size (default 1)")
    graph.add_argument("--dynamic", default=None, choices=("none", "batch", "hw", "all"),
                       help="dynamic axes (default none; batch for triton)")
    graph.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                       help=f"ONNX opset ({DEFAULT_OPSET}: read by ONNX Runtime, OpenCV DNN and TensorRT 10.3)")
    graph.add_argument("--precision", default="fp32", metavar="fp32|fp16|int8",
                       help="numeric precision carried by the graph (default fp32)")
    graph.add_argument("--calib", default=None, metavar="DATASET[:ROOT]",
                       help="int8 calibration images, e.g. camvid (embedded sample) or camvid:/data/camvid")
    graph.add_argument("--calib-split", default="train", help="split the calibration images come from (train)")
    graph.add_argument("--calib-images", type=int, default=32, metavar="N", help="calibration images (32)")
    graph.add_argument("--calib-method", default="minmax", choices=("minmax", "entropy", "percentile"),
                       help="activation range estimation (minmax)")
    graph.add_argument("--int8-scheme", default="tensorrt", choices=("tensorrt", "cpu"),
                       help="int8 Q/DQ form: tensorrt (symmetric S8S8, what TensorRT builds; default) or cpu "
                            "(U8S8, fast on ONNX Runtime's x86 kernels, refused by TensorRT)")
    graph.add_argument("--fuse", default="none", choices=("none", "pre", "post", "all"),
                       help="pre: uint8 NHWC input normalised in the graph; post: argmax in the graph, class ids out")
    graph.add_argument("--class-dtype", default="uint8", choices=("uint8", "int32"),
                       help="dtype of fused class ids (uint8: 4x less device-to-host traffic than int32)")
    check = parser.add_argument_group("parity check (ONNX Runtime vs PyTorch on real images)")
    check.add_argument("--check", action="store_true", help="check the exported graph; exit 1 below the thresholds")
    check.add_argument("--check-data", default=None, metavar="DATASET[:ROOT]",
                       help="images to check on (default: the checkpoint's dataset val split, else the embedded "
                            "CamVid sample)")
    check.add_argument("--check-images", type=int, default=8, metavar="N", help="images to check (8)")
    check.add_argument("--min-agreement", type=float, default=None, metavar="FRACTION",
                       help="argmax agreement required (default 0.999 fp32, 0.99 fp16, 0.95 int8)")
    check.add_argument("--max-abs-error", type=float, default=None, metavar="X",
                       help="also require max |logit difference| <= X (logit outputs only)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--workspace", type=float, default=4.0, metavar="GB", help="builder workspace (4 GiB)")
    engine.add_argument("--timing-cache", default=None, metavar="PATH", help="timing cache to load and update")
    for key in ("min", "opt", "max"):
        engine.add_argument(f"--{key}-shape", default=None, metavar="NxCxHxW",
                            help=f"{key} input shape of the dynamic profile (graph layout)")
    engine.add_argument("--gpu", type=int, default=0, help="GPU index (engine, deepstream)")
    serving = parser.add_argument_group("triton / deepstream")
    serving.add_argument("--name", default=None, help="model name in the repository / config files")
    serving.add_argument("--max-batch", type=int, default=None, help="triton max_batch_size (default 8)")
    serving.add_argument("--instances", type=int, default=1, help="triton instances per device (1)")
    serving.add_argument("--instance-kind", default="gpu", choices=("gpu", "cpu"), help="triton instance kind (gpu)")
    serving.add_argument("--triton-backend", default=None, metavar="onnxruntime|tensorrt|python",
                         help="triton backend (default: onnxruntime for .onnx, tensorrt for engines); python runs the "
                              "ONNX with ONNX Runtime in Triton's Python backend (CPU hosts, servers without it)")
    serving.add_argument("--preferred-batch", type=int, default=None, help="triton preferred batch (max/2)")
    serving.add_argument("--max-queue-delay-us", type=int, default=100, help="triton batcher delay (100 us)")
    serving.add_argument("--sources", type=int, default=1, help="deepstream: number of input streams (1)")
    serving.add_argument("--source", default=None, action="append", metavar="URI",
                         help="deepstream source URI (repeatable, cycled): file://, rtsp://, /dev/videoN, csi://N")
    serving.add_argument("--segmentation-threshold", type=float, default=None,
                         help="deepstream: pixels whose best logit is below it stay unclassified (default: none)")


def _given(args: argparse.Namespace, dest: str) -> bool:
    return getattr(args, dest) != OPTION_DEFAULTS[dest]


def validate(args: argparse.Namespace) -> None:
    """Every cross-option rule, before any work starts."""
    fmt = get_format(args.format)
    reject_foreign_options(fmt, vars(args), OPTION_DEFAULTS)
    suffix = Path(args.checkpoint).suffix.lower()
    if suffix not in fmt.inputs:
        raise ConfigError(f"--format {fmt.name} starts from {' / '.join(fmt.inputs)} files, not {args.checkpoint}")
    if suffix != ".pt":
        given = [option_flag(d) for d in GRAPH_OPTIONS + CHECK_OPTIONS if _given(args, d)]
        if given:
            raise ConfigError(f"{', '.join(given)} set(s) how a checkpoint is exported, but {args.checkpoint} is "
                              "already exported: pass the checkpoint (.pt) instead, or drop them")
    if args.precision == "int8" and args.calib is None:
        raise ConfigError("--precision int8 needs calibration images: add --calib DATASET[:ROOT] (e.g. --calib camvid "
                          "for the embedded CamVid sample, or --calib camvid:/data/camvid)")
    calib_given = [option_flag(d) for d in ("calib", "calib_split", "calib_images", "calib_method", "int8_scheme")
                   if _given(args, d)]
    if args.precision != "int8" and calib_given:
        raise ConfigError(f"{', '.join(calib_given)} only apply to --precision int8")
    if args.format in ("engine", "deepstream") and args.int8_scheme == "cpu":
        raise ConfigError(f"--int8-scheme cpu writes Q/DQ that TensorRT does not build, and --format {args.format} "
                          "needs TensorRT: use --int8-scheme tensorrt")
    if args.fuse not in ("post", "all") and _given(args, "class_dtype"):
        raise ConfigError("--class-dtype sets the dtype of fused class ids: add --fuse post (or all)")
    if args.batch is not None and args.dynamic in ("batch", "all"):
        raise ConfigError("--batch fixes the batch size, --dynamic batch frees it: use one (an engine's batch range "
                          "is set with --min-shape/--opt-shape/--max-shape)")
    if fmt.name == "deepstream":
        if args.fuse != "none":
            raise ConfigError("--format deepstream cannot take --fuse: nvinfer feeds float NCHW planes and does the "
                              "segmentation argmax itself")
        if args.dynamic in ("hw", "all"):
            raise ConfigError("--format deepstream needs a fixed input size (nvinfer's infer-dims): drop --dynamic "
                              "hw/all and choose it with --size")
    check_only = [option_flag(d) for d in CHECK_OPTIONS if d != "check" and _given(args, d)]
    if check_only and not args.check:
        raise ConfigError(f"{', '.join(check_only)} configure the parity check: add --check")


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


def check_images(card: dict, args: argparse.Namespace, log) -> tuple[str, list]:
    """Images for --check: --check-data, else the checkpoint's dataset val split, else the embedded sample."""
    from .precision import load_calibration_images as load_images

    if args.check_images < 1:
        raise ConfigError(f"--check-images must be positive, got {args.check_images}")
    if args.check_data:
        return args.check_data, load_images(args.check_data, "val", args.check_images, "check data")
    data = (card.get("config") or {}).get("data") or {}
    spec, split = data.get("dataset"), data.get("val_split") or "val"
    if spec:
        try:
            return f"{spec} ({split})", load_images(spec, split, args.check_images, "check data")
        except DataError as err:
            log(f"check: the checkpoint's dataset is not readable here ({err}); using the embedded CamVid sample")
    return "camvid (embedded sample)", load_images("camvid", "val", args.check_images, "check data")


def run_parity(model, onnx_path: Path, card: dict, size, precision: str, args, log) -> bool:
    from .check import DEFAULT_MIN_AGREEMENT, TRAINED_SIZE_WARNING, check_parity, trained_size_agreement

    label, images = check_images(card, args, log)
    threshold = args.min_agreement if args.min_agreement is not None else DEFAULT_MIN_AGREEMENT[precision]
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--min-agreement is a fraction in [0, 1], got {threshold}")
    log(f"check: ONNX Runtime (CPU) vs PyTorch on {len(images)} images of {label}")
    results = check_parity(model, onnx_path, card, images, size, threshold, args.max_abs_error)
    for result in results:
        log("  " + result.describe())
    agreement = trained_size_agreement(model, onnx_path, card, images, size)
    if agreement is not None:
        trained = "x".join(str(v) for v in card["input_size"])
        log(f"  against the checkpoint at its trained size {trained}: {100 * agreement:.2f}% of pixels agree")
        if agreement < TRAINED_SIZE_WARNING:
            log(f"warning: at {size[0]}x{size[1]} the export changes {100 * (1 - agreement):.1f}% of the "
                f"predictions the checkpoint makes at its trained size {trained}: the size itself costs accuracy")
    return all(result.passed for result in results)


def _export_checkpoint(args: argparse.Namespace, fmt_name: str, out_path: Path | None, log,
                       out_dir: Path | None = None):
    """Export the checkpoint to ONNX (and check it when asked); returns (export result, passed, graph options).

    Without ``out_path`` the file gets its default name in ``out_dir`` (default: beside the checkpoint).
    """
    from edgeseg.training.checkpoint import build_model_from_card, load_checkpoint

    from .onnx_export import OnnxOptions, export_onnx
    from .precision import ImageCalibrationReader, load_calibration_images

    source = Path(args.checkpoint)
    card = load_checkpoint(source)
    model = build_model_from_card(card).eval()
    size = parse_size(args.size, "--size") if args.size else tuple(card["input_size"])
    dynamic = args.dynamic or DYNAMIC_DEFAULT.get(fmt_name)
    dynamic = None if dynamic == "none" else dynamic
    batch = args.batch if args.batch is not None else (args.sources if fmt_name == "deepstream" else 1)
    options = OnnxOptions(size=size, batch=batch, dynamic=dynamic, opset=args.opset, precision=args.precision,
                          fuse=args.fuse, class_dtype=args.class_dtype, channel_rescale=fmt_name == "deepstream",
                          calib_method=args.calib_method, int8_scheme=args.int8_scheme)
    if out_path is None:
        name = default_onnx_name(card["model"]["name"], options.size, options.precision, dynamic, batch, options.fuse)
        out_path = (out_dir or source.parent) / name
    calibration = None
    if options.precision == "int8":
        images = load_calibration_images(args.calib, args.calib_split, args.calib_images)
        log(f"int8: calibrating on {len(images)} images of {args.calib} ({args.calib_split})")
        calibration = lambda meta: ImageCalibrationReader(images, meta, options.size)  # noqa: E731
    started = time.perf_counter()
    result = export_onnx(model, card, options, out_path, source.name, calibration)
    megabytes = result.path.stat().st_size / 1e6
    log(f"wrote {result.path} ({megabytes:.1f} MB, {time.perf_counter() - started:.1f} s, opset {options.opset})")
    for spec in result.io:
        shape = "x".join("?" if d is None else str(d) for d in spec.shape)
        log(f"  {'input ' if spec.is_input else 'output'} {spec.name}: {spec.dtype} {shape}")
    for note in result.notes:
        log(f"  {note}")
    passed = run_parity(model, result.path, card, options.size, options.precision, args, log) if args.check else True
    return result, passed, options


def run_export(args: argparse.Namespace, log=print) -> int:
    validate(args)
    fmt = args.format
    source = Path(args.checkpoint)
    out = Path(args.out) if args.out else None

    if fmt == "onnx":
        result, passed, _ = _export_checkpoint(args, fmt, out, log)
        if passed:
            log(f"next: edgeseg eval {result.path} --data camvid   |   edgeseg bench {result.path}")
        return 0 if passed else 1

    if fmt == "engine":
        return _run_engine(args, source, out, log)
    if fmt == "triton":
        return _run_triton(args, source, out, log)
    return _run_deepstream(args, source, out, log)


def _run_engine(args, source: Path, out: Path | None, log) -> int:
    from edgeseg.runtime.backends.tensorrt_engine import require_tensorrt

    from .tensorrt_build import BUILD_PURPOSE, EngineOptions, build_engine, parse_shape

    options = EngineOptions(
        workspace_gb=args.workspace, timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        min_shape=parse_shape(args.min_shape, "--min-shape") if args.min_shape else None,
        opt_shape=parse_shape(args.opt_shape, "--opt-shape") if args.opt_shape else None,
        max_shape=parse_shape(args.max_shape, "--max-shape") if args.max_shape else None, gpu=args.gpu)
    require_tensorrt(BUILD_PURPOSE)  # fail before a long export when TensorRT is missing
    size = None
    if source.suffix.lower() == ".pt":
        onnx_out = out.with_suffix(".onnx") if out else None
        result, passed, onnx_options = _export_checkpoint(args, "engine", onnx_out, log)
        if not passed:
            log("parity check failed: no engine built")
            return 1
        onnx_path, size = result.path, onnx_options.size
    else:
        onnx_path = source
    engine_path = out or onnx_path.with_suffix(".engine")
    build = build_engine(onnx_path, engine_path, options, size=size, log=log)
    log(f"wrote {build.engine} and {build.sidecar.path}")
    log(f"same build with trtexec:\n  {build.trtexec}")
    return 0


def _run_triton(args, source: Path, out: Path | None, log) -> int:
    from .onnx_graph import TensorSpec, graph_io, load_onnx, read_metadata
    from .triton import TritonOptions, write_triton_repository

    options = TritonOptions(name=args.name, max_batch=args.max_batch, instances=args.instances,
                            instance_kind=args.instance_kind, preferred_batch=args.preferred_batch,
                            max_queue_delay_us=args.max_queue_delay_us, backend=args.triton_backend)
    repo = out or source.parent / "triton"
    suffix = source.suffix.lower()
    if suffix in (".engine", ".plan"):
        from edgeseg.runtime.backends.engine_sidecar import read_sidecar

        sidecar = read_sidecar(source)  # either name the runtime accepts
        io = [TensorSpec.from_dict(tensor) for tensor in sidecar.require_io()]
        folder = write_triton_repository(source, repo, sidecar.meta, io, options, sidecar.profile_max_batch)
    elif suffix == ".onnx":
        folder = write_triton_repository(source, repo, read_metadata(source), graph_io(load_onnx(source)), options)
    else:
        with tempfile.TemporaryDirectory(prefix="edgeseg-triton-") as workdir:
            result, passed, _ = _export_checkpoint(args, "triton", Path(workdir) / "model.onnx", log)
            if not passed:
                log("parity check failed: repository not written")
                return 1
            folder = write_triton_repository(result.path, repo, result.meta, result.io, options)
    log(f"wrote Triton model {folder} (config.pbtxt, labels.txt, 1/)")
    log(f"serve it: tritonserver --model-repository {repo}")
    return 0


def _run_deepstream(args, source: Path, out: Path | None, log) -> int:
    from .deepstream import DEFAULT_THRESHOLD, DeepStreamOptions, write_deepstream_configs

    options = DeepStreamOptions(name=args.name, sources=args.sources, source_uris=list(args.source or []),
                                segmentation_threshold=(DEFAULT_THRESHOLD if args.segmentation_threshold is None
                                                        else args.segmentation_threshold), gpu=args.gpu)
    folder = out or source.parent / "deepstream"
    result, passed, _ = _export_checkpoint(args, "deepstream", None, log, out_dir=folder)
    if not passed:
        log("parity check failed: DeepStream configs not written")
        return 1
    output = next(spec for spec in result.io if not spec.is_input)
    infer, app, labels = write_deepstream_configs(folder, result.meta, result.path.name, output, options)
    log(f"wrote {infer}, {app} and {labels}")
    log(f"run it: cd {folder} && deepstream-app -c {app.name}")
    return 0
