"""``edgeseg export``: checkpoint -> ONNX, TensorRT engine, Triton model repository or DeepStream configs.

The flags map one to one onto :class:`~.api.ExportOptions` (whose fields hold the defaults) and the export is
:func:`~.api.export_checkpoint`, the call the quickstart and the benchmarks make too. Which options a format takes
comes from the table in :mod:`.formats`; an option that does not apply, or a combination that cannot work, is an
error that says what to do instead. Nothing is silently adjusted.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from .api import DEFAULTS, ExportOptions, export_checkpoint
from .formats import FORMAT_NAMES, format_table


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
    graph.add_argument("--size", metavar="HxW", help="input size (default: the checkpoint's)")
    graph.add_argument("--batch", type=int, metavar="N", help="fixed batch size (default 1)")
    graph.add_argument("--dynamic", choices=("none", "batch", "hw", "all"),
                       help="dynamic axes (default none; batch for triton)")
    graph.add_argument("--opset", type=int,
                       help="ONNX opset (%(default)s: read by ONNX Runtime, OpenCV DNN and TensorRT 10.3)")
    graph.add_argument("--precision", metavar="fp32|fp16|int8",
                       help="numeric precision carried by the graph (default %(default)s)")
    graph.add_argument("--calib", metavar="DATASET[:ROOT]",
                       help="int8 calibration images, e.g. camvid (embedded sample) or camvid:/data/camvid")
    graph.add_argument("--calib-split", help="split the calibration images come from (%(default)s)")
    graph.add_argument("--calib-images", type=int, metavar="N",
                       help="calibration images (%(default)s); below 100 warns: rare classes cover too few pixels to "
                            "set their activation ranges")
    graph.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"),
                       help="activation range estimation (%(default)s)")
    graph.add_argument("--int8-scheme", choices=("tensorrt", "cpu"),
                       help="int8 Q/DQ form: tensorrt (symmetric S8S8, what TensorRT builds; default) or cpu "
                            "(U8S8, fast on ONNX Runtime's x86 kernels, refused by TensorRT)")
    graph.add_argument("--max-drop", type=float, metavar="POINTS",
                       help="int8: mIoU points the INT8 graph may lose against FP32 on the check data (--check-data, "
                            "minus the calibration images); the layers that cost most stay in float until it holds, "
                            "else exit 1")
    graph.add_argument("--fuse", choices=("none", "pre", "post", "all"),
                       help="pre: uint8 NHWC input normalised in the graph; post: argmax in the graph, class ids out")
    graph.add_argument("--class-dtype", choices=("uint8", "int32"),
                       help="dtype of fused class ids (uint8: 4x less device-to-host traffic than int32)")
    graph.add_argument("--confidence", action="store_true",
                       help="with --fuse post/all: also output the per-pixel max softmax probability as 0-255, packed "
                            "with the class ids as an N x 2 x H x W tensor (refused by --format deepstream, whose "
                            "nvinfer does its own argmax)")
    check = parser.add_argument_group("parity check (ONNX Runtime vs PyTorch on real images)")
    check.add_argument("--check", action="store_true", help="check the exported graph; exit 1 below the thresholds")
    check.add_argument("--check-data", metavar="DATASET[:ROOT]",
                       help="images to check on (default: the checkpoint's dataset val split, else the embedded "
                            "CamVid sample)")
    check.add_argument("--check-images", type=int, metavar="N",
                       help="images to check (%(default)s; --max-drop: the whole split unless given)")
    check.add_argument("--min-agreement", type=float, metavar="FRACTION",
                       help="argmax agreement required (default 0.999 fp32, 0.99 fp16, 0.95 int8)")
    check.add_argument("--max-abs-error", type=float, metavar="X",
                       help="also require max |logit difference| <= X (logit outputs only)")
    check.add_argument("--check-report", metavar="DIR",
                       help="also write the 'edgeseg compare' report (per-class IoU change, worst images) of the "
                            "checkpoint against the exported ONNX graph, on --check-images images of the check data")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--workspace", type=float, metavar="GB", help="builder workspace in GiB (%(default)s)")
    engine.add_argument("--timing-cache", metavar="PATH", help="timing cache to load and update")
    for key in ("min", "opt", "max"):
        engine.add_argument(f"--{key}-shape", metavar="NxCxHxW",
                            help=f"{key} input shape of the dynamic profile (graph layout)")
    engine.add_argument("--gpu", type=int, help="GPU index (engine, deepstream)")
    serving = parser.add_argument_group("triton / deepstream")
    serving.add_argument("--name", help="model name in the repository / config files")
    serving.add_argument("--max-batch", type=int, help="triton max_batch_size (default 8)")
    serving.add_argument("--instances", type=int, help="triton instances per device (%(default)s)")
    serving.add_argument("--instance-kind", choices=("gpu", "cpu"), help="triton instance kind (%(default)s)")
    serving.add_argument("--triton-backend", metavar="onnxruntime|tensorrt|python",
                         help="triton backend (default: onnxruntime for .onnx, tensorrt for engines); python runs the "
                              "ONNX with ONNX Runtime in Triton's Python backend (CPU hosts, servers without it)")
    serving.add_argument("--preferred-batch", type=int, help="triton preferred batch (max/2)")
    serving.add_argument("--max-queue-delay-us", type=int, help="triton batcher delay in us (%(default)s)")
    serving.add_argument("--sources", type=int, help="deepstream: number of input streams (%(default)s)")
    serving.add_argument("--source", action="append", metavar="URI",
                         help="deepstream source URI (repeatable, cycled): file://, rtsp://, /dev/videoN, csi://N")
    serving.add_argument("--segmentation-threshold", type=float,
                         help="deepstream: pixels whose best logit is below it stay unclassified (default: none)")
    parser.set_defaults(**DEFAULTS)  # every option's default comes from ExportOptions


def run_export(args: argparse.Namespace, log=print) -> int:
    options = ExportOptions(**{f.name: getattr(args, f.name) for f in fields(ExportOptions)})
    result = export_checkpoint(args.checkpoint, args.format, options, out=args.out, log=log)
    for line in result.next_steps:
        log(line)
    return 0 if result.passed else 1
