"""Video sources: files, image folders, V4L2 and CSI cameras, and network streams behind one small interface.

Frames come out in OpenCV's BGR order, as they are decoded. The pipeline converts only the network-sized copy to
RGB and renders in BGR, so a full-resolution frame is never converted twice on its way from decoder to encoder.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from ..errors import VideoSourceError
from .uri import IMAGE_SUFFIXES, SourceSpec, parse_source

# FFmpeg blocks for 30 s by default on a dead stream; a shorter read timeout lets the reconnect logic take over.
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 5_000
CSI_CAPTURE = (1280, 720, 30)  # width, height, fps: a mode every Jetson CSI sensor driver offers


class VideoSource:
    """A stream of BGR uint8 frames; ``read()`` returns None when there are no more.

    Attributes:
        uri: The source as the user named it.
        is_live: True for cameras and network streams, which run in real time whether or not they are read.
        fps: Frame rate reported by the container or device, or None when unknown (image folders).
        size: ``(height, width)`` of the first frame.
        frame_count: Number of frames in a file or folder; None for live sources or when the container omits it.
    """

    uri: str = ""
    is_live: bool = False
    fps: float | None = None
    size: tuple[int, int] | None = None
    frame_count: int | None = None

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames until the source ends (a live source ends when it breaks; the pipeline reconnects instead)."""
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class CaptureSource(VideoSource):
    """Anything ``cv2.VideoCapture`` opens: files, cameras, FFmpeg URLs and GStreamer pipelines.

    The first frame is decoded at construction, so a file that opens but holds no decodable video fails here
    with a clear message instead of producing an empty run.

    Args:
        capture: The capture, opened or not.
        uri: The source as the user named it.
        is_live: Whether this kind of source runs in real time; a URL with a known frame count is taken as a file.
        failure: Message of the error raised when the capture is not open or yields no frame.
    """

    def __init__(self, capture: cv2.VideoCapture, uri: str, *, is_live: bool, failure: str):
        if not capture.isOpened():
            capture.release()
            raise VideoSourceError(failure)
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise VideoSourceError(f"{failure} (it opened, but no frame could be decoded)")
        self._capture = capture
        self._pending: np.ndarray | None = first
        self.uri = uri
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < 1000 else None
        self.size = first.shape[:2]
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        # A network URL with a known length is a remote file, not a live stream.
        self.is_live = is_live and count <= 0
        self.frame_count = None if self.is_live or count <= 0 else count

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._capture is None:
            return None
        ok, frame = self._capture.read()
        return frame if ok else None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        self._pending = None


class ImageSource(VideoSource):
    """A sorted list of image files (one for a single image), read one per frame."""

    def __init__(self, paths: list[Path], uri: str):
        if not paths:
            raise VideoSourceError(f"{uri}: no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}) in this folder")
        self._paths = paths
        self._next = 0
        self.uri = uri
        self.frame_count = len(paths)
        self._pending: np.ndarray | None = self._load(paths[0])
        self.size = self._pending.shape[:2]

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoSourceError(f"cannot read image {path}: unreadable or not an image")
        return image

    def read(self) -> np.ndarray | None:
        if self._next >= len(self._paths):
            return None
        frame = self._pending if self._pending is not None else self._load(self._paths[self._next])
        self._pending = None
        self._next += 1
        return frame

    def close(self) -> None:
        self._next = len(self._paths)
        self._pending = None


def _natural_key(path: Path) -> list:
    """Sort ``frame2.png`` before ``frame10.png``, as a human numbering frames expects."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` in natural name order."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


@functools.lru_cache(maxsize=1)
def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build can run GStreamer pipelines (pip wheels cannot; JetPack's OpenCV can)."""
    return bool(re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()))


def _is_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()


