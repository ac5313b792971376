"""Torch-free readers for the segmentation datasets that training, evaluation and the quickstart consume.

A dataset is named by a spec string ``NAME[:ROOT]``: ``camvid`` alone is the small CamVid sample embedded in the
package, ``camvid:/data/camvid`` the full copy, ``cityscapes:/data/cityscapes``, ``voc:/data/VOCdevkit``,
``ade20k:/data/ADEChallengeData2016`` or ``folder:/data/my_set`` (see :func:`open_dataset` for the layouts).

Every reader yields the same thing, so nothing downstream knows which dataset it reads: an RGB uint8 image and a
uint8 label map of *train ids* (``0 .. num_classes - 1``) where every void, border or unlabelled pixel is
:data:`~edgeseg.runtime.classes.IGNORE_INDEX`. The raw label values of each dataset are translated with a 256-entry
lookup table in one vectorised pass.

Bad data fails early and names the file: opening a split checks that every image has a label and that the split is
not empty; reading a sample checks that the files decode completely, that image and label have the same size and
that the label holds only values the dataset defines. Labels without an image are ignored on purpose: the image list
(or the split list file) defines a split, and label folders of public datasets often hold more files than a split
uses.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .classes import (ADE20K, CAMVID, CITYSCAPES, CITYSCAPES_ID_TO_TRAIN_ID, IGNORE_INDEX, VOC, ClassSpec,
                      distinct_palette)
from .errors import DataError
from .image_files import read_raw_label, read_rgb_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Lossless formats only: a JPEG mask would blend neighbouring class ids at every edge. Listed by preference.
LABEL_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")

def build_label_lut(raw_to_train: dict[int, int], num_classes: int) -> tuple[np.ndarray, int | None]:
    """Lookup table raw value -> train id, plus the sentinel it gives raw values the dataset does not define.

    Raw value 255 always means ignore. The sentinel is ``num_classes`` (never a train id, never the ignore index),
    so a single comparison after the lookup finds undefined values; it is None when every byte value is defined.
    """
    if num_classes > 255:
        raise DataError(f"{num_classes} classes do not fit uint8 labels with {IGNORE_INDEX} as the ignore index")
    mapping = {**raw_to_train, IGNORE_INDEX: IGNORE_INDEX}
    sentinel = num_classes if len(mapping) < 256 else None
    lut = np.full(256, IGNORE_INDEX if sentinel is None else sentinel, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut, sentinel


def _format_ranges(values: np.ndarray) -> str:
    """``[0, 1, 2, 3, 7, 255]`` -> ``"0-3, 7, 255"``: readable lists of valid label values in error messages."""
    runs = np.split(values, np.flatnonzero(np.diff(values) != 1) + 1)
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)


@dataclass(frozen=True)
class _Layout:
    """What a layout function found on disk: the ordered (image, label) pairs and how to read their labels."""

    root: Path
    pairs: list[tuple[Path, Path]]
    classes: ClassSpec
    raw_to_train: dict[int, int]


class SegmentationDataset:
    """One split of a dataset: ordered (image, label) file pairs with the class list and the label id mapping.

    Indexing reads and checks one sample, so a loader worker only ever touches the files it needs.

    Args:
        name: Dataset name (``camvid``, ``cityscapes``, ``voc``, ``ade20k``, ``folder``).
        root: Folder the layout was found in.
        split: Split name as the user gave it (``train``, ``val``...).
        classes: Classes the train ids refer to.
        pairs: (image path, label path) for each sample, in a fixed order.
        raw_to_train: Raw label value -> train id; any value not listed (other than 255) is a data error.
    """

    def __init__(self, name: str, root: Path, split: str, classes: ClassSpec, pairs: list[tuple[Path, Path]],
                 raw_to_train: dict[int, int]) -> None:
        self.name = name
        self.root = Path(root)
        self.split = split
        self.classes = classes
        self._pairs = list(pairs)
        self.include: tuple[str, ...] = ()  # the patterns :meth:`select` kept, for the repr and caches
        self._lut, self._sentinel = build_label_lut(raw_to_train, classes.num_classes)

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        chosen = f", include={list(self.include)!r}" if self.include else ""
        return (f"SegmentationDataset(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
                f"classes={self.classes.num_classes}, root='{self.root}'{chosen})")

    def select(self, patterns: list[str]) -> "SegmentationDataset":
        """The samples whose image file stem matches one of the shell patterns (``0001TP_*``): a sequence split.

        An empty result is an error naming the patterns, so a typo never trains on nothing.
        """
        pairs = [pair for pair in self._pairs if any(fnmatch.fnmatchcase(pair[0].stem, p) for p in patterns)]
        if not pairs:
            raise DataError(f"no {self.name} {self.split} image matches {list(patterns)} (patterns apply to file "
                            f"stems such as {self._pairs[0][0].stem!r})")
        chosen = copy.copy(self)
        chosen._pairs, chosen.include = pairs, tuple(patterns)
        return chosen

    def _pair(self, index: int) -> tuple[Path, Path]:
        if not -len(self._pairs) <= index < len(self._pairs):
            raise IndexError(f"sample {index} is out of range for {len(self._pairs)} samples")
        return self._pairs[index]

    def paths(self, index: int) -> tuple[Path, Path]:
        """(image path, label path) of one sample: for error messages, reports and visualisations."""
        return self._pair(index)

    def read_image(self, index: int) -> np.ndarray:
        return read_rgb_image(self._pair(index)[0])

    def read_label(self, index: int) -> np.ndarray:
        """The label of one sample as train ids (255 = ignore); values the dataset does not define are an error."""
        path = self._pair(index)[1]
        raw = read_raw_label(path)
        label = cv2.LUT(raw, self._lut)
        if self._sentinel is not None and (label == self._sentinel).any():
            unknown = np.unique(raw[label == self._sentinel])[:10].tolist()
            raise DataError(f"label file holds values {unknown} that are not {self.name} classes "
                            f"(valid: {_format_ranges(np.flatnonzero(self._lut != self._sentinel))}): {path}")
        return label

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.read_image(index)
        label = self.read_label(index)
        if image.shape[:2] != label.shape:
            image_path, label_path = self._pair(index)
            raise DataError(f"image is {image.shape[1]}x{image.shape[0]} but its label is "
                            f"{label.shape[1]}x{label.shape[0]} (width x height): {image_path} vs {label_path}")
        return image, label


# ---------------------------------------------------------------------------------------------------------- layouts

def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder does not exist: {path}")
    return path


def _split_dir(parent: Path, split: str, what: str) -> Path:
    folder = parent / split
    if not folder.is_dir():
        available = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise DataError(f"{what} split folder does not exist: {folder} "
                        f"(splits found: {', '.join(available) or 'none'})")
    return folder


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_images(images: list[Path], where: Path | str) -> list[Path]:
    if not images:
        raise DataError(f"no images found in {where}")
    return images


def _pair_by_stem(images: list[Path], label_dir: Path, validate: bool) -> list[tuple[Path, Path]]:
    """Pair each image with the label of the same file stem (``a.jpg`` with ``a.png``)."""
    if not validate:
        return [(image, label_dir / f"{image.stem}{LABEL_SUFFIXES[0]}") for image in images]
    _require_dir(label_dir, "label")
    labels: dict[str, Path] = {}
    for path in label_dir.iterdir():
        suffix = path.suffix.lower()
        if suffix not in LABEL_SUFFIXES:
            continue
        current = labels.get(path.stem)
        if current is None or LABEL_SUFFIXES.index(suffix) < LABEL_SUFFIXES.index(current.suffix.lower()):
            labels[path.stem] = path
    pairs = []
    for image in images:
        if image.stem not in labels:
            raise DataError(f"image has no label ({'/'.join(LABEL_SUFFIXES)} named {image.stem!r} in {label_dir}): "
                            f"{image}")
        pairs.append((image, labels[image.stem]))
    return pairs


def _identity_ids(num_classes: int) -> dict[int, int]:
    return {i: i for i in range(num_classes)}


def _embedded_camvid_root() -> Path:
    import edgeseg

    return Path(edgeseg.__file__).resolve().parent / "assets" / "camvid_mini"


def _camvid_layout(root: Path | None, split: str, validate: bool) -> _Layout:
    """``images/{split}/*`` with ``labels/{split}/<same stem>.png``; ids 0-10 are classes, 11 is void."""
    root = _require_dir(_embedded_camvid_root() if root is None else root, "CamVid root")
    image_dir = _split_dir(root / "images", split, "CamVid image")
    images = _require_images(_list_images(image_dir), image_dir)
    pairs = _pair_by_stem(images, root / "labels" / split, validate)
    raw_to_train = {**_identity_ids(CAMVID.num_classes), CAMVID.extra["void_label"]: IGNORE_INDEX}
    return _Layout(root, pairs, CAMVID, raw_to_train)


def _cityscapes_layout(root: Path, split: str, validate: bool) -> _Layout:
    """``leftImg8bit/{split}/{city}/X_leftImg8bit.png`` with ``gtFine/{split}/{city}/X_gtFine_labelIds.png``."""
    _require_dir(root, "Cityscapes root")
    image_dir = _split_dir(root / "leftImg8bit", split, "Cityscapes image")
    images = _require_images(sorted(image_dir.glob("*/*_leftImg8bit.png")),
                              f"{image_dir} (expected {{city}}/*_leftImg8bit.png)")
    label_dir = root / "gtFine" / split
    pairs = []
    for image in images:
        stem = image.name[: -len("_leftImg8bit.png")]
        label = label_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if validate and not label.is_file():
            raise DataError(f"image has no label (expected {label}): {image}")
        pairs.append((image, label))
    raw_to_train = {label_id: IGNORE_INDEX for label_id in range(34)}
    raw_to_train.update(CITYSCAPES_ID_TO_TRAIN_ID)
    return _Layout(root, pairs, CITYSCAPES, raw_to_train)


