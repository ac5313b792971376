"""The one object every consumer uses to segment images: eval, bench, the video pipeline and the HTTP server.

It splits inference into three stages, ``prepare`` (resize + normalise on the host), ``run`` (the backend alone) and
``finish`` (argmax at network resolution, then nearest resize to each image), so that pipelines can overlap them in
threads and benchmarks can time them apart. The stages are the same for every backend: a checkpoint, its ONNX
export and its TensorRT engine see identical input pixels and their class maps are scored identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence, overload

import numpy as np

from .backends import Backend, open_backend
from .sizes import parse_size
from .errors import DataError, MetadataError, ModelFormatError
from .metadata import ModelMeta
from .preprocess import check_image, normalize, overlay, resize_image, resize_labels

SIZE_MULTIPLE = 32
"""A dynamic-size model loaded without ``size`` runs each batch at its first image's size rounded to this multiple:
the output stride of the encoders in the zoo, so feature maps line up with the input."""

MAX_CLASSES = 255
"""Class maps are uint8 and 255 is the ignore index, so a model may predict at most 255 classes."""


def argmax_channels(logits: np.ndarray) -> np.ndarray:
    """Per-pixel argmax over axis 1 of NCHW logits, as uint8 class ids (NHW).

    A running maximum over the few class planes reads each plane contiguously, which is about 1.5x faster than
    ``np.argmax(axis=1)`` on strided NCHW data; ties resolve to the lower class id, as ``np.argmax`` does.
    """
    best = logits[:, 0].copy()
    class_ids = np.zeros(best.shape, dtype=np.uint8)
    greater = np.empty(best.shape, dtype=bool)
    for class_id in range(1, logits.shape[1]):
        plane = logits[:, class_id]
        np.greater(plane, best, out=greater)
        np.maximum(best, plane, out=best)
        np.putmask(class_ids, greater, class_id)
    return class_ids


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Per-pixel maximum softmax probability of NCHW logits as uint8 0-255 (NHW), what a fused graph returns.

    The top probability is ``1 / sum(exp(l - max l))``, so no normalised probability tensor is built.
    """
    logits = logits.astype(np.float32, copy=False)
    peak = logits.max(axis=1, keepdims=True)
    total = np.exp(logits - peak).sum(axis=1)
    return np.clip(np.rint(255.0 / total), 0, 255).astype(np.uint8)