def gstreamer_pipeline(spec: SourceSpec) -> str:
    """The GStreamer pipeline that decodes a CSI camera or a network stream into BGR frames for appsink.

    ``appsink drop=true max-buffers=1`` keeps only the newest frame, so a slow consumer never reads stale ones.
    On Jetson, decoded frames live in NVMM memory and ``nvvidconv`` brings them to system memory.
    """
    sink = "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    if spec.kind == "csi":
        width, height, fps = CSI_CAPTURE
        return (f"nvarguscamerasrc sensor-id={spec.index} ! "
                f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
                f"nvvidconv ! video/x-raw,format=BGRx ! {sink}")
    if spec.kind != "stream":
        raise VideoSourceError(f"{spec.uri}: GStreamer decoding is only used for CSI cameras and network streams")
    to_system_memory = "nvvidconv ! video/x-raw,format=BGRx ! " if _is_jetson() else ""
    parts = urlsplit(spec.location)
    if parts.scheme == "rtp":
        depay = ('udpsrc port={} caps="application/x-rtp,media=video,encoding-name=H264,payload=96" ! '
                 "rtpjitterbuffer ! rtph264depay ! h264parse ! decodebin ! ").format(parts.port)
        return depay + to_system_memory + sink
    return f"uridecodebin uri={spec.location} ! {to_system_memory}{sink}"


def _require_gstreamer(spec: SourceSpec, why: str) -> None:
    if not opencv_has_gstreamer():
        raise VideoSourceError(
            f"{spec.uri}: {why} needs OpenCV built with GStreamer, and this OpenCV ({cv2.__version__}) has none. "
            "On Jetson use JetPack's OpenCV (apt install python3-opencv, and pip uninstall opencv-python-headless)")


def _ffmpeg_url(location: str) -> str:
    """FFmpeg listens for RTP on an explicit address; jetson-utils' ``rtp://@:PORT`` means any address."""
    parts = urlsplit(location)
    if parts.scheme == "rtp" and parts.hostname in (None, "@"):
        return urlunsplit(parts._replace(netloc=f"0.0.0.0:{parts.port}"))
    return location


def open_source(uri: str | int | SourceSpec, *, gst: bool = False) -> VideoSource:
    """Open any source form listed in :data:`edgeseg.runtime.video.uri.SOURCE_FORMS`.

    Args:
        uri: A path, device, URI, camera index, or an already parsed :class:`SourceSpec`.
        gst: Decode network streams with a GStreamer pipeline (hardware decode where the platform has it) instead of
            OpenCV's FFmpeg backend, which decodes on the CPU.

    Raises:
        VideoSourceError: the source does not exist, cannot be opened or decoded, or needs GStreamer support that
            this OpenCV lacks.
    """
    spec = uri if isinstance(uri, SourceSpec) else parse_source(uri)
    if spec.kind == "folder":
        return ImageSource(list_images(spec.location), spec.uri)
    if spec.kind == "image":
        return ImageSource([Path(spec.location)], spec.uri)
    if spec.kind == "file":
        capture = cv2.VideoCapture(spec.location, cv2.CAP_FFMPEG)
        return CaptureSource(capture, spec.uri, is_live=False,
                             failure=f"cannot read {spec.location} as a video: corrupt, empty, or not a video file")
    if spec.kind == "v4l2":
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        capture = cv2.VideoCapture(spec.index, backend)
        if capture.isOpened():
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # do not queue frames the pipeline would only drop
        return CaptureSource(capture, spec.uri, is_live=True,
                             failure=f"cannot open camera {spec.location}: not connected, busy, or not readable by "
                                     "this user (is it in the 'video' group?)")
    if spec.kind == "csi":
        _require_gstreamer(spec, "a CSI camera")
        capture = cv2.VideoCapture(gstreamer_pipeline(spec), cv2.CAP_GSTREAMER)
        return CaptureSource(capture, spec.uri, is_live=True,
                             failure=f"cannot open CSI camera {spec.index}: sensor not connected, or "
                                     "nvargus-daemon not running")
    if gst:
        _require_gstreamer(spec, "--gst")
        capture = cv2.VideoCapture(gstreamer_pipeline(spec), cv2.CAP_GSTREAMER)
    else:
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_READ_TIMEOUT_MS]
        capture = cv2.VideoCapture(_ffmpeg_url(spec.location), cv2.CAP_FFMPEG, timeouts)
    return CaptureSource(capture, spec.uri, is_live=True,
                         failure=f"cannot open stream {spec.uri}: unreachable, wrong path, or an unsupported codec")
