"""Build a TensorRT engine from an exported ONNX graph, the same way on TensorRT 10.3 (JetPack 6) and 11.x.

The network is created *strongly typed*: TensorRT takes every tensor's type from the graph (FP16 tensors, INT8
Q/DQ pairs) instead of choosing precisions through builder flags, which TensorRT 11 removed. The FP16/INT8 decision
was therefore made at ONNX export time and is exactly what ONNX Runtime checked. TensorRT 10 needs the
``STRONGLY_TYPED`` network flag for that; TensorRT 11 is always strongly typed and deprecates the flag (ignored, kept
for compatibility), so it is passed only before 11.

Besides the plan, the build writes a JSON sidecar (:mod:`edgeseg.runtime.backends.engine_sidecar`: the model card
plus the TensorRT version, GPU name, compute capability, shape profile and the SHA-256 of the source ONNX), which
the runtime uses to refuse an engine built for another GPU or TensorRT release, and prints the equivalent
``trtexec`` command so a build can be reproduced without Python. TensorRT is imported only inside
:func:`build_engine`; ``make test`` type-checks this file against NVIDIA's ``tensorrt-stubs`` (10.13).
"""

from __future__ import annotations

import datetime as _dt
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.runtime.backends.engine_sidecar import EngineSidecar, write_engine
from edgeseg.runtime.backends.tensorrt_engine import require_tensorrt
from edgeseg.runtime.errors import ConfigError, ModelFormatError
from edgeseg.runtime.atomic_files import file_sha256, write_bytes_atomic

from .onnx_graph import TensorSpec, graph_io, load_onnx, read_metadata

if TYPE_CHECKING:  # TensorRT's classes in annotations, checked against tensorrt-stubs
    import tensorrt as trt

    from .api import ExportJob, ExportResult

BUILD_PURPOSE = "building a TensorRT engine"
DEFAULT_WORKSPACE_GB = 4.0
DEFAULT_MAX_BATCH = 8
PROFILE_STEP = 32


def parse_shape(text: str, option: str) -> tuple[int, ...]:
    """``"1x3x360x480"`` -> ``(1, 3, 360, 480)``: a full input shape in the graph's layout, as trtexec takes it."""
    try:
        dims = tuple(int(part) for part in str(text).lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise ConfigError(f"{option} must be the full input shape as positive integers joined by 'x' "
                          f"(e.g. 1x3x360x480 for NCHW), got {text!r}")
    return dims


@dataclass
class EngineOptions:
    """Builder settings; the shapes are full input shapes (``None`` = derive from the export size)."""

    workspace_gb: float = DEFAULT_WORKSPACE_GB
    timing_cache: Path | None = None
    min_shape: tuple[int, ...] | None = None
    opt_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    gpu: int = 0

    def __post_init__(self) -> None:
        if not self.workspace_gb > 0:
            raise ConfigError(f"--workspace must be a positive number of GiB, got {self.workspace_gb}")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gb * (1 << 30))


