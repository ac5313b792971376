"""PyTorch -> ONNX: the deployable graph (optionally with pre/post-processing fused in) plus its edgeseg metadata.

Exporter choice: ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based tracer. Since torch 2.9 the
default is the ``torch.export``-based exporter, whose ``dynamic_axes`` support is still incomplete and which has
broken CNN exports in other projects; for the plain convolutional networks of this zoo the tracer is the mature path
and gives the same graph on every torch release we support. The choice is recorded in the metadata (``exporter``).

Opset 17 (:data:`DEFAULT_OPSET`) is the newest opset that ONNX Runtime, OpenCV DNN and TensorRT 10.3 (JetPack 6)
all read, and it has everything the zoo needs (per-channel QuantizeLinear since 13, Resize-13 semantics).

The exported graph is simplified with onnxslim (constant folding, shape-op cleanup), checked with
``onnx.checker`` and written atomically: a failed export never leaves a half-written ``.onnx`` behind, and an
existing file is replaced only when the new one is complete.
"""

from __future__ import annotations

import datetime as _dt
import io
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from torch import nn

from edgeseg import __version__
from edgeseg.runtime.errors import ConfigError, ModelFormatError
from edgeseg.runtime.metadata import PRECISIONS, ModelMeta
from edgeseg.runtime.sizes import parse_size

from .formats import DEFAULT_OPSET
from .onnx_graph import TensorSpec, graph_io, save_onnx, set_metadata
from .precision import INT8_SCHEMES

if TYPE_CHECKING:
    from .api import ExportJob, ExportResult
    from .int8_budget import Int8Budget

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear and Resize-13
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript tracer)"

INPUT_NAME = "images"
LOGITS_NAME = "logits"
CLASSES_NAME = "classes"

DYNAMIC_CHOICES = ("batch", "hw", "all")
FUSE_CHOICES = ("none", "pre", "post", "all")
CLASS_DTYPES = {"uint8": torch.uint8, "int32": torch.int32}


