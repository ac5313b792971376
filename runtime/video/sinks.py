"""Where rendered frames go: a video file, numbered images, a window, or nowhere.

A video file is written under a hidden temporary name beside the target and renamed only when the run finishes,
so an aborted run never leaves a truncated file under the name the user asked for. Frames arrive in BGR order.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..errors import VideoSourceError
from ..atomic_files import give_usual_permissions, write_bytes_atomic
from .uri import IMAGE_SUFFIXES, forms_in_one_line

# Container suffix -> FourCC codes to try in order. mp4v works with every pip OpenCV; avc1 (H.264) plays in
# browsers but needs an OpenCV whose FFmpeg has an H.264 encoder, which the pip wheels lack.
VIDEO_CODECS = {
    ".mp4": ("mp4v", "avc1"),
    ".m4v": ("mp4v", "avc1"),
    ".mov": ("mp4v", "avc1"),
    ".mkv": ("mp4v", "XVID"),
    ".avi": ("MJPG", "XVID"),
}
DEFAULT_FPS = 30.0
DISPLAY_URI = "display://"

SINK_FORMS = """\
  out.mp4 (.mov, .m4v, .mkv, .avi)    a video file, renamed into place only when the run ends
  frames/, frames/%06d.png            numbered images in a folder (%06d.jpg for JPEG: faster, smaller)
  out.png                             one image, for single-image sources
  display://                          a window (same as --show; needs OpenCV with GUI support)"""


class VideoSink:
    """Receives rendered BGR frames.

    Attributes:
        name: The output as the run summary shows it.
        stop_requested: Set by a sink whose user asked to stop (a closed window); the pipeline then ends the run.
    """

    name: str = ""
    stop_requested: bool = False

    def write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output so that it is complete under its final name."""

    def abort(self) -> None:
        """Discard a partial output after a failed run; by default the same as :meth:`close`."""
        self.close()


class VideoFileSink(VideoSink):
    """A video file, encoded with ``cv2.VideoWriter`` and renamed into place by :meth:`close`.

    The writer opens on the first frame, whose size fixes the video's size; later frames of another size (an
    image folder of mixed sizes) are resized to it, since a video stream cannot change size.
    """

    def __init__(self, path: str | Path, fps: float | None = None):
        self.path = Path(path)
        self.name = str(self.path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise VideoSourceError(f"{self.path}: unknown video suffix; use one of {', '.join(VIDEO_CODECS)}")
        self.fps = fps or DEFAULT_FPS
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name keeps the real suffix: FFmpeg picks the container from it.
        handle, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".partial{suffix}", dir=self.path.parent)
        os.close(handle)
        self.temp_path = Path(temp)
        give_usual_permissions(self.temp_path)
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height), as VideoWriter takes it

    def _open_writer(self, width: int, height: int) -> cv2.VideoWriter:
        for code in VIDEO_CODECS[self.path.suffix.lower()]:
            writer = cv2.VideoWriter(str(self.temp_path), cv2.VideoWriter_fourcc(*code), self.fps, (width, height))
            if writer.isOpened():
                return writer
            writer.release()
        raise VideoSourceError(f"cannot write {self.path}: this OpenCV has no encoder for "
                               f"{'/'.join(VIDEO_CODECS[self.path.suffix.lower()])}; try .avi or an image folder")

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self._size = (frame.shape[1], frame.shape[0])
            self._writer = self._open_writer(*self._size)
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame)
        self.frames += 1

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def close(self) -> None:
        self._release()
        if self.temp_path.exists():
            if self.frames:
                os.replace(self.temp_path, self.path)
            else:
                self.temp_path.unlink()

    def abort(self) -> None:
        self._release()
        self.temp_path.unlink(missing_ok=True)


def _write_image(path: str | Path, frame: np.ndarray) -> None:
    """Encode by the file's suffix and write atomically, so a reader never sees half an image."""
    ok, encoded = cv2.imencode(Path(path).suffix.lower(), frame)
    if not ok:
        raise VideoSourceError(f"cannot encode a frame as {path}")
    write_bytes_atomic(path, encoded.tobytes())