class Segmenter:
    """A deployed segmentation model: HxWx3 uint8 RGB images in, HxW uint8 class maps at the image's size out.

    Args:
        backend: The loaded network (see :func:`edgeseg.runtime.backends.open_backend`).
        size: ``(height, width)`` to feed a dynamic-size model. A static model accepts only its own size. Without
            it a dynamic model runs each batch at the first image's size rounded to :data:`SIZE_MULTIPLE`.

    Attributes:
        meta: The model card (classes, palette, normalisation, sizes, fused pre/post-processing).
        backend: The :class:`~edgeseg.runtime.backends.base.Backend` that runs the network.
        input_size: ``(height, width)`` the network is fed, or None in the per-batch mode described above.
    """

    def __init__(self, backend: Backend, size: tuple[int, int] | str | None = None) -> None:
        self.backend = backend
        self.meta: ModelMeta = backend.meta
        if self.meta.num_classes > MAX_CLASSES:
            raise MetadataError(f"{self.meta.model}: {self.meta.num_classes} classes do not fit uint8 class maps "
                                f"(at most {MAX_CLASSES}, 255 is the ignore index)")
        static = self.meta.static_size
        requested = parse_size(size) if size is not None else None
        if static and requested and requested != static:
            raise ModelFormatError(
                f"{self.meta.model} takes a fixed {static[0]}x{static[1]} input and cannot run at "
                f"{requested[0]}x{requested[1]}; export it with dynamic height/width to choose the size at run time")
        self.input_size: tuple[int, int] | None = static or requested
        self.palette = np.asarray(self.meta.palette, dtype=np.uint8).reshape(-1, 3)
        self._input_dtype = np.dtype(self.meta.input_dtype)

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", device: str = "auto",
             size: tuple[int, int] | str | None = None, **options) -> "Segmenter":
        """Open a ``.onnx``, ``.engine``/``.plan``, ``.pt`` or ``triton://host:port/model`` model.

        Args:
            path: Model file or Triton URI; its suffix or scheme selects the backend.
            backend: ``auto`` or a backend name that must agree with the model's kind (``openvino`` for an
                ``.onnx`` through OpenVINO).
            device: ``auto``, ``cpu``, ``cuda[:N]`` or ``tensorrt[:N]``; anything explicit fails loudly when the
                backend cannot really run there.
            size: Network input size for dynamic models, see the class docstring.
            options: Backend settings, e.g. ``precision="bf16"`` (OpenVINO) or ``spinning=True`` (ONNX Runtime);
                see :data:`~edgeseg.runtime.backends.BACKEND_OPTIONS`.
        """
        opened = open_backend(path, backend=backend, device=device, **options)
        try:
            return cls(opened, size=size)
        except Exception:
            opened.close()
            raise

    @property
    def providers(self) -> list[str]:
        return list(self.backend.providers)

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def network_size(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        """The (height, width) a batch of these images is resized to."""
        if self.input_size is not None:
            return self.input_size
        height, width = images[0].shape[:2]
        return (max(SIZE_MULTIPLE, round(height / SIZE_MULTIPLE) * SIZE_MULTIPLE),
                max(SIZE_MULTIPLE, round(width / SIZE_MULTIPLE) * SIZE_MULTIPLE))

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Resize images of any sizes to the network size and lay them out as the model expects.

        Returns normalised float NCHW (the model's input dtype), or, when normalisation is fused into the graph,
        the resized uint8 pixels in the model's layout (NHWC for edgeseg exports).
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise DataError("prepare() takes a list of images; wrap a single image in a list or call segment()")
        if len(images) == 0:
            raise DataError("no images to prepare")
        for index, image in enumerate(images):
            check_image(image, f"image {index}")
        height, width = self.network_size(images)
        pixels = np.empty((len(images), height, width, 3), dtype=np.uint8)
        for index, image in enumerate(images):
            pixels[index] = resize_image(image, (height, width))
        channels_last = self.meta.input_layout == "NHWC"
        if self.meta.fused_pre:
            batch = pixels if channels_last else pixels.transpose(0, 3, 1, 2)
            return np.ascontiguousarray(batch, dtype=self._input_dtype)
        batch = normalize(pixels, self.meta.mean, self.meta.std, dtype=self._input_dtype)
        return np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if channels_last else batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Backend inference only. Batches larger than the backend takes run in pieces; a model with a fixed batch
        (e.g. exported with ``--batch 4``) gets each short piece padded with copies of its last image, and only the
        real images' outputs come back."""
        limit, fixed = self.backend.max_batch, self.meta.batch
        if (not limit or len(batch) <= limit) and (not fixed or len(batch) == fixed):
            return self.backend.run(batch)
        step = limit or len(batch)
        outputs = []
        for start in range(0, len(batch), step):
            piece = batch[start:start + step]
            count = len(piece)
            if fixed and count < fixed:
                piece = np.concatenate([piece, np.repeat(piece[-1:], fixed - count, axis=0)])
            outputs.append(self.backend.run(piece)[:count])
        return np.concatenate(outputs)

    def class_ids(self, raw: np.ndarray) -> np.ndarray:
        """Raw network output -> NHW uint8 class ids at network resolution (argmax unless fused in the graph)."""
        if self.meta.fused_post:
            planes = 2 if self.meta.confidence else 1
            if raw.ndim == 4 and raw.shape[1] == planes:
                raw = raw[:, 0]
            if raw.ndim != 3:
                what = "N x 2 x H x W class ids and confidence" if self.meta.confidence else "NHW class ids"
                raise ModelFormatError(f"{self.meta.model}: a fused model must output {what}, got shape {raw.shape}")
            return raw.astype(np.uint8, copy=False)
        if raw.ndim != 4 or raw.shape[1] != self.meta.num_classes:
            raise ModelFormatError(f"{self.meta.model}: expected NCHW logits with {self.meta.num_classes} channels "
                                   f"(one per class in the metadata), got shape {raw.shape}")
        return argmax_channels(raw)

    def confidence(self, raw: np.ndarray) -> np.ndarray:
        """Raw network output -> NHW uint8 maximum softmax probability (0-255) at network resolution.

        A confidence-fused graph carries it as its second plane; from logits it is computed here, the same way.
        """
        if self.meta.confidence:
            if raw.ndim != 4 or raw.shape[1] != 2:
                raise ModelFormatError(f"{self.meta.model}: a confidence-fused model must output N x 2 x H x W, got "
                                       f"shape {raw.shape}")
            return raw[:, 1].astype(np.uint8, copy=False)
        if self.meta.fused_post:
            raise ModelFormatError(f"{self.meta.model} returns class ids only (argmax fused into the graph); export it "
                                   "with --fuse post --confidence, or without --fuse, to get a confidence map")
        self.class_ids(raw)  # the same shape checks as the class map
        return softmax_confidence(raw)

    def finish(self, raw: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Raw network output -> one class map per image, nearest-resized to ``sizes`` (image or label grid)."""
        return self._resize_each(self.class_ids(raw), sizes)

    def finish_confidence(self, raw: np.ndarray,
                          sizes: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """As :meth:`finish`, each class map paired with its confidence map (uint8 0-255, same size)."""
        maps = self.finish(raw, sizes)
        return list(zip(maps, self._resize_each(self.confidence(raw), sizes)))

    @staticmethod
    def _resize_each(planes: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        if len(planes) != len(sizes):
            raise DataError(f"{len(sizes)} target sizes for a batch of {len(planes)}")
        return [resize_labels(plane, tuple(size[:2])) for plane, size in zip(planes, sizes)]

    @overload
    def segment(self, image: np.ndarray, confidence: Literal[False] = False) -> np.ndarray: ...

    @overload
    def segment(self, image: np.ndarray, confidence: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...

    def segment(self, image: np.ndarray, confidence: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """One HxWx3 uint8 RGB image -> its HxW uint8 class map, or with ``confidence`` the pair (class map,
        HxW uint8 maximum softmax probability scaled to 0-255) so that callers can mark uncertain pixels."""
        if not confidence:
            return self.segment_batch([image])[0]
        raw = self.run(self.prepare([image]))
        return self.finish_confidence(raw, [image.shape[:2]])[0]

    def segment_batch(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Images of any sizes -> their class maps, running the network ``batch_size`` images at a time.

        Without ``batch_size`` all images go through in one batch (split only where the model's batch is fixed).
        """
        if batch_size is not None and batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        step = batch_size or max(1, len(images))
        maps: list[np.ndarray] = []
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            maps += self.finish(self.run(self.prepare(chunk)), [image.shape[:2] for image in chunk])
        return maps

    def overlay(self, image: np.ndarray, class_map: np.ndarray, alpha: float = 0.5,
                legend: bool = False) -> np.ndarray:
        """Blend the class colours over the image (RGB uint8); ``legend`` lists the classes present."""
        check_image(image)
        return overlay(image, class_map, self.palette, alpha=alpha,
                       class_names=list(self.meta.classes) if legend else None)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Segmenter(model={self.meta.model!r}, backend={self.backend.name!r}, device={self.backend.device!r},"
                f" input_size={self.input_size})")
