"""Mixed precision settings shared by the trainer and the distiller: one place decides when autocast is on."""

from __future__ import annotations

import contextlib

import torch

from edgeseg.runtime.errors import ConfigError


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; None where training stays in FP32 (always on a CPU)."""
    if setting not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got {setting!r}")
    if device.type != "cuda" or setting == "off":
        return None
    return torch.float16 if setting == "fp16" else torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
