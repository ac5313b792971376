"""Unlabeled frames for distillation: the deployment camera's own footage, which has no labels.

``distill.unlabeled`` names a video file, an image folder or any source URI the runtime reads (``rtsp://...``,
``/dev/video0``). Frames are taken every ``stride``-th; a video or stream is decoded once into a cache folder of
lossless PNGs (keyed by the source, its size and date and the sampling), so that loader workers decode single
frames in parallel and a second run starts at once. An image folder is read in place.

Config (``distill.unlabeled``, or just the source as a string)::

    unlabeled:
      source: footage/highway.mp4   # video file, image folder or source URI
      include: null                 # image folders: keep file stems matching these patterns, e.g. ["0016E5_*"]
      stride: 1                     # take every N-th frame
      max_frames: null              # stop after this many sampled frames (required for live streams)
      ratio: 0.5                    # unlabeled frames per labeled image in each batch (0.5: 8 labeled + 4)
      threshold: 0.7                # pseudo-label a pixel with the teacher's class where its probability >= this
      pseudo_weight: 1.0            # weight of the student's cross entropy against those pseudo-labels
      cache_dir: null               # default: ~/.cache/edgeseg/frames
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch

from edgeseg.runtime.classes import IGNORE_INDEX
from edgeseg.runtime.errors import ConfigError, DataError, VideoSourceError
from edgeseg.runtime.image_files import read_rgb_image

UNLABELED_DEFAULTS = {"source": None, "include": None, "stride": 1, "max_frames": None, "ratio": 0.5,
                      "threshold": 0.7, "pseudo_weight": 1.0, "cache_dir": None}


def unlabeled_settings(value) -> dict:
    """Validate ``distill.unlabeled`` (a mapping, or the source alone) against :data:`UNLABELED_DEFAULTS`."""
    if isinstance(value, (str, Path)):
        value = {"source": str(value)}
    if not isinstance(value, dict):
        raise ConfigError(f"distill.unlabeled must be a source path/URI or a mapping, got {value!r}")
    unknown = set(value) - set(UNLABELED_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown distill.unlabeled keys {sorted(unknown)}; allowed: {sorted(UNLABELED_DEFAULTS)}")
    settings = {**UNLABELED_DEFAULTS, **value}
    if not settings["source"]:
        raise ConfigError("distill.unlabeled needs a 'source': a video file, an image folder or a source URI")
    settings["source"] = os.path.expanduser(os.path.expandvars(str(settings["source"])))  # ${EDGESEG_DATA}/...
    if not isinstance(settings["stride"], int) or settings["stride"] < 1:
        raise ConfigError(f"distill.unlabeled.stride must be an integer >= 1, got {settings['stride']!r}")
    if settings["max_frames"] is not None and (not isinstance(settings["max_frames"], int)
                                               or settings["max_frames"] < 1):
        raise ConfigError(f"distill.unlabeled.max_frames must be an integer >= 1, got {settings['max_frames']!r}")
    if not isinstance(settings["ratio"], (int, float)) or settings["ratio"] <= 0:
        raise ConfigError(f"distill.unlabeled.ratio must be > 0 (unlabeled frames per labeled image), got "
                          f"{settings['ratio']!r}")
    if not isinstance(settings["threshold"], (int, float)) or not 0 <= settings["threshold"] <= 1:
        raise ConfigError(f"distill.unlabeled.threshold must lie in [0, 1], got {settings['threshold']!r}")
    if settings["include"] is not None:
        include = settings["include"]
        settings["include"] = [include] if isinstance(include, str) else list(include)
    return settings


def unlabeled_batch_size(labeled_batch: int, ratio: float) -> int:
    """Unlabeled frames added to a batch of ``labeled_batch`` labeled images: at least one."""
    return max(1, round(labeled_batch * ratio))


class UnlabeledFrames:
    """An ordered list of frame files (RGB when read); sampling and caching happened when it was opened."""

    def __init__(self, paths: list[Path], source: str) -> None:
        self.paths, self.source = list(paths), source

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"UnlabeledFrames(source={self.source!r}, frames={len(self)})"

    def read_image(self, index: int) -> np.ndarray:
        return read_rgb_image(self.paths[index])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB frame, all-ignore label): the labeled datasets' sample form, so the same torch wrapper and training
        transform (crops, flips, jitter, seeded per sample) apply."""
        image = self.read_image(index)
        return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeseg" / "frames"