def _voc_layout(root: Path, split: str, validate: bool) -> _Layout:
    """VOC2012 (or a VOCdevkit holding it): the ids in ``ImageSets/Segmentation/{split}.txt`` define the split."""
    _require_dir(root, "VOC root")
    if (root / "VOC2012").is_dir():
        root = root / "VOC2012"
    list_dir = root / "ImageSets" / "Segmentation"
    list_file = list_dir / f"{split}.txt"
    if not list_file.is_file():
        available = sorted(p.stem for p in list_dir.glob("*.txt")) if list_dir.is_dir() else []
        raise DataError(f"VOC split list does not exist: {list_file} (lists found: {', '.join(available) or 'none'})")
    ids = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"VOC split list names no images: {list_file}")
    pairs = []
    for sample_id in ids:
        image = root / "JPEGImages" / f"{sample_id}.jpg"
        label = root / "SegmentationClass" / f"{sample_id}.png"
        if validate:
            if not image.is_file():
                raise DataError(f"image listed in {list_file} does not exist: {image}")
            if not label.is_file():
                raise DataError(f"image has no label (expected {label}): {image}")
        pairs.append((image, label))
    return _Layout(root, pairs, VOC, _identity_ids(VOC.num_classes))


_ADE_SPLITS = {"train": "training", "val": "validation"}


