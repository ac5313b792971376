"""Requests in, responses out: the image and query checks of ``POST /v1/segment`` and the response encoders.

Kept apart from the routes (``app.py``) because it is where untrusted bytes are read: every check here runs
before any work is done for the request, and every refusal is an :class:`ApiError` with its 4xx status.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from ..image_files import declared_size, image_format, is_complete, png_inflates_within_header

SEGMENT_QUERY = {
    "format": ("png", "json", "confidence"),  # confidence: max softmax probability 0-255 as a grey PNG
    "overlay": ("0", "1", "false", "true"),
    "encoding": ("png", "jpeg"),
    "alpha": None,  # a number in [0, 1]
}


class ApiError(Exception):
    """A request the server refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Request body -> HxWx3 uint8 RGB image; any problem is an :class:`ApiError` with a 4xx status."""
    if not data:
        raise ApiError(400, "empty body: send a JPEG or PNG image as the body or as the multipart field 'image'")
    kind = image_format(data)
    if kind is None:
        raise ApiError(415, "the body is not a JPEG or PNG image (unrecognised file signature)")
    size = declared_size(data)
    if size is None:
        raise ApiError(400, f"corrupt or truncated {kind.upper()}: no readable image header")
    height, width = size
    if height < 1 or width < 1:
        raise ApiError(400, f"{kind.upper()} header gives an empty image ({width}x{height})")
    if height * width > max_pixels:
        raise ApiError(413, f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if not is_complete(data):
        raise ApiError(400, f"truncated {kind.upper()}: the file ends before its end marker")
    if kind == "png" and not png_inflates_within_header(data):
        raise ApiError(400, f"corrupt PNG: a chunk runs past the end of the file, or the pixel data inflates beyond "
                            f"the {width}x{height} its header declares")
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ApiError(400, f"corrupt {kind.upper()}: it could not be decoded")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


# A class map repeats most of each row in the next one: the "up" filter turns that into zeros and run-length coding
# packs them, about four times faster than libpng's per-row filter search and to a smaller file.
CLASS_MAP_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                 cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
PHOTO_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def encode_image(image: np.ndarray, encoding: str, jpeg_quality: int = 85) -> bytes:
    """Class map (HxW) or RGB image (HxWx3) -> PNG or JPEG bytes."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if encoding == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    else:
        params = PHOTO_PNG if image.ndim == 3 else CLASS_MAP_PNG
    ok, encoded = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", image, params)
    if not ok:
        raise RuntimeError(f"{encoding} encoding failed")
    return encoded.tobytes()


def class_shares(class_map: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Fraction of the image's pixels assigned to each class (every class listed, in id order)."""
    counts = np.bincount(class_map.ravel(), minlength=len(classes))
    total = max(1, class_map.size)
    return {name: float(counts[index]) / total for index, name in enumerate(classes)}


# ------------------------------------------------------------------------------------------------------ requests

@dataclass(frozen=True)
class SegmentOptions:
    format: str = "png"
    overlay: bool = False
    encoding: str = "png"
    alpha: float = 0.5


def parse_segment_query(params) -> SegmentOptions:
    """Check the query of ``POST /v1/segment``: unknown keys, repeated keys and bad values are 400 errors."""
    values: dict[str, str] = {}
    for key in params:
        if key not in SEGMENT_QUERY:
            raise ApiError(400, f"unknown query parameter {key!r}; accepted: {', '.join(SEGMENT_QUERY)}")
        given = params.getlist(key)
        if len(given) > 1:
            raise ApiError(400, f"query parameter {key!r} is given {len(given)} times")
        value = given[0].strip().lower()
        allowed = SEGMENT_QUERY[key]
        if key == "encoding" and value == "jpg":
            value = "jpeg"
        if allowed is not None and value not in allowed:
            raise ApiError(400, f"{key}={given[0]!r} is not accepted; use one of {', '.join(allowed)}")
        values[key] = value
    overlay = values.get("overlay", "0") in ("1", "true")
    options = SegmentOptions(format=values.get("format", "png"), overlay=overlay,
                             encoding=values.get("encoding", "png"))
    if "alpha" in values:
        try:
            alpha = float(values["alpha"])
        except ValueError:
            raise ApiError(400, f"alpha={values['alpha']!r} is not a number") from None
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise ApiError(400, f"alpha must lie in [0, 1], got {values['alpha']}")
        options = dataclasses.replace(options, alpha=alpha)
    if options.format != "png" and (overlay or "encoding" in values or "alpha" in values):
        what = "class shares" if options.format == "json" else "the confidence map"
        raise ApiError(400, f"format={options.format} returns {what}; it cannot be combined with overlay, encoding "
                            "or alpha")
    if not overlay and options.encoding == "jpeg":
        raise ApiError(400, "a class map is only sent as lossless PNG; encoding=jpeg needs overlay=1")
    if not overlay and "alpha" in values:
        raise ApiError(400, "alpha sets the overlay's opacity and needs overlay=1")
    return options


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 from its Content-Length alone or as soon as the bytes pass ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length header {declared!r}") from None
        if declared_bytes > limit:
            raise ApiError(413, f"body of {declared_bytes} bytes exceeds the limit of {limit} bytes "
                                f"(--max-image-mb {limit / 2 ** 20:g})")
    chunks, received = [], 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, f"body exceeds the limit of {limit} bytes (--max-image-mb {limit / 2 ** 20:g})")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The image from a raw body, or from the multipart form field ``image``."""
    body = await read_body(request, limit)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return body

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(request.scope, receive=replay)
    try:
        async with form_request.form(max_files=4, max_fields=16, max_part_size=limit) as form:
            field = form.get("image")
            if field is None:
                raise ApiError(400, f"the multipart form has no 'image' field (fields: {', '.join(form) or 'none'})")
            if not isinstance(field, UploadFile):
                raise ApiError(400, "the multipart field 'image' must be a file upload, not a text value")
            return await field.read()
    except HTTPException as err:  # malformed multipart bodies
        raise ApiError(400, f"malformed multipart body: {err.detail}") from None
