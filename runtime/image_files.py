"""Image and label files read safely: facts from a PNG's or JPEG's bytes before decoding, and the dataset decoders.

The byte-level checks (format, declared size, completeness, PNG inflation bound) serve both readers of untrusted or
fragile image files: the dataset reader (a truncated training image would train on grey) and the HTTP server (a
request must be refused before its decode costs memory and CPU). They differ
on purpose in one decoding choice, made where they decode: datasets ignore a JPEG's EXIF orientation, because labels
are drawn on the stored pixel grid; the server applies it, because a phone photo's class map should match the photo
as its sender sees it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND_CHUNK = b"IEND\xaeB`\x82"  # chunk type plus its fixed CRC: the last 8 bytes of every complete PNG
JPEG_SIGNATURE = b"\xff\xd8\xff"
JPEG_SOS = b"\xff\xda"
JPEG_EOI = b"\xff\xd9"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_format(data: bytes) -> str | None:
    """``"jpeg"`` or ``"png"`` from the file signature; None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk must come first: length (4), type (4), then width and height (big-endian uint32).
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length field
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if marker in _JPEG_SOF_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return height, width
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        position += 2 + length
    return None


# PNG colour type -> samples per pixel (greyscale, RGB, palette, grey + alpha, RGBA).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_INFLATE_STEP = 1 << 20


def png_inflates_within_header(data: bytes) -> bool:
    """Whether every PNG chunk fits in the file and the pixel data inflates to no more than the header allows.

    The header check bounds what a well-formed file decodes to, but zlib data can go on far beyond the rows the
    header declares (a 2.6 MB file with a 10x10 header inflated to 2.7 GB and took 5.8 s to decode). The data is
    inflated here in 1 MiB steps and discarded, stopping as soon as it passes the declared size.
    """
    height, width = struct.unpack(">II", data[16:24])
    bit_depth, colour, interlace = data[24], data[25], data[28]
    samples = _PNG_SAMPLES.get(colour)
    if samples is None or bit_depth not in (1, 2, 4, 8, 16):
        return False
    row_bytes = 1 + (width * samples * bit_depth + 7) // 8  # a filter byte, then the packed samples
    allowed = height * row_bytes
    if interlace:  # Adam7: seven passes, each row with its own filter byte and padding
        allowed += 7 * height + 8 * (height + 7)
    inflater = zlib.decompressobj()
    produced, position = 0, 8
    try:
        while position + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[position:position + 8])
            if position + 12 + length > len(data):  # libpng would allocate the declared length (up to 4 GiB)
                return False
            if kind == b"IDAT":
                pending = data[position + 8:position + 8 + length]
                while pending:
                    produced += len(inflater.decompress(pending, _INFLATE_STEP))
                    if produced > allowed:
                        return False
                    pending = inflater.unconsumed_tail
            elif kind == b"IEND":
                break
            position += 12 + length
    except zlib.error:
        return True  # corrupt data: the decoder reports it as corrupt, not as oversized
    return True


