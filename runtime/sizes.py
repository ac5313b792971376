"""One rule for image sizes written by users, wherever they write them (CLI flags, configs, library calls)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import ConfigError

_SIZE = re.compile(r"\s*(\d+)\s*(?:[x*]\s*(\d+)\s*)?", re.IGNORECASE)


def parse_size(value: str | int | Sequence[int], what: str = "size") -> tuple[int, int]:
    """``"360x480"``, ``"512"`` or ``512`` (square), or ``[360, 480]`` -> ``(height, width)``; else a ConfigError.

    ``what`` names the setting in the message (``--size``, ``data.crop_size``).
    """
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        values = [int(v) for v in match.groups() if v is not None] if match else []
        values = values * 2 if len(values) == 1 else values
    elif isinstance(value, int) and not isinstance(value, bool):
        values = [value, value]
    elif isinstance(value, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        values = list(value)
    else:
        values = []
    if len(values) != 2 or min(values) < 1:
        raise ConfigError(f"{what} must be HEIGHTxWIDTH (e.g. 360x480), one number for a square, or [H, W], with "
                          f"positive integers, got {value!r}")
    return values[0], values[1]