def _ade20k_layout(root: Path, split: str, validate: bool) -> _Layout:
    """ADEChallengeData2016: ``images/{training,validation}/*.jpg`` with ``annotations/.../*.png``; 0 is unlabelled."""
    _require_dir(root, "ADE20K root")
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder_name = _ADE_SPLITS.get(split, split)
    image_dir = _split_dir(root / "images", folder_name, "ADE20K image")
    images = _require_images(_list_images(image_dir), image_dir)
    pairs = _pair_by_stem(images, root / "annotations" / folder_name, validate)
    raw_to_train = {0: IGNORE_INDEX, **{raw: raw - 1 for raw in range(1, ADE20K.num_classes + 1)}}
    return _Layout(root, pairs, ADE20K, raw_to_train)


def parse_class_list(path: Path) -> ClassSpec:
    """Read ``classes.txt``: one class per line as ``name`` or ``name r g b``; blank lines and ``#`` lines skip.

    Classes without a colour get the colour :func:`distinct_palette` gives their id, so a list may mix both forms.
    """
    if not path.is_file():
        raise DataError(f"class list does not exist: {path} (one class name per line, optionally 'name r g b')")
    names: list[str] = []
    colours: dict[int, tuple[int, int, int]] = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) >= 4 and all(w.isdigit() for w in words[-3:]):
            rgb = tuple(int(w) for w in words[-3:])
            if max(rgb) > 255:
                raise DataError(f"colour {rgb} of line {line_number} is outside 0..255: {path}")
            colours[len(names)] = rgb
            line = " ".join(words[:-3])
        names.append(line)
    if not names:
        raise DataError(f"class list names no classes: {path}")
    if len(names) > 255:
        raise DataError(f"class list has {len(names)} classes; at most 255 fit uint8 labels with 255 = ignore: {path}")
    defaults = distinct_palette(len(names))
    palette = tuple(colours.get(i, defaults[i]) for i in range(len(names)))
    return ClassSpec(dataset=path.parent.name or "folder", names=tuple(names), palette=palette)


def _folder_layout(root: Path, split: str, validate: bool) -> _Layout:
    """``images/{split}/*`` with ``masks/{split}/<same stem>.png`` and ``classes.txt``; masks hold class ids.

    Without split sub-folders (``images/*`` and ``masks/*``) the folder has no splits, and every split name reads
    the same pairs: convenient for evaluating on a folder of labelled images.
    """
    _require_dir(root, "dataset root")
    classes = parse_class_list(root / "classes.txt")
    images_root = _require_dir(root / "images", "image")
    flat_images = _list_images(images_root)
    if flat_images:
        image_dir, label_dir = images_root, root / "masks"
    else:
        image_dir, label_dir = _split_dir(images_root, split, "image"), root / "masks" / split
    images = _require_images(flat_images or _list_images(image_dir), image_dir)
    pairs = _pair_by_stem(images, label_dir, validate)
    return _Layout(root, pairs, classes, _identity_ids(classes.num_classes))


