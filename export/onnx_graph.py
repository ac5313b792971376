"""Torch-free ONNX file helpers: read and write the edgeseg metadata, list a graph's real inputs and outputs.

Kept apart from :mod:`.onnx_export` so that turning an existing ``.onnx`` into a TensorRT engine, a Triton
repository or a DeepStream config works on a device that has onnx but no torch (a Jetson image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from edgeseg import __version__
from edgeseg.runtime.errors import MetadataError, ModelFormatError
from edgeseg.runtime.atomic_files import atomic_path
from edgeseg.runtime.metadata import METADATA_KEY, ModelMeta

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape (None for a dynamic axis) of one graph input or output."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    is_input: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "mode": "input" if self.is_input else "output"}

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        """The inverse of :meth:`to_dict` (an engine sidecar's ``io`` entries)."""
        return cls(data["name"], data["dtype"], tuple(data["shape"]), data["mode"] == "input")


def graph_io(model: onnx.ModelProto) -> list[TensorSpec]:
    """The real inputs and outputs of a graph, read from the proto (initializers listed as inputs are skipped)."""
    initializers = {init.name for init in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto, is_input: bool) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tensor_type.shape.dim)
        return TensorSpec(value.name, _ONNX_DTYPES.get(tensor_type.elem_type, str(tensor_type.elem_type)), dims,
                          is_input)

    return ([spec(v, True) for v in model.graph.input if v.name not in initializers]
            + [spec(v, False) for v in model.graph.output])


def set_metadata(model: onnx.ModelProto, meta: ModelMeta) -> None:
    """Store the model card under :data:`METADATA_KEY` (replacing an earlier entry) and stamp the producer."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (METADATA_KEY, meta.to_json())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "edgeseg"
    model.producer_version = __version__


def read_metadata(path: str | Path) -> ModelMeta:
    """The ModelMeta stored in an ``.onnx`` file (no onnxruntime needed)."""
    model = load_onnx(path, load_weights=False)
    entries = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in entries:
        raise MetadataError(f"{path} carries no '{METADATA_KEY}' metadata entry; export it with 'edgeseg export'")
    return ModelMeta.from_json(entries[METADATA_KEY], source=str(path))


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as err:  # onnx raises DecodeError, ValueError or OSError depending on the damage
        raise ModelFormatError(f"{path} is not a readable ONNX model: {err}") from err


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Check the graph, then write it atomically (the target appears complete or not at all)."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ModelFormatError(f"the exported graph fails onnx.checker: {err}") from err
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)
