"""A Triton Inference Server model repository for an edgeseg ONNX export or TensorRT engine.

The input/output names, data types and dims in ``config.pbtxt`` are read from the real graph (or, for an engine,
from the I/O list its sidecar recorded at build time), never restated from options, so the configuration cannot
drift from the model. A graph whose batch axis is dynamic gets ``max_batch_size`` > 0 with the batch dim left out
of ``dims`` and dynamic batching on; a fixed-batch graph gets ``max_batch_size: 0`` and its full shape.

Three Triton backends serve the model: ``onnxruntime`` (``model.onnx``) and ``tensorrt`` (``model.plan``) for NGC's
server on GPU hosts, and ``python``, whose ``model.py`` runs ``model.onnx`` with ONNX Runtime inside Triton's Python
backend, so a server built without the ONNX Runtime backend (such as the one in the ``nvidia-pytriton`` wheel), or a
CPU host, serves edgeseg models too. All three get the same ``config.pbtxt`` apart from the backend line.

The repository folder of the model is assembled beside its final place and swapped in at the end, so a failed
export leaves an existing model folder untouched.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.runtime.errors import ConfigError, ModelFormatError
from edgeseg.runtime.metadata import METADATA_KEY, ModelMeta

from .onnx_graph import TensorSpec

if TYPE_CHECKING:
    from .api import ExportJob, ExportResult

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
BACKENDS = {"onnxruntime": (".onnx",), "tensorrt": (".engine", ".plan"), "python": (".onnx",)}
"""``--triton-backend`` choices and the model files each serves."""
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
"""The ``platform`` line of the backends that have one (the python backend names its backend instead)."""
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
"""The ``model.py`` of the python backend, copied verbatim beside ``model.onnx``."""
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
LABELS_FILE = "labels.txt"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class TritonOptions:
    """Serving settings for config.pbtxt.

    Attributes:
        name: Model name in the repository (default: the model's name from its metadata).
        backend: ``onnxruntime``, ``tensorrt`` or ``python`` (None: onnxruntime for .onnx, tensorrt for engines).
        max_batch: ``max_batch_size`` for batch-dynamic graphs (None: the engine profile's max, or 8).
        instances: Model instances per device (``instance_group.count``).
        instance_kind: ``gpu`` or ``cpu``.
        preferred_batch: Batch size the dynamic batcher aims for (None: half of ``max_batch``, at least 1).
        max_queue_delay_us: How long the batcher may hold a request to fill a batch.
        dynamic_batching: Whether Triton batches requests to a batch-dynamic graph (library only: benchmarks turn
            it off to measure what it gains).
    """

    name: str | None = None
    backend: str | None = None
    max_batch: int | None = None
    instances: int = 1
    instance_kind: str = "gpu"
    preferred_batch: int | None = None
    max_queue_delay_us: int = 100
    dynamic_batching: bool = True

    def __post_init__(self) -> None:
        if self.name is not None and not _NAME_PATTERN.match(self.name):
            raise ConfigError(f"--name must be a folder-safe model name (letters, digits, _ . -), got {self.name!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"--triton-backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ConfigError(f"--instance-kind must be one of {', '.join(INSTANCE_KINDS)}, got {self.instance_kind!r}")
        for label, value in (("--max-batch", self.max_batch), ("--instances", self.instances),
                             ("--preferred-batch", self.preferred_batch)):
            if value is not None and value < 1:
                raise ConfigError(f"{label} must be a positive integer, got {value}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-us must not be negative, got {self.max_queue_delay_us}")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims_text(dims) -> str:
    return "[ " + ", ".join(str(-1 if d is None else d) for d in dims) + " ]"


def _tensor_block(spec: TensorSpec, batched: bool, label_file: str | None) -> str:
    if spec.dtype not in TRITON_TYPES:
        raise ModelFormatError(f"tensor {spec.name!r} has dtype {spec.dtype}, which Triton configs cannot state")
    dims = spec.shape[1:] if batched else spec.shape
    lines = ["  {", f"    name: {_quote(spec.name)}", f"    data_type: {TRITON_TYPES[spec.dtype]}",
             f"    dims: {_dims_text(dims)}"]
    if label_file:
        lines.append(f"    label_filename: {_quote(label_file)}")
    return "\n".join(lines + ["  }"])


def config_pbtxt(name: str, backend: str, io: list[TensorSpec], meta: ModelMeta, options: TritonOptions,
                 profile_max_batch: int | None = None) -> str:
    """The text of config.pbtxt for a model whose real inputs/outputs are ``io``, served by ``backend``."""
    inputs = [spec for spec in io if spec.is_input]
    outputs = [spec for spec in io if not spec.is_input]
    batched = all(spec.shape and spec.shape[0] is None for spec in io)
    if not batched and (options.max_batch is not None or options.preferred_batch is not None):
        raise ConfigError("--max-batch/--preferred-batch need a graph with a dynamic batch axis: export with "
                          "--dynamic batch (or all)")
    max_batch = (options.max_batch or profile_max_batch or 8) if batched else 0
    if profile_max_batch is not None and batched and max_batch > profile_max_batch:
        raise ConfigError(f"--max-batch {max_batch} exceeds the engine's profile maximum of {profile_max_batch}")
    served_by = f"platform: {_quote(PLATFORMS[backend])}" if backend in PLATFORMS else f"backend: {_quote(backend)}"
    lines = [f"name: {_quote(name)}", served_by, f"max_batch_size: {max_batch}", "input ["]
    lines.append(",\n".join(_tensor_block(spec, batched, None) for spec in inputs))
    lines += ["]", "output ["]
    lines.append(",\n".join(_tensor_block(spec, batched, LABELS_FILE if spec.name == meta.output_name else None)
                            for spec in outputs))
    lines.append("]")
    if batched and options.dynamic_batching:
        preferred = options.preferred_batch or max(1, max_batch // 2)
        if preferred > max_batch:
            raise ConfigError(f"--preferred-batch {preferred} exceeds max_batch_size {max_batch}")
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {preferred} ]",
                  f"  max_queue_delay_microseconds: {options.max_queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {options.instances}",
              f"    kind: {INSTANCE_KINDS[options.instance_kind]}", "  }", "]",
              "parameters {", f"  key: {_quote(METADATA_KEY)}",
              f"  value: {{ string_value: {_quote(meta.to_json())} }}", "}"]
    return "\n".join(lines) + "\n"


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by the finished ``staging`` folder; the old folder is removed only after the swap."""
    retired = None
    if target.exists():
        retired = target.with_name(f".{target.name}.old")
        if retired.exists():
            shutil.rmtree(retired)
        target.rename(retired)
    staging.rename(target)
    if retired is not None:
        shutil.rmtree(retired)


def write_triton_repository(model_path: str | Path, repo: str | Path, meta: ModelMeta, io: list[TensorSpec],
                            options: TritonOptions | None = None, profile_max_batch: int | None = None) -> Path:
    """Copy a model into ``repo/<name>/1/`` with its config.pbtxt and labels file; returns the model folder.

    Args:
        model_path: ``.onnx`` file, or ``.engine``/``.plan`` (served as ``model.plan``); ``options.backend`` python
            adds ``model.py`` beside ``model.onnx``.
        repo: The model repository root (created if missing; other models in it are left alone).
        meta: The model card (from the ONNX metadata or the engine sidecar).
        io: The model's real inputs and outputs.
        options: Serving settings.
        profile_max_batch: For engines, the batch maximum of their optimisation profile.
    """
    options = options or TritonOptions()
    model_path = Path(model_path)
    suffix = model_path.suffix.lower()
    if suffix not in (".onnx", ".engine", ".plan"):
        raise ModelFormatError(f"Triton serves .onnx, .engine or .plan files, not {model_path}")
    backend = options.backend or ("onnxruntime" if suffix == ".onnx" else "tensorrt")
    if suffix not in BACKENDS[backend]:
        what = "a TensorRT engine (.engine/.plan, from --format engine)" if backend == "tensorrt" else "an .onnx model"
        raise ConfigError(f"--triton-backend {backend} serves {what}, not {model_path.name}")
    file_name = "model.plan" if backend == "tensorrt" else "model.onnx"
    name = options.name or meta.model
    if not _NAME_PATTERN.match(name):
        raise ConfigError(f"model name {name!r} is not folder-safe; choose one with --name")
    config = config_pbtxt(name, backend, io, meta, options, profile_max_batch)
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(model_path, staging / "1" / file_name)
        if backend == "python":
            shutil.copyfile(PYTHON_MODEL, staging / "1" / "model.py")
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        (staging / LABELS_FILE).write_text("\n".join(meta.classes) + "\n", encoding="utf-8")
        _swap_in(staging, repo / name)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return repo / name


def run(job: ExportJob) -> ExportResult:
    """``--format triton``: a repository for a checkpoint (exported batch-dynamic, checked when asked), an exported
    ``.onnx``, or an engine (its I/O and profile read from the sidecar)."""
    from edgeseg.runtime.backends.engine_sidecar import read_sidecar

    from .api import ExportResult
    from .onnx_graph import graph_io, load_onnx, read_metadata

    opts = job.options
    options = TritonOptions(name=opts.name, max_batch=opts.max_batch, instances=opts.instances,
                            instance_kind=opts.instance_kind, preferred_batch=opts.preferred_batch,
                            max_queue_delay_us=opts.max_queue_delay_us, backend=opts.triton_backend)
    repo = job.out or job.source.parent / "triton"
    suffix = job.source.suffix.lower()
    graph = None
    if suffix in (".engine", ".plan"):
        sidecar = read_sidecar(job.source)
        io = [TensorSpec.from_dict(tensor) for tensor in sidecar.require_io()]
        folder = write_triton_repository(job.source, repo, sidecar.meta, io, options, sidecar.profile_max_batch)
    elif suffix == ".onnx":
        folder = write_triton_repository(job.source, repo, read_metadata(job.source),
                                         graph_io(load_onnx(job.source)), options)
    else:
        with tempfile.TemporaryDirectory(prefix="edgeseg-triton-") as workdir:
            graph = job.export_graph(Path(workdir) / "model.onnx", default_dynamic="batch")
            if not graph.passed:
                return job.failed(graph, "repository")
            folder = write_triton_repository(graph.onnx.path, repo, graph.onnx.meta, graph.onnx.io, options)
    job.log(f"wrote Triton model {folder} (config.pbtxt, labels.txt, 1/)")
    return ExportResult("triton", folder, True, graph and graph.onnx, graph.parity if graph else [],
                        [f"serve it: tritonserver --model-repository {repo}"])
