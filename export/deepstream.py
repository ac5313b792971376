"""DeepStream configs: an ``nvinfer`` segmentation config for the exported ONNX and a ``deepstream-app`` config.

nvinfer normalises every channel as ``y = net-scale-factor * (x - offset[c])``: per-channel offsets but a single
scale. The zoo's networks use per-channel std (ImageNet's 0.229/0.224/0.225), so the export for DeepStream states
one shared std (the mean of the three) and multiplies each channel by ``shared / std[c]`` inside the graph, where
TensorRT folds it into the first convolution. Normalisation is then exact, not approximated, and the ONNX metadata
states the shared std, so the edgeseg runtime also runs the same file correctly.

nvinfer feeds float NCHW planes and does the per-pixel argmax of a segmentation network itself (``network-type=2``),
so this format takes neither fused pre-processing nor fused argmax, and one fixed input size (``infer-dims``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.runtime.errors import ConfigError
from edgeseg.runtime.atomic_files import write_text_atomic
from edgeseg.runtime.metadata import ModelMeta

from .onnx_graph import TensorSpec

if TYPE_CHECKING:
    from .api import ExportJob, ExportResult

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
DEFAULT_SOURCE = "file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_720p.mp4"
DEFAULT_THRESHOLD = -1e6
"""nvinfer marks a pixel unclassified when its best output is below ``segmentation-threshold``. The network
outputs logits, not probabilities, so the default lies below any logit: every pixel gets its argmax class, as in
edgeseg's runtime."""
MUX_SIZE = (1280, 720)


@dataclass
class DeepStreamOptions:
    """Pipeline settings.

    Attributes:
        name: Base name of the config files (default: the model name).
        sources: Number of input streams; also the inference batch size.
        source_uris: URIs cycled over the sources: ``file://...``, ``rtsp://...``, ``/dev/videoN`` (V4L2) or
            ``csi://N`` (Jetson CSI camera).
        segmentation_threshold: See :data:`DEFAULT_THRESHOLD`.
        gpu: GPU index for every component.
    """

    name: str | None = None
    sources: int = 1
    source_uris: list[str] = field(default_factory=lambda: [DEFAULT_SOURCE])
    segmentation_threshold: float = DEFAULT_THRESHOLD
    gpu: int = 0

    def __post_init__(self) -> None:
        if self.sources < 1:
            raise ConfigError(f"--sources must be a positive integer, got {self.sources}")
        if not self.source_uris:
            self.source_uris = [DEFAULT_SOURCE]
        for uri in self.source_uris:
            source_group(uri, 0, self.gpu)  # validates the URI form early


def source_group(uri: str, index: int, gpu: int) -> list[str]:
    """The ``[sourceN]`` group of deepstream-app for one URI."""
    lines = [f"[source{index}]", "enable=1"]
    if uri.startswith(("file://", "rtsp://", "http://", "https://")):
        lines += ["type=3", f"uri={uri}", "num-sources=1"]
    elif uri.startswith("/dev/video") and uri[len("/dev/video"):].isdigit():
        lines += ["type=1", f"camera-v4l2-dev-node={uri[len('/dev/video'):]}", "camera-width=1280",
                  "camera-height=720", "camera-fps-n=30", "camera-fps-d=1"]
    elif uri.startswith("csi://") and uri[len("csi://"):].isdigit():
        lines += ["type=5", f"camera-csi-sensor-id={uri[len('csi://'):]}", "camera-width=1280", "camera-height=720",
                  "camera-fps-n=30", "camera-fps-d=1"]
    else:
        raise ConfigError(f"--source {uri!r} is not a DeepStream source: use file:///path/video.mp4, rtsp://..., "
                          "/dev/videoN (USB camera) or csi://N (Jetson CSI camera)")
    return lines + [f"gpu-id={gpu}", ""]


