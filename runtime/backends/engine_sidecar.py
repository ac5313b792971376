"""The JSON sidecar of a TensorRT engine: where it lies, what it holds, and writing and reading it.

A TensorRT plan carries no class list, so ``edgeseg export`` writes ``<engine>.json`` beside it: the model card
(:class:`~edgeseg.runtime.metadata.ModelMeta` fields) plus the facts of the build (TensorRT version, GPU, shape
profile, I/O tensors, source ONNX). The builder, the runtime and the Triton export all go through this module, so
there is one format and one error type: every problem is a :class:`MetadataError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import MetadataError
from ..atomic_files import atomic_path
from ..metadata import ModelMeta

REQUIRED = ("tensorrt_version", "gpu")
"""Build facts without which an engine cannot be checked against the machine that runs it."""


def sidecar_path(engine_path: str | Path) -> Path:
    """The name the builder writes: ``model.engine`` -> ``model.engine.json``."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def sidecar_candidates(engine_path: str | Path) -> list[Path]:
    """Where a sidecar may be: ``model.engine.json`` first, then ``model.json`` (a hand-renamed one)."""
    return [sidecar_path(engine_path), Path(engine_path).with_suffix(".json")]


def find_sidecar(engine_path: str | Path) -> Path:
    """The sidecar file of an engine, of either name; the error lists both names when neither exists."""
    for candidate in sidecar_candidates(engine_path):
        if candidate.is_file():
            return candidate
    names = " or ".join(str(c) for c in sidecar_candidates(engine_path))
    raise MetadataError(f"{engine_path} has no sidecar ({names}): a TensorRT engine carries no class list, so "
                        "the runtime needs the JSON that 'edgeseg export' writes beside it")


@dataclass
class EngineSidecar:
    """An engine's model card and the facts of its build; ``path`` is the sidecar file (set when read or written).

    ``io`` lists the engine's tensors as ``{"name", "dtype", "shape", "mode"}`` (``None`` in a shape is a dynamic
    axis); ``profile`` maps the input name to its ``{"min", "opt", "max"}`` shapes, or is None for a static engine.
    """

    meta: ModelMeta
    tensorrt_version: str
    gpu: str
    compute_capability: str | None = None
    profile: dict[str, dict[str, list[int]]] | None = None
    io: list[dict[str, Any]] | None = None
    onnx_file: str | None = None
    onnx_sha256: str | None = None
    built: str | None = None
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        facts = {key: value for key, value in asdict(self).items() if key not in ("meta", "path")}
        return {**vars(self.meta), **facts}

    def require_io(self) -> list[dict[str, Any]]:
        """The I/O list, which sidecars written before it was recorded lack."""
        if not self.io:
            raise MetadataError(f"{self.path} has no 'io' list; rebuild the engine with 'edgeseg export'")
        return self.io

    @property
    def profile_max_batch(self) -> int | None:
        """The largest batch the optimisation profile allows, or None for a static engine."""
        batches = [shapes["max"][0] for shapes in (self.profile or {}).values()]
        return max(batches) if batches else None


def read_sidecar(engine_path: str | Path) -> EngineSidecar:
    """Find and read an engine's sidecar.

    Raises:
        MetadataError: no sidecar, unreadable JSON, a missing build fact or a malformed model card.
    """
    path = find_sidecar(engine_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetadataError(f"{path}: unreadable engine sidecar ({err})") from err
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: the engine sidecar must be a JSON object")
    missing = [key for key in REQUIRED if not data.get(key)]
    if missing:
        raise MetadataError(f"{path}: the engine sidecar lacks {', '.join(missing)}, so it cannot be checked "
                            "against this machine; rebuild the engine with 'edgeseg export'")
    facts = {key: data.pop(key) for key in ("compute_capability", "profile", "io", "onnx_file", "onnx_sha256", "built")
             if key in data}
    version, gpu = str(data.pop("tensorrt_version")), str(data.pop("gpu"))
    return EngineSidecar(ModelMeta.from_dict(data, source=str(path)), version, gpu, path=path, **facts)


def write_engine(engine_path: str | Path, plan: bytes, sidecar: EngineSidecar) -> EngineSidecar:
    """Write the plan and its sidecar; both are complete before either is renamed into place, so an engine never
    appears without its card (and a failed write keeps the previous pair)."""
    engine_path = Path(engine_path)
    sidecar.path = sidecar_path(engine_path)
    with atomic_path(engine_path) as engine_tmp, atomic_path(sidecar.path) as sidecar_tmp:
        engine_tmp.write_bytes(plan)
        sidecar_tmp.write_text(json.dumps(sidecar.to_dict(), indent=2) + "\n", encoding="utf-8")
    return sidecar
