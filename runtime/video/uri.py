"""Source URIs: every form ``edgeseg video`` accepts, parsed without opening anything.

The forms follow jetson-utils (``file://``, ``v4l2://``, ``csi://``, ``rtsp://``, ``rtp://``) with one deliberate
difference: a bare number is a V4L2/USB camera index, as OpenCV users expect, not CSI camera 0. Parsing is kept
apart from opening so that a typo is reported before a model is loaded, and so that tests can check every form on a
machine without cameras.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import VideoSourceError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtp", "http", "https")

# One line per accepted form: shown by `edgeseg video --help` and in every "cannot open" error.
SOURCE_FORMS = """\
  video.mp4, file:///data/video.mp4   a video file (any container and codec FFmpeg reads)
  frames/                             a folder of images, read in name order (*.png, *.jpg, *.jpeg, *.bmp)
  photo.jpg                           a single image
  0, /dev/video0, v4l2://0            V4L2/USB camera 0 (a bare number is /dev/videoN; in jetson-inference
                                      a bare 0 means CSI camera 0, here use csi://0 for that)
  csi://0                             Jetson CSI camera, sensor-id 0 (GStreamer nvarguscamerasrc)
  rtsp://192.168.1.10:8554/live       RTSP stream (FFmpeg; --gst decodes with GStreamer, in hardware if it can)
  rtp://@:5000                        H.264 RTP stream received on UDP port 5000
  http://host/stream.m3u8             HTTP(S) stream or remote file (HLS, MJPEG, MP4)"""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source URI.

    Attributes:
        kind: One of ``"file"``, ``"image"``, ``"folder"``, ``"v4l2"``, ``"csi"`` or ``"stream"``.
        location: The path, the device path (``/dev/videoN``) or the stream URI that gets opened.
        index: Camera index for ``v4l2`` and sensor id for ``csi``; None otherwise.
        uri: What the user typed, kept for messages and the run summary.
    """

    kind: str
    location: str
    index: int | None = None
    uri: str = ""

    @property
    def is_live(self) -> bool:
        """Cameras and network streams run in real time: stale frames are dropped and breaks are reconnected."""
        return self.kind in ("v4l2", "csi", "stream")


def forms_in_one_line(forms: str) -> str:
    """The example column of a forms table, joined into one line for an error message."""
    examples = [line.strip().split("  ")[0] for line in forms.splitlines() if not line.startswith("   ")]
    return "; ".join(examples)


def _unknown(uri: str, why: str) -> VideoSourceError:
    return VideoSourceError(f"{why}: {uri!r}. Accepted sources: {forms_in_one_line(SOURCE_FORMS)} "
                            "(edgeseg video --help explains each)")


def _camera_index(text: str, uri: str) -> int:
    match = re.fullmatch(r"(?:/dev/video)?(\d+)", text)
    if match is None:
        raise _unknown(uri, "not a camera index or /dev/videoN device")
    return int(match.group(1))


def parse_source(uri: str | int) -> SourceSpec:
    """Classify a source URI; local paths must exist, devices and streams are not touched.

    Raises:
        VideoSourceError: unknown scheme, missing path, or a malformed camera/stream URI; the message lists the
            accepted forms.
    """
    text = str(uri).strip()
    if not text:
        raise _unknown(text, "empty video source")
    if text.isdigit():
        return SourceSpec("v4l2", f"/dev/video{int(text)}", int(text), text)
    if re.fullmatch(r"/dev/video\d+", text):
        index = _camera_index(text, text)
        return SourceSpec("v4l2", text, index, text)

    scheme, sep, rest = text.partition("://")
    if not sep:
        return _parse_path(text, text)
    scheme = scheme.lower()
    if scheme == "file":
        return _parse_path(rest, text)
    if scheme == "v4l2":
        index = _camera_index(rest, text)
        return SourceSpec("v4l2", f"/dev/video{index}", index, text)
    if scheme == "csi":
        if not rest.isdigit():
            raise _unknown(text, "csi:// takes a sensor id such as csi://0")
        return SourceSpec("csi", text, int(rest), text)
    if scheme in STREAM_SCHEMES:
        parts = urlsplit(text)
        if scheme == "rtp" and parts.port is None:
            raise _unknown(text, "rtp:// needs a UDP port, such as rtp://@:5000")
        if scheme != "rtp" and not parts.hostname:
            raise _unknown(text, f"{scheme}:// needs a host")
        return SourceSpec("stream", text, None, text)
    raise _unknown(text, f"unknown video source scheme {scheme + '://'!r}")


def _parse_path(path_text: str, uri: str) -> SourceSpec:
    path = Path(path_text).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path), None, uri)
    if path.is_file():
        kind = "image" if path.suffix.lower() in IMAGE_SUFFIXES else "file"
        return SourceSpec(kind, str(path), None, uri)
    raise _unknown(uri, "no such file or folder")
