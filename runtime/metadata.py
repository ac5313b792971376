"""The model card that travels inside every deployed artefact.

Export writes it into the ONNX file's ``metadata_props`` (key :data:`METADATA_KEY`, a JSON string) and into the JSON
sidecar of a TensorRT engine; the runtime reads nothing else, so a deployed model is one file (plus the sidecar).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .classes import IMAGENET_MEAN, IMAGENET_STD
from .errors import MetadataError

METADATA_KEY = "edgeseg"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ModelMeta:
    """What a runtime must know to feed a segmentation network and read its answer.

    Sizes are ``[height, width]``; a ``None`` entry marks a dynamic axis. ``mean``/``std`` apply to RGB values
    scaled to [0, 1]. With ``fused_pre`` the network takes ``uint8`` NHWC RGB images and normalises inside the graph;
    with ``fused_post`` it returns class ids (``output_dtype``) instead of float logits. With ``confidence`` as well,
    that output is ``N x 2 x H x W``: plane 0 the class ids, plane 1 the per-pixel maximum softmax probability as
    0-255 (one packed output rather than two, so every backend and Triton carry it with one device-to-host copy).
    """

    model: str
    classes: list[str]
    palette: list[list[int]]
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    input_size: list[int | None] = field(default_factory=lambda: [None, None])
    batch: int | None = 1
    input_name: str = "images"
    output_name: str = "logits"
    input_layout: str = "NCHW"
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    fused_pre: bool = False
    fused_post: bool = False
    confidence: bool = False
    precision: str = "fp32"
    dataset: str = "custom"
    ignore_index: int = 255
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.palette):
            raise MetadataError(f"metadata lists {len(self.classes)} classes but {len(self.palette)} colours")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"unknown precision {self.precision!r}; expected one of {PRECISIONS}")
        if self.input_layout not in ("NCHW", "NHWC"):
            raise MetadataError(f"unknown input layout {self.input_layout!r}")
        if self.confidence and not self.fused_post:
            raise MetadataError("metadata says confidence without fused_post: the confidence plane rides beside "
                                "fused class ids")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def static_size(self) -> tuple[int, int] | None:
        """The fixed (H, W) the network takes, or None when height or width is dynamic."""
        h, w = self.input_size
        return (int(h), int(w)) if h and w else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model") -> "ModelMeta":
        """Build the card from its JSON fields; keys it does not know go to ``extra``.

        Every problem is a MetadataError that starts with ``source`` (the model file or server it came from).
        """
        known = {f.name for f in fields(cls)}
        missing = [name for name in ("model", "classes", "palette") if name not in data]
        if missing:
            raise MetadataError(f"{source}: metadata misses required keys {missing}")
        unknown = {k: v for k, v in data.items() if k not in known}
        try:
            meta = cls(**{k: v for k, v in data.items() if k in known})
        except MetadataError as err:
            raise MetadataError(f"{source}: {err}") from err
        except TypeError as err:  # e.g. classes given as a number
            raise MetadataError(f"{source}: malformed model metadata ({err})") from err
        meta.extra.update(unknown)
        return meta

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "ModelMeta":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise MetadataError(f"{source}: edgeseg metadata is not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: edgeseg metadata must be a JSON object")
        return cls.from_dict(data, source)