@dataclass
class OnnxOptions:
    """What graph to export. Mirrors the graph options of ``edgeseg export``.

    Attributes:
        size: ``(height, width)`` traced, and fixed unless height/width are dynamic.
        batch: Fixed batch size (ignored when the batch is dynamic).
        dynamic: None, ``"batch"``, ``"hw"`` or ``"all"``.
        fuse: ``"none"``, ``"pre"`` (uint8 NHWC in, normalisation in the graph), ``"post"`` (argmax in the graph,
            class ids out) or ``"all"``.
        class_dtype: Dtype of fused class ids. uint8 is the default because the class map is what crosses from
            device to host every frame, and uint8 is 4x less traffic than int32 (255 classes at most, the runtime's
            limit anyway); int32 is what TensorRT's ArgMax yields natively, for consumers that want it uncast.
        confidence: With ``fuse_post``, also return the per-pixel maximum softmax probability (0-255) as plane 1 of
            an ``N x 2 x H x W`` output in ``class_dtype`` (see :class:`~edgeseg.runtime.metadata.ModelMeta`), so a
            deployed model can mark uncertain pixels without copying logits off the device.
        calib_method: INT8 activation-range estimator (see :mod:`.precision`).
        int8_scheme: ``tensorrt`` (symmetric S8S8 Q/DQ, what TensorRT builds) or ``cpu`` (U8S8, fast on ONNX
            Runtime's x86 CPU kernels, refused by TensorRT).
        channel_rescale: Fold per-channel std into the graph so that consumers with one scale for all channels
            (DeepStream's ``net-scale-factor``) normalise exactly; the metadata then states the shared std.
    """

    size: tuple[int, int]
    batch: int = 1
    dynamic: str | None = None
    opset: int = DEFAULT_OPSET
    precision: str = "fp32"
    fuse: str = "none"
    class_dtype: str = "uint8"
    confidence: bool = False
    channel_rescale: bool = False
    calib_method: str = "minmax"
    int8_scheme: str = "tensorrt"

    def __post_init__(self) -> None:
        if self.dynamic not in (None, *DYNAMIC_CHOICES):
            raise ConfigError(f"--dynamic must be one of {', '.join(DYNAMIC_CHOICES)}, got {self.dynamic!r}")
        if self.fuse not in FUSE_CHOICES:
            raise ConfigError(f"--fuse must be one of {', '.join(FUSE_CHOICES)}, got {self.fuse!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.int8_scheme not in INT8_SCHEMES:
            raise ConfigError(f"--int8-scheme must be one of {', '.join(INT8_SCHEMES)}, got {self.int8_scheme!r}")
        if self.class_dtype not in CLASS_DTYPES:
            raise ConfigError(f"--class-dtype must be one of {', '.join(CLASS_DTYPES)}, got {self.class_dtype!r}")
        if not MIN_OPSET <= self.opset <= onnx.defs.onnx_opset_version():
            raise ConfigError(f"--opset must lie in {MIN_OPSET}..{onnx.defs.onnx_opset_version()} (the installed "
                              f"onnx package's newest), got {self.opset}; {DEFAULT_OPSET} suits every runtime")
        if self.batch < 1:
            raise ConfigError(f"--batch must be a positive integer, got {self.batch}")
        if self.confidence and not self.fuse_post:
            raise ConfigError("--confidence rides beside fused class ids: add --fuse post (or all)")
        self.size = parse_size(self.size, "--size")

    @property
    def dynamic_batch(self) -> bool:
        return self.dynamic in ("batch", "all")

    @property
    def dynamic_hw(self) -> bool:
        return self.dynamic in ("hw", "all")

    @property
    def fuse_pre(self) -> bool:
        return self.fuse in ("pre", "all")

    @property
    def fuse_post(self) -> bool:
        return self.fuse in ("post", "all")

    @property
    def output_name(self) -> str:
        """The graph output: class ids when the argmax is fused in, logits otherwise."""
        return CLASSES_NAME if self.fuse_post else LOGITS_NAME


class DeployModel(nn.Module):
    """The network as deployed: optional in-graph normalisation before it and argmax after it.

    Args:
        model: A segmentation network mapping normalised NCHW float images to NCHW logits at input size.
        mean: Per-channel mean of RGB scaled to [0, 1] (the checkpoint's normalisation).
        std: Per-channel std, likewise.
        fuse_pre: Take uint8 NHWC RGB and cast, normalise and transpose inside the graph, so the host only
            resizes (and a GPU consumer can upload 1 byte per channel instead of 4).
        fuse_post: Return argmax class ids ``(N, H, W)`` in ``class_dtype`` instead of float logits.
        class_dtype: torch dtype of the fused class ids.
        confidence: With ``fuse_post``, return ``(N, 2, H, W)``: the class ids and the maximum softmax
            probability rounded to 0-255.
        shared_std: With a value, the graph expects input normalised with this one std for all channels and
            multiplies each channel by ``shared_std / std[c]`` first, which restores exact per-channel
            normalisation (and folds into the first convolution in TensorRT).
    """

    def __init__(self, model: nn.Module, mean, std, fuse_pre: bool = False, fuse_post: bool = False,
                 class_dtype: torch.dtype = torch.uint8, shared_std: float | None = None,
                 confidence: bool = False) -> None:
        super().__init__()
        self.model = model
        self.fuse_pre = fuse_pre
        self.fuse_post = fuse_post
        self.confidence = confidence
        self.class_dtype = class_dtype
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        if shared_std is not None:
            std_t = torch.full_like(std_t, float(shared_std))
        self.register_buffer("pixel_shift", mean_t * 255.0, persistent=False)
        self.register_buffer("pixel_scale", 1.0 / (std_t * 255.0), persistent=False)
        rescale = None if shared_std is None else float(shared_std) / torch.tensor(std, dtype=torch.float32)
        self.register_buffer("channel_rescale", None if rescale is None else rescale.view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.fuse_pre:
            x = (x.permute(0, 3, 1, 2).float() - self.pixel_shift) * self.pixel_scale
        if self.channel_rescale is not None:
            x = x * self.channel_rescale
        logits = self.model(x)
        if self.fuse_post:
            ids = logits.argmax(dim=1).to(self.class_dtype)
            if not self.confidence:
                return ids
            top = torch.softmax(logits.float(), dim=1).amax(dim=1)
            return torch.stack([ids, torch.round(top * 255.0).to(self.class_dtype)], dim=1)
        return logits


def build_meta(card: dict, options: OnnxOptions, checkpoint_name: str) -> ModelMeta:
    """The ModelMeta of a graph exported with ``options`` from the checkpoint ``card``."""
    from edgeseg.training.checkpoint import card_to_meta

    std = list(card["normalization"]["std"])
    extra = {
        "edgeseg_version": __version__,
        "export_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "opset": options.opset,
        "exporter": EXPORTER,
        "torch_version": torch.__version__,
        "source_checkpoint": checkpoint_name,
        "trained_input_size": list(card["input_size"]),
    }
    if options.fuse_post:
        extra["class_dtype"] = options.class_dtype
    if options.channel_rescale:
        extra["per_channel_std"] = std
        std = [float(np.mean(std))] * 3
    return card_to_meta(
        card,
        std=std,
        input_size=[None, None] if options.dynamic_hw else list(options.size),
        batch=None if options.dynamic_batch else options.batch,
        input_name=INPUT_NAME,
        output_name=options.output_name,
        input_layout="NHWC" if options.fuse_pre else "NCHW",
        input_dtype="uint8" if options.fuse_pre else "float32",
        output_dtype=options.class_dtype if options.fuse_post else "float32",
        fused_pre=options.fuse_pre,
        fused_post=options.fuse_post,
        confidence=options.confidence,
        precision=options.precision,
        extra=extra,
    )


def deploy_module(model: nn.Module, card: dict, options: OnnxOptions) -> DeployModel:
    norm = card["normalization"]
    shared_std = float(np.mean(norm["std"])) if options.channel_rescale else None
    return DeployModel(model, norm["mean"], norm["std"], fuse_pre=options.fuse_pre, fuse_post=options.fuse_post,
                       class_dtype=CLASS_DTYPES[options.class_dtype], shared_std=shared_std,
                       confidence=options.confidence).eval()


def sample_input(options: OnnxOptions) -> torch.Tensor:
    """A random input of the export shape: uint8 NHWC with fused pre-processing, else normalised-range float."""
    height, width = options.size
    generator = torch.Generator().manual_seed(0)
    if options.fuse_pre:
        return torch.randint(0, 256, (options.batch, height, width, 3), dtype=torch.uint8, generator=generator)
    return torch.randn(options.batch, 3, height, width, generator=generator)


# No segmentation network is deployed above this; beyond it the trace alone needs tens of gigabytes.
MAX_EXPORT_PIXELS = 4096 * 4096


def check_export_size(model: torch.nn.Module, size: tuple[int, int], model_name: str) -> None:
    """Refuse sizes the network cannot use: a side below its deepest stride leaves that stage one position (the
    7x7 export of a 38-mIoU model scored 2.6), and a size above ``MAX_EXPORT_PIXELS`` would exhaust memory."""
    height, width = size
    if height * width > MAX_EXPORT_PIXELS:
        raise ConfigError(f"--size {height}x{width} is {height * width / 1e6:.0f} megapixels; the export limit is "
                          f"{MAX_EXPORT_PIXELS / 1e6:.1f} (4096x4096)")
    taps = getattr(model, "taps", None)
    if isinstance(taps, dict) and taps:
        deepest = max(getattr(tap, "stride", 1) for tap in taps.values())
        if min(height, width) < 2 * deepest:
            raise ConfigError(f"--size {height}x{width} is too small for {model_name}: its deepest stage has stride "
                              f"{deepest}, so each side needs at least {2 * deepest} pixels")


def probe_size(module: DeployModel, sample: torch.Tensor, model_name: str) -> torch.Tensor:
    """Run the network once at the export size, turning its failure into a clear error before tracing starts."""
    try:
        with torch.no_grad():
            output = module(sample)
    except (RuntimeError, ValueError, IndexError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        size = "x".join(str(v) for v in sample.shape)
        raise ConfigError(f"{model_name} cannot run on an input of shape {size}: {first_line}; choose another "
                          f"--size (most networks need multiples of 32)") from err
    if not isinstance(output, torch.Tensor):
        raise ModelFormatError(f"{model_name} returns {type(output).__name__}, not a logits tensor; only networks "
                               "whose forward returns NCHW logits can be exported")
    return output


def dynamic_axes(options: OnnxOptions) -> dict[str, dict[int, str]] | None:
    if options.dynamic is None:
        return None
    input_axes: dict[int, str] = {}
    output_axes: dict[int, str] = {}
    if options.dynamic_batch:
        input_axes[0] = output_axes[0] = "batch"
    if options.dynamic_hw:
        h_axis, w_axis = (1, 2) if options.fuse_pre else (2, 3)
        input_axes.update({h_axis: "height", w_axis: "width"})
        out_h, out_w = (1, 2) if options.fuse_post and not options.confidence else (2, 3)
        output_axes.update({out_h: "height", out_w: "width"})
    return {INPUT_NAME: input_axes, options.output_name: output_axes}


def trace_to_onnx(module: DeployModel, sample: torch.Tensor, options: OnnxOptions) -> onnx.ModelProto:
    """Trace ``module`` to an FP32 ONNX graph and simplify it (see the module docstring for the exporter choice)."""
    import onnxslim

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer is deprecated in favour of dynamo; we choose it on purpose, so its warning is noise here.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, (sample,), buffer, dynamo=False, opset_version=options.opset,
                          input_names=[INPUT_NAME], output_names=[options.output_name],
                          dynamic_axes=dynamic_axes(options), do_constant_folding=True)
    model = onnx.load_from_string(buffer.getvalue())
    slimmed = onnxslim.slim(model)
    return slimmed if isinstance(slimmed, onnx.ModelProto) else model


def broadcast_unit_resizes(model: onnx.ModelProto) -> int:
    """Replace each Resize of a 1x1 map to a given size by an Expand; returns how many were replaced.

    Global-pooling branches (ASPP image pooling, pyramid-pooling bin 1, Fast-SCNN's PPM) upsample a 1x1 map, which
    any interpolation mode turns into the same constant, i.e. a broadcast. Expand says so directly: it is cheaper on
    every backend and avoids OpenCV DNN 5.0, which computes a linear Resize of a 1x1 input wrongly (errors of 1e5).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {value.name: [d.dim_value if d.HasField("dim_value") else None
                           for d in value.type.tensor_type.shape.dim]
              for value in [*inferred.graph.value_info, *inferred.graph.input]}
    replaced = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue
        shape = shapes.get(node.input[0])
        if not shape or len(shape) != 4 or shape[2:] != [1, 1]:
            continue
        expand = onnx.helper.make_node("Expand", [node.input[0], node.input[3]], list(node.output),
                                       name=(node.name or f"Resize_{index}") + "_as_expand")
        model.graph.node[index].CopyFrom(expand)
        replaced += 1
    return replaced


def declare_io_shapes(model: onnx.ModelProto, options: OnnxOptions, num_classes: int) -> None:
    """Write the exact input/output shapes into the graph, with named dynamic axes.

    Shape inference through a traced graph with dynamic axes often loses static dims (the class axis of the logits
    comes out unknown); Triton configs, TensorRT profiles and the metadata are read from these declarations, so
    they are stated from what the export knows rather than left to inference.
    """
    batch: int | str = "batch" if options.dynamic_batch else options.batch
    height, width = ("height", "width") if options.dynamic_hw else options.size
    input_dims = [batch, height, width, 3] if options.fuse_pre else [batch, 3, height, width]
    if options.fuse_post:
        output_dims = [batch, 2, height, width] if options.confidence else [batch, height, width]
    else:
        output_dims = [batch, num_classes, height, width]
    for value, dims in ((model.graph.input[0], input_dims), (model.graph.output[0], output_dims)):
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for dim in dims:
            entry = shape.dim.add()
            if isinstance(dim, str):
                entry.dim_param = dim
            else:
                entry.dim_value = int(dim)


@dataclass
class OnnxExport:
    """What :func:`export_onnx` produced: the written file, its metadata and its real inputs/outputs."""

    path: Path
    meta: ModelMeta
    io: list[TensorSpec]
    notes: list[str] = field(default_factory=list)


def export_onnx(model: nn.Module, card: dict, options: OnnxOptions, path: str | Path, checkpoint_name: str,
                calibration_images: list[np.ndarray] | None = None, budget: Int8Budget | None = None) -> OnnxExport:
    """Export a network to ``path`` at the requested precision, with its metadata.

    Args:
        model: The network, in eval mode, with the checkpoint's weights.
        card: The checkpoint card (classes, normalisation, input size).
        options: Graph options.
        path: Target ``.onnx`` file.
        checkpoint_name: Recorded in the metadata so a deployed file names its origin.
        calibration_images: For INT8, RGB uint8 images; they are prepared exactly as the exported graph expects
            its inputs (:class:`~.precision.ImageCalibrationReader`).
        budget: For INT8, an accuracy budget: layers that cost too much are kept in float (:mod:`.int8_budget`).

    Raises:
        ConfigError: the model cannot take the size, or INT8 without calibration data.
        Int8BudgetError: INT8 misses the budget even with the most layers it may keep in float (nothing written).
        ModelFormatError: the graph fails the checker.
    """
    from . import precision as precision_mod

    meta = build_meta(card, options, checkpoint_name)
    check_export_size(model, options.size, meta.model)
    module = deploy_module(model, card, options)
    sample = sample_input(options)
    probe_size(module, sample, meta.model)
    graph = trace_to_onnx(module, sample, options)
    broadcast_unit_resizes(graph)
    declare_io_shapes(graph, options, meta.num_classes)
    notes: list[str] = []
    if options.precision == "fp16":
        graph = precision_mod.convert_to_fp16(graph)
        notes.append("FP16 graph with FP32 inputs/outputs; ops outside the FP16 allow-list (resize, pooling to "
                     "1x1, reductions, argmax) kept in FP32")
    elif options.precision == "int8":
        if not calibration_images:
            raise ConfigError("--precision int8 needs calibration images: add --calib DATASET[:ROOT] "
                              "(e.g. --calib camvid for the embedded sample)")
        with tempfile.TemporaryDirectory(prefix="edgeseg-int8-") as workdir:
            reader = precision_mod.ImageCalibrationReader(calibration_images, meta, options.size)
            quantizer = precision_mod.Int8Quantizer(graph, reader, Path(workdir), options.calib_method,
                                                    options.int8_scheme)
            graph, excluded = (quantizer.quantize() if budget is None
                               else budget.fit(quantizer, graph, meta, Path(workdir)))
        form = "U8S8, asymmetric activations" if options.int8_scheme == "cpu" else "S8S8, symmetric"
        notes.append(f"INT8 Q/DQ for {options.int8_scheme} ({form}, per-channel weights); kept in float: "
                     f"{', '.join(excluded)}")
        meta.extra["int8_float_nodes"] = excluded
        meta.extra["int8_scheme"] = options.int8_scheme
    set_metadata(graph, meta)
    save_onnx(graph, path)
    return OnnxExport(Path(path), meta, graph_io(graph), notes)


def run(job: ExportJob) -> ExportResult:
    """``--format onnx``: the checkpoint's graph, checked when asked."""
    from .api import ExportResult

    graph = job.export_graph(job.out)
    path = graph.onnx.path
    steps = [f"next: edgeseg eval {path} --data camvid   |   edgeseg bench {path}"] if graph.passed else []
    return ExportResult("onnx", path, graph.passed, graph.onnx, graph.parity, steps)