_LAYOUTS: dict[str, Callable[[Path | None, str, bool], _Layout]] = {
    "camvid": _camvid_layout,
    "cityscapes": _cityscapes_layout,
    "voc": _voc_layout,
    "ade20k": _ade20k_layout,
    "folder": _folder_layout,
}
DATASET_NAMES = tuple(_LAYOUTS)
"""Names :func:`open_dataset` accepts before the optional ``:ROOT``."""


DATA_ROOT_ENV = "EDGESEG_DATA"
"""The folder holding a user's datasets, one sub-folder each: the committed configs write
``camvid:${EDGESEG_DATA}/camvid``, so that one setting points every config at the data, wherever it lives."""


def _expand_root(root: str, spec: str) -> str:
    """``$VAR`` and ``${VAR}`` in a root read from the environment; an unset one is an error, never a literal."""
    missing = [name for name in re.findall(r"\$\{?(\w+)\}?", root) if name not in os.environ]
    if missing:
        hint = f" (the folder that holds your datasets, e.g. export {DATA_ROOT_ENV}=/data)" \
            if DATA_ROOT_ENV in missing else ""
        raise DataError(f"dataset spec {spec!r} uses ${missing[0]}, which is not set{hint}")
    return os.path.expandvars(root)


def data_path(relative: str) -> Path:
    """``$EDGESEG_DATA/relative``: where scripts look for a dataset or clip by default; a DataError when unset."""
    return Path(_expand_root(f"${{{DATA_ROOT_ENV}}}/{relative}", f"${DATA_ROOT_ENV}/{relative}"))


def parse_dataset_spec(spec: str) -> tuple[str, Path | None]:
    """Split ``NAME[:ROOT]`` into the dataset name and its root folder (None when the spec gives no root).

    ROOT may use environment variables, as ``camvid:${EDGESEG_DATA}/camvid``.
    """
    name, separator, root = spec.partition(":")
    name = name.strip().lower()
    if name not in _LAYOUTS:
        raise DataError(f"unknown dataset {name!r} in {spec!r}; known datasets: {', '.join(DATASET_NAMES)} "
                        f"(write NAME:ROOT, e.g. camvid:/data/camvid)")
    root = root.strip()
    if separator and not root:
        raise DataError(f"dataset spec {spec!r} has an empty root after ':'")
    return name, Path(_expand_root(root, spec)).expanduser() if root else None


def open_dataset(spec: str, split: str = "train", validate: bool = True) -> SegmentationDataset:
    """Open one split of a dataset named by ``NAME[:ROOT]``.

    Layouts under ROOT:

    - ``camvid``: ``images/{split}/*`` and ``labels/{split}/*.png`` of the same stem; ids 0-10, void 11 is ignored.
      Without a root: the embedded half-resolution sample (``edgeseg/assets/camvid_mini``).
    - ``cityscapes``: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and ``gtFine/.../*_gtFine_labelIds.png``;
      label ids map onto the 19 train ids, all others are ignored.
    - ``voc``: ``VOCdevkit`` or ``VOC2012``: ``ImageSets/Segmentation/{split}.txt``, ``JPEGImages``,
      ``SegmentationClass`` (indexed PNGs: the palette index is the class, 255 the ignored border).
    - ``ade20k``: ``ADEChallengeData2016`` (or its parent): ``images/{training,validation}`` and ``annotations``;
      ``train``/``val`` name those splits; 0 is ignored, 1..150 become 0..149.
    - ``folder``: ``images/{split}/*``, ``masks/{split}/*`` (or flat ``images/``, ``masks/``) and ``classes.txt``.

    Args:
        spec: ``NAME`` or ``NAME:ROOT``.
        split: Split to read.
        validate: Check at once that every image has its label file. Without it, opening only lists the images
            and a missing label surfaces when its sample is read. An empty split is an error either way.
    """
    name, root = parse_dataset_spec(spec)
    if root is None and name != "camvid":
        raise DataError(f"dataset {name!r} needs a root folder: write {name}:/path/to/{name}")
    layout = _LAYOUTS[name](root, split, validate)
    return SegmentationDataset(name, layout.root, split, layout.classes, layout.pairs, layout.raw_to_train)
