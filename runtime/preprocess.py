"""Image pre- and post-processing shared by training evaluation, export checks and every runtime backend.

One implementation on purpose: mIoU measured on a checkpoint and on its ONNX export can only agree to 0.1 point if
both see the same resized pixels and map predictions back to the label grid the same way. Everything is vectorised
OpenCV/numpy; nothing loops over pixels in Python.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import DataError


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Accept an HxWx3 uint8 RGB array; anything else is an error that says what was given."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{name} must be HxWx3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise DataError(f"{name} must be uint8, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise DataError(f"{name} is empty: shape {image.shape}")
    return image


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an image to (height, width): area averaging when shrinking (no aliasing), bilinear when enlarging."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class map to (height, width): class ids are never blended."""
    height, width = size
    if labels.shape[:2] == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def normalize(images: np.ndarray, mean: list[float], std: list[float], dtype=np.float32) -> np.ndarray:
    """uint8 NHWC (or HWC) RGB -> normalised NCHW (or CHW) float in a single pass over the pixels.

    uint8 input goes through a 256-entry table per channel (``cv2.LUT`` straight into each output plane): the
    table holds the same float32 arithmetic as the generic path, so results are bit-identical, about 8x faster.
    """
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32)))
    shift = np.asarray(mean, dtype=np.float32) * 255.0
    if images.dtype == np.uint8 and images.ndim in (3, 4) and images.shape[-1] == 3:
        batch = images if images.ndim == 4 else images[None]
        table = ((np.arange(256, dtype=np.float32)[:, None] - shift) * scale).astype(dtype)
        out = np.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=dtype)
        for index, image in enumerate(batch):
            for channel, plane in enumerate(cv2.split(image)):
                cv2.LUT(plane, np.ascontiguousarray(table[:, channel]), dst=out[index, channel])
        return out if images.ndim == 4 else out[0]
    out = (images.astype(np.float32) - shift) * scale
    axes = (0, 3, 1, 2) if out.ndim == 4 else (2, 0, 1)
    return np.ascontiguousarray(out.transpose(axes), dtype=dtype)


def colorize(labels: np.ndarray, palette: np.ndarray | list, ignore_index: int = 255) -> np.ndarray:
    """Class map -> RGB image by palette lookup; ignored or unknown ids are black.

    ``cv2.applyColorMap`` with a 256-entry user table is about ten times faster than numpy fancy indexing at video
    sizes.
    """
    lut = np.zeros((256, 1, 3), dtype=np.uint8)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(colours), 0] = colours
    if len(colours) <= ignore_index < 256:
        lut[ignore_index] = 0
    return cv2.applyColorMap(np.ascontiguousarray(labels, dtype=np.uint8), lut)


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray | list, alpha: float = 0.5,
            class_names: list[str] | None = None) -> np.ndarray:
    """Blend the colourised class map over the image; with ``class_names``, draw a legend of the classes present.

    ``labels`` may be smaller than the image (a class map at the network's resolution); it is resized with
    nearest-neighbour first.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    labels = resize_labels(labels, image.shape[:2])
    blended = cv2.addWeighted(image, 1.0 - alpha, colorize(labels, palette), alpha, 0.0)
    if class_names:
        draw_legend(blended, np.unique(labels), palette, class_names)
    return blended


def draw_legend(image: np.ndarray, class_ids, palette, class_names: list[str]) -> np.ndarray:
    """Draw coloured swatches with class names in the top-left corner (in place)."""
    scale = max(0.35, min(image.shape[:2]) / 900)
    line = int(22 * scale / 0.5)
    y = line
    for class_id in class_ids:
        if class_id >= len(class_names):
            continue
        colour = tuple(int(c) for c in palette[class_id])
        cv2.rectangle(image, (6, y - line + 6), (6 + line - 6, y), colour, thickness=-1)
        cv2.putText(image, class_names[class_id], (line + 6, y - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
        y += line
    return image