def check_meta_for_nvinfer(meta: ModelMeta) -> None:
    if meta.fused_pre or meta.fused_post:
        raise ConfigError("DeepStream's nvinfer feeds float NCHW planes and does the segmentation argmax itself: "
                          "export without --fuse for --format deepstream")
    if meta.static_size is None:
        raise ConfigError("nvinfer runs one fixed input size (infer-dims): export --format deepstream with a static "
                          "--size instead of --dynamic hw/all")
    if len(set(meta.std)) != 1:
        raise ConfigError(f"nvinfer has a single net-scale-factor, but this graph expects per-channel std {meta.std}; "
                          "export it with --format deepstream, which folds the per-channel part into the graph")


def engine_file_name(onnx_name: str, batch: int, gpu: int, precision: str) -> str:
    """The file name nvinfer gives the engine it builds from ``onnx_name``, so the second start reuses it."""
    return f"{onnx_name}_b{batch}_gpu{gpu}_{precision}.engine"


def nvinfer_config(meta: ModelMeta, onnx_name: str, batch: int, output: TensorSpec, labels_name: str,
                   options: DeepStreamOptions) -> str:
    """The ``[property]`` config of the Gst-nvinfer element for this segmentation model."""
    check_meta_for_nvinfer(meta)
    height, width = meta.static_size
    scale = 1.0 / (255.0 * meta.std[0])
    offsets = ";".join(f"{255.0 * m:.4f}" for m in meta.mean)
    per_channel = meta.extra.get("per_channel_std")
    folded = (f"# The graph's std is {meta.std[0]:.6f} on every channel; the per-channel std {per_channel} of the "
              "checkpoint is folded into the graph, so this one scale is exact." if per_channel else
              f"# The checkpoint uses one std ({meta.std[0]:.6f}) for all channels.")
    lines = [
        f"# nvinfer config for {meta.model} ({meta.precision}), written by edgeseg export.",
        "# y = net-scale-factor * (x - offsets): x is the 0..255 RGB pixel.",
        folded,
        "[property]",
        f"gpu-id={options.gpu}",
        f"net-scale-factor={scale:.10f}",
        f"offsets={offsets}",
        "model-color-format=0",
        f"onnx-file={onnx_name}",
        f"model-engine-file={engine_file_name(onnx_name, batch, options.gpu, meta.precision)}",
        f"labelfile-path={labels_name}",
        f"infer-dims=3;{height};{width}",
        "network-input-order=0",
        f"batch-size={batch}",
        f"network-mode={NETWORK_MODES[meta.precision]}",
        "network-type=2",
        f"num-detected-classes={meta.num_classes}",
        "# Logits, not probabilities: see edgeseg.export.deepstream.DEFAULT_THRESHOLD.",
        f"segmentation-threshold={options.segmentation_threshold:g}",
        f"output-blob-names={output.name}",
        "gie-unique-id=1",
        "process-mode=1",
        "interval=0",
        "maintain-aspect-ratio=0",
    ]
    return "\n".join(lines) + "\n"