def _check_image_suffix(path: str | Path) -> None:
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        raise VideoSourceError(f"{path}: images need one of the suffixes {', '.join(IMAGE_SUFFIXES)}")


class ImageSequenceSink(VideoSink):
    """Numbered images from a printf-style pattern (``frames/%06d.png``), each written atomically.

    Numbering counts written frames from 0, so the files stay contiguous even when a live source drops frames.
    """

    def __init__(self, pattern: str | Path):
        self.pattern = self.name = str(pattern)
        try:
            self.pattern % 0
        except (TypeError, ValueError) as err:
            raise VideoSourceError(f"{self.pattern}: not a valid frame-number pattern such as %06d.png "
                                   f"({err})") from None
        _check_image_suffix(self.pattern)
        Path(self.pattern).parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        _write_image(self.pattern % self.frames, frame)
        self.frames += 1


class ImageFileSink(VideoSink):
    """A single image file, for single-image sources; a further frame would replace it."""

    def __init__(self, path: str | Path):
        _check_image_suffix(path)
        self.path = Path(path)
        self.name = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, frame: np.ndarray) -> None:
        _write_image(self.path, frame)


@functools.lru_cache(maxsize=1)
def opencv_has_gui() -> bool:
    """False for opencv-python-headless and other builds without a window backend."""
    match = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    return bool(match) and match.group(1).upper() != "NONE"


class DisplaySink(VideoSink):
    """A window; pressing q or Esc, or closing the window, asks the pipeline to stop."""

    def __init__(self, title: str = "edgeseg"):
        if not opencv_has_gui():
            raise VideoSourceError("showing a window needs OpenCV with GUI support, and this build has none "
                                   "(opencv-python-headless): pip install opencv-python, or write --out instead")
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise VideoSourceError("no display to show a window on ($DISPLAY is not set): write --out instead")
        self.title = title
        self.name = DISPLAY_URI
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)

    def write(self, frame: np.ndarray) -> None:
        cv2.imshow(self.title, frame)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.stop_requested = True

    def close(self) -> None:
        cv2.destroyWindow(self.title)


def open_sink(target: str, *, fps: float | None = None, expected_frames: int | None = None) -> VideoSink:
    """Open an output named as in :data:`SINK_FORMS`.

    Args:
        target: Path, pattern, folder or ``display://``; a ``file://`` prefix is accepted.
        fps: Frame rate for a video file (the source's); :data:`DEFAULT_FPS` when None.
        expected_frames: How many frames the run will write, when known; a single image file refuses more than 1
            (or an unknown number) rather than silently keeping only the last frame.

    Raises:
        VideoSourceError: an unknown suffix, a bad pattern, no display, or a single image for many frames.
    """
    if target.startswith(DISPLAY_URI):
        return DisplaySink(target[len(DISPLAY_URI):] or "edgeseg")
    text = target[len("file://"):] if target.startswith("file://") else target
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if "%" in path.name:
        return ImageSequenceSink(path)
    if suffix in VIDEO_CODECS:
        return VideoFileSink(path, fps)
    if suffix in IMAGE_SUFFIXES:
        if expected_frames != 1:
            raise VideoSourceError(f"{target} holds one image, but this run writes "
                                   f"{expected_frames or 'an unknown number of'} frames: use {path.parent / path.stem}"
                                   f"/%06d{path.suffix} for numbered images, or --max-frames 1")
        return ImageFileSink(path)
    if path.is_dir() or not suffix or text.endswith(("/", os.sep)):
        return ImageSequenceSink(path / "%06d.png")
    raise VideoSourceError(f"cannot tell what kind of output {target!r} is. Accepted outputs: "
                           f"{forms_in_one_line(SINK_FORMS)}")