def open_unlabeled(settings: dict) -> UnlabeledFrames:
    """Resolve the source to frame files; a missing, unreadable or empty source is a one-line error here, before
    any training starts."""
    from edgeseg.runtime.video.sources import list_images
    from edgeseg.runtime.video.uri import parse_source

    source = settings["source"]
    try:
        spec = parse_source(source)
    except VideoSourceError as err:
        raise DataError(f"distill.unlabeled source {source}: {err}") from None
    if spec.kind in ("folder", "image"):
        paths = [Path(spec.location)] if spec.kind == "image" else list_images(spec.location)
        if settings["include"]:
            paths = [p for p in paths if any(fnmatch.fnmatchcase(p.stem, pattern) for pattern in settings["include"])]
        paths = paths[::settings["stride"]][:settings["max_frames"]]
    else:
        if settings["include"]:
            raise ConfigError(f"distill.unlabeled.include applies to image folders; {source} is a {spec.kind}")
        paths = _cached_frames(spec, settings)
    if not paths:
        raise DataError(f"distill.unlabeled source {source} gave no frames (stride {settings['stride']}"
                        + (f", include {settings['include']}" if settings["include"] else "") + ")")
    return UnlabeledFrames(paths, source)


def _cached_frames(spec, settings: dict) -> list[Path]:
    """Decode a video or stream once at the configured sampling into PNGs; later runs reuse the folder."""
    from edgeseg.runtime.video.sources import open_source

    if spec.is_live:
        if settings["max_frames"] is None:
            raise ConfigError(f"distill.unlabeled source {spec.uri} is live: set distill.unlabeled.max_frames")
        identity = {"uri": spec.uri}  # a live source has no fixed content: recapture unless the cache exists
    else:
        stat = Path(spec.location).stat()
        identity = {"path": str(Path(spec.location).resolve()), "bytes": stat.st_size, "mtime": stat.st_mtime_ns}
    identity.update(stride=settings["stride"], max_frames=settings["max_frames"])
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    cache_root = Path(settings["cache_dir"]) if settings["cache_dir"] else _default_cache_dir()
    folder = cache_root / f"{Path(spec.location).stem or 'stream'}-{digest}"
    if (folder / "frames.json").is_file():
        names = json.loads((folder / "frames.json").read_text())["frames"]
        return [folder / name for name in names]
    partial = folder.with_name(folder.name + f".{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = []
    try:
        with open_source(spec) as video:
            for index, frame in enumerate(video):
                if index % settings["stride"]:
                    continue
                name = f"frame_{index:07d}.png"
                if not cv2.imwrite(str(partial / name), frame):
                    raise DataError(f"cannot write the frame cache {partial / name}")
                names.append(name)
                if settings["max_frames"] is not None and len(names) >= settings["max_frames"]:
                    break
        (partial / "frames.json").write_text(json.dumps({"source": identity, "frames": names}))
        if names:
            partial.rename(folder)  # whole or not at all: a killed decode leaves only a .partial folder
    except VideoSourceError as err:
        raise DataError(f"distill.unlabeled source {spec.uri}: {err}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return [folder / name for name in names]


def pseudo_labels(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """The teacher's class where its probability reaches ``threshold``, the ignore index elsewhere: (N, H, W)."""
    confidence, classes = probabilities.max(dim=1)
    return torch.where(confidence >= threshold, classes, torch.full_like(classes, IGNORE_INDEX))


def sampling_summary(frames: UnlabeledFrames, settings: dict, labeled_batch: int) -> str:
    per_batch = unlabeled_batch_size(labeled_batch, settings["ratio"])
    every = "every frame" if settings["stride"] == 1 else f"every {settings['stride']}th frame"
    return (f"unlabeled frames: {len(frames)} from {frames.source} ({every}), {per_batch} per "
            f"batch of {labeled_batch} labeled, pseudo-labels where the teacher's probability >= "
            f"{settings['threshold']:g}, about {math.ceil(len(frames) / per_batch)} steps per pass")