def is_complete(data: bytes) -> bool:
    """Whether a PNG or JPEG reaches its end marker (True for other formats, which have no such check).

    Decoders hand back the top part of a cut-off file, filled with grey, with at most a warning on stderr. A complete
    PNG ends with its IEND chunk (type and fixed CRC); in a JPEG, entropy-coded data escapes its 0xFF bytes, so an
    end-of-image marker after the last start-of-scan ends the main image (an EXIF thumbnail's markers all come
    before it).
    """
    kind = image_format(data)
    if kind == "png":
        return data.rfind(PNG_IEND_CHUNK) >= len(PNG_SIGNATURE)
    if kind == "jpeg":
        last_scan = data.rfind(JPEG_SOS)
        return last_scan > 0 and data.find(JPEG_EOI, last_scan) != -1
    return True


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header, None when there is none to read."""
    kind = image_format(data)
    if kind is None:
        return None
    return _png_size(data) if kind == "png" else _jpeg_size(data)


# ---------------------------------------------------------------------------------------- dataset files

_PNG_PALETTE_COLOUR_TYPE = 3
_GREY_IDENTITY_PALETTE = np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes()

# The decoder must not rotate JPEGs by their EXIF orientation: labels are drawn on the stored pixel grid.
_IMAGE_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def _read_file_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} file does not exist: {path}") from None
    except OSError as err:
        raise DataError(f"cannot read {what} file {path}: {err.strerror or err}") from None


def _check_complete(data: bytes, path: Path, what: str) -> None:
    """Refuse PNG and JPEG files that end early: OpenCV decodes their top part and would train on grey."""
    if not is_complete(data):
        raise DataError(f"{what} file is truncated (no end marker): {path}")


def _png_chunks(data: bytes, path: Path) -> list[tuple[bytes, bytes]]:
    chunks = []
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        chunk_type = data[position + 4:position + 8]
        end = position + 12 + length
        if end > len(data):
            raise DataError(f"label file is truncated inside its {chunk_type!r} chunk: {path}")
        chunks.append((chunk_type, data[position + 8:position + 8 + length]))
        if chunk_type == b"IEND":
            break
        position = end
    return chunks


def _png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + chunk_type + payload + struct.pack(">I", zlib.crc32(chunk_type + payload))


def _palette_indices_as_grey(data: bytes, path: Path) -> bytes:
    """Rewrite an indexed PNG so that decoding it yields the palette *indices* rather than the colours.

    OpenCV always expands palettes to colour. Giving entry ``i`` the colour ``(i, i, i)`` (and dropping any
    transparency) makes every decoded channel equal the index, with no PIL dependency and no per-pixel Python.
    """
    bit_depth = data[24]
    palette = _GREY_IDENTITY_PALETTE[: 3 * min(256, 2 ** bit_depth)]
    chunks = [(kind, palette if kind == b"PLTE" else payload)
              for kind, payload in _png_chunks(data, path) if kind != b"tRNS"]
    return PNG_SIGNATURE + b"".join(_png_chunk(kind, payload) for kind, payload in chunks)


def _decode(data: bytes, flags: int, path: Path, what: str) -> np.ndarray:
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags) if data else None
    except cv2.error:  # OpenCV raises instead of returning None for some malformed headers
        decoded = None
    if decoded is None:
        raise DataError(f"{what} file cannot be decoded (empty, corrupt or not an image): {path}")
    return decoded


def read_rgb_image(path: str | Path) -> np.ndarray:
    """Decode an image file to HxWx3 RGB uint8, refusing unreadable or truncated files with a DataError."""
    path = Path(path)
    data = _read_file_bytes(path, "image")
    _check_complete(data, path, "image")
    return cv2.cvtColor(_decode(data, _IMAGE_READ_FLAGS, path, "image"), cv2.COLOR_BGR2RGB)


def read_raw_label(path: str | Path) -> np.ndarray:
    """Decode a label file to its stored HxW uint8 values: grey levels, or palette indices for indexed PNGs.

    A 3- or 4-channel label is accepted only when its colour channels agree (a grey mask saved as RGB); a real
    colour-coded mask cannot be read as class ids and is refused.
    """
    path = Path(path)
    data = _read_file_bytes(path, "label")
    _check_complete(data, path, "label")
    indexed = data.startswith(PNG_SIGNATURE) and len(data) > 25 and data[25] == _PNG_PALETTE_COLOUR_TYPE
    if indexed:
        data = _palette_indices_as_grey(data, path)
    label = _decode(data, cv2.IMREAD_COLOR if indexed else cv2.IMREAD_UNCHANGED, path, "label")
    if label.dtype != np.uint8:
        raise DataError(f"label file must hold 8-bit class ids, found {label.dtype} values: {path}")
    if label.ndim == 3:
        first = label[:, :, 0]
        if not indexed and not (np.array_equal(first, label[:, :, 1]) and np.array_equal(first, label[:, :, 2])):
            raise DataError(f"label file is a colour image; it must hold one class id per pixel: {path}")
        label = np.ascontiguousarray(first)
    return label