def _round_up(value: float, step: int = PROFILE_STEP) -> int:
    return max(step, int(-(-round(value) // step) * step))


def default_profile_dims(spec: TensorSpec, layout: str, size: tuple[int, int] | None, batch: int
                         ) -> dict[str, tuple[int, ...]]:
    """min/opt/max for each dynamic axis: batch 1..8 (opt ``batch``), height/width size/2..2*size (opt ``size``)."""
    spatial_axes = (1, 2) if layout == "NHWC" else (2, 3)
    shapes: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
    for axis, dim in enumerate(spec.shape):
        if dim is not None:
            for key in shapes:
                shapes[key].append(dim)
        elif axis == 0:
            shapes["min"].append(1)
            shapes["opt"].append(batch)
            shapes["max"].append(max(DEFAULT_MAX_BATCH, batch))
        elif axis in spatial_axes:
            if size is None:
                raise ConfigError(f"input {spec.name!r} has dynamic height/width and no export size is known: give "
                                  "--min-shape, --opt-shape and --max-shape")
            value = size[spatial_axes.index(axis)]
            shapes["min"].append(_round_up(value / 2))
            shapes["opt"].append(value)
            shapes["max"].append(_round_up(value * 2))
        else:
            raise ConfigError(f"input {spec.name!r} has a dynamic axis {axis} that edgeseg cannot size; give "
                              "--min-shape, --opt-shape and --max-shape")
    return {key: tuple(dims) for key, dims in shapes.items()}


def profile_shapes(spec: TensorSpec, layout: str, options: EngineOptions, size: tuple[int, int] | None,
                   batch: int = 1) -> dict[str, tuple[int, ...]] | None:
    """The optimisation profile of a graph input, or None when the input is fully static.

    User shapes override the derived ones; every shape must have the input's rank, keep its static dims and satisfy
    min <= opt <= max on every axis.
    """
    given = {"min": options.min_shape, "opt": options.opt_shape, "max": options.max_shape}
    if all(dim is not None for dim in spec.shape):
        if any(shape is not None for shape in given.values()):
            raise ConfigError(f"input {spec.name!r} is static ({'x'.join(map(str, spec.shape))}); --min-shape, "
                              "--opt-shape and --max-shape apply only to graphs exported with --dynamic")
        return None
    needs_defaults = any(shape is None for shape in given.values())
    defaults = default_profile_dims(spec, layout, size, batch) if needs_defaults else {}
    profile = {key: given[key] or defaults[key] for key in ("min", "opt", "max")}
    for key, shape in profile.items():
        flag = f"--{key}-shape"
        if len(shape) != len(spec.shape):
            raise ConfigError(f"{flag} {'x'.join(map(str, shape))} has {len(shape)} dims; input {spec.name!r} has "
                              f"{len(spec.shape)} ({'x'.join('?' if d is None else str(d) for d in spec.shape)})")
        for axis, (dim, declared) in enumerate(zip(shape, spec.shape)):
            if declared is not None and dim != declared:
                raise ConfigError(f"{flag}: axis {axis} of input {spec.name!r} is fixed at {declared}, got {dim}")
    for axis in range(len(spec.shape)):
        low, opt, high = (profile[key][axis] for key in ("min", "opt", "max"))
        if not low <= opt <= high:
            raise ConfigError(f"profile axis {axis} of input {spec.name!r} needs min <= opt <= max, got "
                              f"{low} / {opt} / {high}")
    return profile


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(dim) for dim in shape)


def trtexec_command(onnx_path: Path, engine_path: Path, input_name: str, profile: dict | None,
                    options: EngineOptions) -> str:
    """The ``trtexec`` call that builds the same engine (strongly typed, same profile, workspace and cache)."""
    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped"]
    if profile is not None:
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            parts.append(f"{flag}={input_name}:{_shape_text(profile[key])}")
    parts.append(f"--memPoolSize=workspace:{int(round(options.workspace_gb * 1024))}M")
    if options.timing_cache is not None:
        parts.append(f"--timingCacheFile={options.timing_cache}")
    if options.gpu:
        parts.append(f"--device={options.gpu}")
    return " ".join(shlex.quote(part) for part in parts)


def network_flags(version: str) -> int:
    """``create_network`` flags for a strongly typed network: the STRONGLY_TYPED bit before TensorRT 11, none from
    11 on (always strongly typed there; the flag is deprecated and ignored)."""
    import tensorrt as trt

    major = re.match(r"\d+", version)
    if major and int(major.group()) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def describe_gpu(index: int) -> tuple[str, str | None]:
    """Name and compute capability (``"8.7"``) of a CUDA device, via cuda-python or torch; unknown if neither."""
    try:
        try:
            from cuda.bindings import runtime as cudart  # pyright: ignore[reportMissingImports] (no stubs here)
        except ImportError:
            from cuda import cudart  # pyright: ignore[reportMissingImports] (cuda-python before 12.6)
        err, props = cudart.cudaGetDeviceProperties(index)
        if err == cudart.cudaError_t.cudaSuccess:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(index)
            return torch.cuda.get_device_name(index), f"{major}.{minor}"
    except ImportError:
        pass
    return "unknown", None


def describe_parser_error(error: trt.ParserError) -> str:
    """One line per ONNX parser error: description plus the node it concerns (name and operator, or index)."""
    where = [f"{label} {value}" for label, value in (("node", error.node_name()), ("op", error.node_operator()))
             if value]
    if not where and error.node() >= 0:
        where.append(f"node #{error.node()}")
    return error.desc() + (f" ({', '.join(where)})" if where else "")


@dataclass
class EngineBuild:
    """What :func:`build_engine` wrote, and how to rebuild it with trtexec."""

    engine: Path
    sidecar: EngineSidecar
    trtexec: str
    profile: dict | None


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: EngineOptions | None = None,
                 size: tuple[int, int] | None = None, batch: int = 1, log=print) -> EngineBuild:
    """Build ``engine_path`` from an edgeseg ONNX export, plus its sidecar, and report the trtexec equivalent.

    Args:
        onnx_path: An ONNX file written by ``edgeseg export`` (its metadata goes into the sidecar).
        engine_path: Target plan file; written atomically, like the sidecar and the timing cache.
        options: Workspace, timing cache, GPU and profile shapes.
        size: ``(height, width)`` from which default profile shapes of a dynamic graph are derived; defaults to
            the training size recorded in the metadata.
        batch: The profile's opt batch for a batch-dynamic graph.
        log: Where progress lines go.

    Raises:
        BackendUnavailable: TensorRT is not installed (or only its type stubs are).
        ModelFormatError: the parser rejects the graph (every parser error is listed) or the build fails.
        ConfigError: profile shapes that do not fit the graph.
    """
    options = options or EngineOptions()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    meta = read_metadata(onnx_path)
    if meta.extra.get("int8_scheme") == "cpu":
        raise ConfigError(f"{onnx_path} holds INT8 Q/DQ for ONNX Runtime's CPU kernels (asymmetric activations), "
                          "which TensorRT does not build: export it again with --int8-scheme tensorrt")
    io_specs = graph_io(load_onnx(onnx_path, load_weights=False))
    inputs = [spec for spec in io_specs if spec.is_input]
    if len(inputs) != 1:
        raise ModelFormatError(f"{onnx_path} has {len(inputs)} inputs; edgeseg engines take one image input")
    if size is None and meta.static_size is None and meta.extra.get("trained_input_size"):
        size = tuple(meta.extra["trained_input_size"])  # type: ignore[assignment]
    profile = profile_shapes(inputs[0], meta.input_layout, options, size, batch)
    command = trtexec_command(onnx_path, engine_path, inputs[0].name, profile, options)

    require_tensorrt(BUILD_PURPOSE)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt.__version__))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelFormatError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {len(errors)} error(s): "
                               + "; ".join(errors or ["no error reported"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if profile is not None:
        optimization_profile = builder.create_optimization_profile()
        optimization_profile.set_shape(inputs[0].name, *(trt.Dims(list(profile[key])) for key in ("min", "opt", "max")))
        config.add_optimization_profile(optimization_profile)
    cache_bytes = b""
    if options.timing_cache is not None and Path(options.timing_cache).is_file():
        cache_bytes = Path(options.timing_cache).read_bytes()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    log(f"building TensorRT {trt.__version__} engine from {onnx_path} (strongly typed, {meta.precision} graph)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:  # the stubs say IHostMemory; the binding returns None when the build fails
        raise ModelFormatError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path}; the builder "
                               "messages above say why (often: too little --workspace, or an unsupported layer)")
    gpu_name, capability = describe_gpu(options.gpu)
    if options.timing_cache is not None:
        write_bytes_atomic(options.timing_cache, bytes(timing_cache.serialize()))
    sidecar = EngineSidecar(
        meta, tensorrt_version=str(trt.__version__), gpu=gpu_name, compute_capability=capability,
        profile=None if profile is None else {inputs[0].name: {k: list(v) for k, v in profile.items()}},
        io=[spec.to_dict() for spec in io_specs], onnx_file=onnx_path.name, onnx_sha256=file_sha256(onnx_path),
        built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    write_engine(engine_path, bytes(serialized), sidecar)
    return EngineBuild(engine_path, sidecar, command, profile)


def run(job: ExportJob) -> ExportResult:
    """``--format engine``: from a checkpoint (exported and checked first) or an exported ``.onnx``."""
    from .api import ExportResult

    opts = job.options
    if opts.int8_scheme == "cpu":
        raise ConfigError("--int8-scheme cpu writes Q/DQ that TensorRT does not build, and --format engine needs "
                          "TensorRT: use --int8-scheme tensorrt")
    shapes = {key: None if value is None else parse_shape(value, f"--{key}-shape") if isinstance(value, str)
              else tuple(value) for key, value in (("min", opts.min_shape), ("opt", opts.opt_shape),
                                                   ("max", opts.max_shape))}
    options = EngineOptions(workspace_gb=opts.workspace, timing_cache=Path(opts.timing_cache) if opts.timing_cache
                            else None, min_shape=shapes["min"], opt_shape=shapes["opt"], max_shape=shapes["max"],
                            gpu=opts.gpu)
    require_tensorrt(BUILD_PURPOSE)  # fail before a long export when TensorRT is missing
    graph = size = None
    if job.source.suffix.lower() == ".pt":
        graph = job.export_graph(job.out.with_suffix(".onnx") if job.out else None)
        if not graph.passed:
            return job.failed(graph, "engine")
        onnx_path, size = graph.onnx.path, graph.options.size
    else:
        onnx_path = job.source
    build = build_engine(onnx_path, job.out or onnx_path.with_suffix(".engine"), options, size=size, log=job.log)
    job.log(f"wrote {build.engine} and {build.sidecar.path}")
    return ExportResult("engine", build.engine, True, graph and graph.onnx, graph.parity if graph else [],
                        [f"same build with trtexec:\n  {build.trtexec}"])
