"""Joint image/label augmentation in numpy and OpenCV, and the train and eval pipelines built from it.

Every function takes an RGB uint8 image (HxWx3) and a uint8 label map (HxW, 255 = ignore) and keeps them aligned:
geometric steps move both, photometric steps touch only the image. Work stays in uint8 until the final
normalisation (lookup tables for colour changes, no float64 anywhere), because the loader has to keep up with a
training step on a two-core CPU. All randomness is drawn from a ``numpy.random.Generator`` that the caller passes
in, so a (seed, epoch, index) triple always produces the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.runtime.classes import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.runtime.preprocess import normalize, resize_image, resize_labels

Size = tuple[int, int]
"""(height, width), the order numpy shapes use."""


def _as_size(size: int | Size | list[int], what: str) -> Size:
    height, width = (size, size) if isinstance(size, int) else size
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"{what} must be positive (height, width), got {size}")
    return int(height), int(width)


def random_scale(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, base_size: Size | None,
                 scale_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Resize both to ``base_size`` (or their own size) times a factor drawn uniformly from ``scale_range``.

    The base resize and the random factor are one resize, so reduced-resolution training never resamples twice.
    """
    base_height, base_width = image.shape[:2] if base_size is None else base_size
    factor = rng.uniform(scale_range[0], scale_range[1])
    size = (max(1, round(base_height * factor)), max(1, round(base_width * factor)))
    return resize_image(image, size), resize_labels(label, size)