def app_config(meta: ModelMeta, infer_config_name: str, options: DeepStreamOptions) -> str:
    """A ``deepstream-app`` config: N sources -> streammux -> nvinfer -> nvsegvisual -> tiled display."""
    height, width = meta.static_size
    columns = 1
    while columns * columns < options.sources:
        columns += 1
    rows = -(-options.sources // columns)
    lines = ["# deepstream-app -c <this file>; written by edgeseg export.", "[application]",
             "enable-perf-measurement=1", "perf-measurement-interval-sec=5", "",
             "[tiled-display]", f"enable={1 if options.sources > 1 else 0}", f"rows={rows}", f"columns={columns}",
             f"width={MUX_SIZE[0]}", f"height={MUX_SIZE[1]}", f"gpu-id={options.gpu}", ""]
    for index in range(options.sources):
        lines += source_group(options.source_uris[index % len(options.source_uris)], index, options.gpu)
    live = all(not uri.startswith("file://") for uri in options.source_uris)
    lines += ["[streammux]", f"gpu-id={options.gpu}", f"live-source={1 if live else 0}",
              f"batch-size={options.sources}", "batched-push-timeout=40000", f"width={MUX_SIZE[0]}",
              f"height={MUX_SIZE[1]}", "enable-padding=0", "",
              "[primary-gie]", "enable=1", f"gpu-id={options.gpu}", f"batch-size={options.sources}",
              "gie-unique-id=1", f"config-file={infer_config_name}", "",
              "# nvsegvisual draws the class map nvinfer attached to each frame.",
              "[segvisual]", "enable=1", f"gpu-id={options.gpu}", f"batch-size={options.sources}",
              f"width={width}", f"height={height}", "",
              "[osd]", "enable=0", "",
              "[sink0]", "enable=1", "type=2", "sync=0", f"gpu-id={options.gpu}", ""]
    return "\n".join(lines)


def write_deepstream_configs(folder: str | Path, meta: ModelMeta, onnx_name: str, output: TensorSpec,
                             options: DeepStreamOptions) -> tuple[Path, Path, Path]:
    """Write the nvinfer config, the deepstream-app config and the labels file into ``folder`` (atomically).

    Returns (nvinfer config, app config, labels file). The ONNX file ``onnx_name`` must already be in ``folder``.
    """
    folder = Path(folder)
    name = options.name or meta.model
    batch = meta.batch or options.sources
    if meta.batch is not None and meta.batch != options.sources:
        raise ConfigError(f"the graph has a fixed batch of {meta.batch} but --sources is {options.sources}: "
                          "nvinfer batches one frame per source, so export with --batch equal to --sources")
    labels = write_text_atomic(folder / f"{name}_labels.txt", "\n".join(meta.classes) + "\n")
    infer = write_text_atomic(folder / f"config_infer_{name}.txt",
                              nvinfer_config(meta, onnx_name, batch, output, labels.name, options))
    app = write_text_atomic(folder / f"deepstream_app_{name}.txt", app_config(meta, infer.name, options))
    return infer, app, labels


def run(job: ExportJob) -> ExportResult:
    """``--format deepstream``: the checkpoint exported for nvinfer (checked when asked), then both configs."""
    from .api import ExportResult

    opts = job.options
    if opts.int8_scheme == "cpu":
        raise ConfigError("--int8-scheme cpu writes Q/DQ that TensorRT does not build, and --format deepstream "
                          "needs TensorRT: use --int8-scheme tensorrt")
    if opts.fuse != "none":
        raise ConfigError("--format deepstream cannot take --fuse: nvinfer feeds float NCHW planes and does the "
                          "segmentation argmax itself")
    if opts.dynamic in ("hw", "all"):
        raise ConfigError("--format deepstream needs a fixed input size (nvinfer's infer-dims): drop --dynamic "
                          "hw/all and choose it with --size")
    options = DeepStreamOptions(name=opts.name, sources=opts.sources, source_uris=list(opts.source or []),
                                segmentation_threshold=(DEFAULT_THRESHOLD if opts.segmentation_threshold is None
                                                        else opts.segmentation_threshold), gpu=opts.gpu)
    folder = job.out or job.source.parent / "deepstream"
    graph = job.export_graph(out_dir=folder, default_batch=opts.sources, channel_rescale=True)
    if not graph.passed:
        return job.failed(graph, "DeepStream configs")
    output = next(spec for spec in graph.onnx.io if not spec.is_input)
    infer, app, labels = write_deepstream_configs(folder, graph.onnx.meta, graph.onnx.path.name, output, options)
    job.log(f"wrote {infer}, {app} and {labels}")
    return ExportResult("deepstream", folder, True, graph.onnx, graph.parity,
                        [f"run it: cd {folder} && deepstream-app -c {app.name}"])
