"""Loading pretrained backbone weights (e.g. a torchvision ImageNet file the user downloaded) into a zoo model.

Nothing is downloaded here: the zoo builds every model from random initialisation, and a user who has ImageNet
weights passes the local file. Checks are strict by default because a silently half-loaded backbone trains
without error and only shows up as a few missing mIoU points much later.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from edgeseg.runtime.errors import ModelFormatError

logger = logging.getLogger(__name__)

# Wrappers that training scripts put around a state dict; one level is unwrapped.
_WRAPPER_KEYS = ("state_dict", "model")


class WeightsFileError(ModelFormatError, ValueError):
    """A weights file is unreadable, is not a state dict, or does not fit the backbone."""


@dataclass(frozen=True)
class LoadReport:
    """What a backbone load did: keys loaded, backbone keys left at their initial value, file keys not used."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: tuple[str, ...]


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local ``.pt``/``.pth`` file: a bare state dict, or the one inside an edgeseg checkpoint."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsFileError(f"{path}: no such weights file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise WeightsFileError(f"{path}: not a PyTorch state dict file that loads with weights_only=True "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if isinstance(data, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise WeightsFileError(f"{path}: not a state dict (expected a mapping of parameter names to tensors, "
                               f"got {type(data).__name__})")
    # Checkpoints saved from DataParallel / DistributedDataParallel prefix every key with "module.".
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in data.items()}


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Copy the tensors of a local state dict into ``model.backbone``.

    Keys of the ImageNet classifier (``fc.*`` for ResNet, ``classifier.*`` for MobileNets; see the backbone's
    ``pretrained_ignore``) are skipped. Batch-norm ``num_batches_tracked`` counters are optional on both sides.

    Args:
        model: a zoo model with a ``backbone`` (BiSeNetV2 and Fast-SCNN have none: they train from scratch).
        path: the ``.pth``/``.pt`` file, loaded with ``weights_only=True`` (no code in the file is executed).
        strict: raise when backbone keys are missing from the file or the file has keys the backbone lacks;
            with False those are logged as a warning and the matching keys are still loaded.

    Returns:
        What was loaded, missing, unexpected and ignored.

    Raises:
        WeightsFileError (a ValueError, and an EdgesegError that the CLI shows as one line): the model has no
            ``backbone``; the file is missing, unreadable or not a state dict; a tensor has the wrong shape (e.g. a
            ResNet-50 file for a ResNet-18 backbone); or, when strict, keys do not match.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise WeightsFileError(f"{path}: {type(model).__name__} has no pretrained-compatible 'backbone' to load "
                               f"weights into (it trains from scratch)")
    file_state = read_state_dict(path)
    ignore_prefixes = tuple(getattr(backbone, "pretrained_ignore", ()))
    ignored = sorted(k for k in file_state if k.startswith(ignore_prefixes))
    file_state = {k: v for k, v in file_state.items() if not k.startswith(ignore_prefixes)}

    own_state = backbone.state_dict()
    optional = {k for k in own_state if k.endswith("num_batches_tracked")}
    missing = sorted(k for k in own_state if k not in file_state and k not in optional)
    unexpected = sorted(k for k in file_state if k not in own_state)
    mismatched = [f"{k} (file {tuple(v.shape)}, model {tuple(own_state[k].shape)})"
                  for k, v in file_state.items() if k in own_state and v.shape != own_state[k].shape]
    if mismatched:
        raise WeightsFileError(f"{path}: {len(mismatched)} tensor(s) have the wrong shape for this "
                               f"{type(backbone).__name__} backbone: {_listing(mismatched, 4)}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} backbone key(s) missing from the file: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} file key(s) unknown to the backbone: {_listing(unexpected)}")
    if problems and strict:
        raise WeightsFileError(f"{path}: does not match the {type(backbone).__name__} backbone; "
                               + "; ".join(problems) + " (pass strict=False to load the matching keys anyway)")
    if problems:
        logger.warning("%s: partial backbone load; %s", path, "; ".join(problems))
    usable = {k: v for k, v in file_state.items() if k in own_state}
    if not usable:
        raise WeightsFileError(f"{path}: no key matches the {type(backbone).__name__} backbone")
    backbone.load_state_dict(usable, strict=False)
    return LoadReport(loaded=tuple(sorted(usable)), missing=tuple(missing), unexpected=tuple(unexpected),
                      ignored=tuple(ignored))