def _crop_window(length: int, crop: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """Source and destination slices along one axis: a random window if the image is longer than the crop,
    otherwise the whole image at a random offset inside the (padded) crop."""
    if length >= crop:
        start = int(rng.integers(0, length - crop + 1))
        return slice(start, start + crop), slice(0, crop)
    offset = int(rng.integers(0, crop - length + 1))
    return slice(0, length), slice(offset, offset + length)


def _crop_windows(shape: tuple[int, ...], crop_size: Size, rng: np.random.Generator):
    """(source, destination) index pairs of a random crop: what to cut from the image, where it goes in the crop."""
    (rows, rows_out), (cols, cols_out) = (_crop_window(shape[0], crop_size[0], rng),
                                          _crop_window(shape[1], crop_size[1], rng))
    return (rows, cols), (rows_out, cols_out)


def _paste(image: np.ndarray, label: np.ndarray, crop_size: Size, destination, image_fill,
           label_fill: int) -> tuple[np.ndarray, np.ndarray]:
    out_image = np.empty((*crop_size, 3), dtype=np.uint8)
    out_image[:] = image_fill
    out_label = np.full(crop_size, label_fill, dtype=np.uint8)
    out_image[destination] = image
    out_label[destination] = label
    return out_image, out_label


def random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop_size: Size,
                image_fill: tuple[int, int, int] = (0, 0, 0),
                label_fill: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``crop_size`` window at a random position; a side shorter than the crop is padded.

    Padding fills the image with ``image_fill`` and the label with ``label_fill`` (ignored by the loss), and the
    image lands at a random offset inside the padded crop rather than always in the top-left corner.
    """
    source, destination = _crop_windows(image.shape, crop_size, rng)
    return _paste(image[source], label[source], crop_size, destination, image_fill, label_fill)


def hflip(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror image and label left-right (contiguous copies, unlike a negative-stride numpy view)."""
    return cv2.flip(image, 1), cv2.flip(label, 1)


@dataclass(frozen=True)
class ColorJitter:
    """Random brightness, contrast, saturation and hue changes, applied with uint8 lookup tables.

    Each factor is drawn uniformly from ``[1 - x, 1 + x]`` for brightness, contrast and saturation; the hue shifts
    by up to ``hue`` of a full turn (0.5 = half the colour wheel). The four steps run in a random order, as the
    order changes the result and a fixed one would narrow the distribution.

    Args:
        brightness: Largest relative change of pixel intensity.
        contrast: Largest relative change of the spread around the image's mean grey level.
        saturation: Largest relative change of HSV saturation.
        hue: Largest hue shift, as a fraction of the hue circle (at most 0.5).
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ColorJitter.{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"ColorJitter.hue must lie in [0, 0.5], got {self.hue}")

    @classmethod
    def from_strength(cls, strength: float) -> "ColorJitter":
        """One-number form used by configs: the same range for brightness, contrast and saturation, a quarter of
        it for hue (large hue shifts turn sky green and road red, which no camera does)."""
        return cls(brightness=strength, contrast=strength, saturation=strength, hue=min(0.5, strength / 4))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        steps = [self._brightness, self._contrast, self._saturation, self._hue]
        for step_index in rng.permutation(len(steps)):
            image = steps[step_index](image, rng)
        return image

    def _factor(self, amount: float, rng: np.random.Generator) -> float:
        return float(rng.uniform(1.0 - amount, 1.0 + amount))

    @staticmethod
    def _linear_lut(scale: float, shift: float) -> np.ndarray:
        values = np.arange(256, dtype=np.float32) * np.float32(scale) + np.float32(shift)
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)

    def _brightness(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.brightness == 0:
            return image
        return cv2.LUT(image, self._linear_lut(self._factor(self.brightness, rng), 0.0))

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.contrast == 0:
            return image
        factor = self._factor(self.contrast, rng)
        mean_grey = cv2.mean(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))[0]
        return cv2.LUT(image, self._linear_lut(factor, (1.0 - factor) * mean_grey))

    def _saturation(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.saturation == 0:
            return image
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = cv2.LUT(hsv[:, :, 1], self._linear_lut(self._factor(self.saturation, rng), 0.0))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def _hue(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.hue == 0:
            return image
        # OpenCV's uint8 hue runs over 0..179 (two degrees a step), so the shift wraps modulo 180.
        shift = int(round(rng.uniform(-self.hue, self.hue) * 180))
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        lut = ((np.arange(256) + shift) % 180).astype(np.uint8)
        hsv[:, :, 0] = cv2.LUT(hsv[:, :, 0], lut)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _as_jitter(jitter: bool | float | ColorJitter | None) -> ColorJitter | None:
    if isinstance(jitter, ColorJitter):
        return jitter
    if jitter is None or jitter is False or jitter == 0:
        return None
    if jitter is True:
        return ColorJitter()
    return ColorJitter.from_strength(float(jitter))


class TrainTransform:
    """Training pipeline: random scale -> random crop (padded) -> horizontal flip -> colour jitter -> normalise.

    Jitter runs on the real pixels only, before padding, so padded regions keep exactly the fill colour (the mean
    colour, which normalises to zero) and cost no jitter work.

    Args:
        crop_size: Network input during training, (height, width) or one int for a square.
        base_size: Size the images are brought to before the random scale, e.g. (180, 240) to train at half
            resolution on 360x480 images; None keeps each image's own size.
        scale_range: Random scale factors relative to ``base_size``.
        flip: Mirror left-right with probability 0.5.
        jitter: ColorJitter, a strength for :meth:`ColorJitter.from_strength`, True for the defaults, or
            False/0/None for none.
        mean: RGB mean in [0, 1] for normalisation and the padding colour.
        std: RGB standard deviation in [0, 1].
    """

    def __init__(self, crop_size: int | Size, base_size: Size | None = None,
                 scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True,
                 jitter: bool | float | ColorJitter | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        self.crop_size = _as_size(crop_size, "crop_size")
        self.base_size = None if base_size is None else _as_size(base_size, "base_size")
        self.scale_range = (float(low), float(high))
        self.flip = bool(flip)
        self.jitter = _as_jitter(jitter)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.fill = tuple(int(round(m * 255)) for m in self.mean)

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, base_size={self.base_size}, "
                f"scale_range={self.scale_range}, flip={self.flip}, jitter={self.jitter})")

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Returns the normalised float32 CHW image and the uint8 HxW label of one training crop."""
        image, label = random_scale(image, label, rng, self.base_size, self.scale_range)
        source, destination = _crop_windows(image.shape, self.crop_size, rng)
        image, label = image[source], label[source]
        if self.flip and rng.random() < 0.5:
            image, label = hflip(image, label)
        if self.jitter is not None:
            image = self.jitter(np.ascontiguousarray(image), rng)
        image, label = _paste(image, label, self.crop_size, destination, self.fill, IGNORE_INDEX)
        return normalize(image, self.mean, self.std), label


class EvalTransform:
    """Evaluation pipeline: the image resized to the network input and normalised; the label left untouched.

    Uses the same :func:`~edgeseg.runtime.preprocess.resize_image` and ``normalize`` as the deployed runtime, so
    validation during training and evaluation of an exported model see identical pixels. The label stays at full
    resolution because the metric is computed on the label grid after predictions are mapped back onto it.

    Args:
        size: Network input (height, width); None feeds each image at its own size.
        mean: RGB mean in [0, 1].
        std: RGB standard deviation in [0, 1].
    """

    def __init__(self, size: int | Size | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.size = None if size is None else _as_size(size, "size")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"

    def image(self, image: np.ndarray) -> np.ndarray:
        """Network input for one RGB uint8 image: float32 CHW."""
        resized = image if self.size is None else resize_image(image, self.size)
        return normalize(resized, self.mean, self.std)

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Same call shape as :class:`TrainTransform` so either fits the dataset wrapper; ``rng`` is unused."""
        return self.image(image), label
