"""Checkpoints that carry their own model card, written atomically and loaded without running pickled code.

A checkpoint holds the student's weights *and* everything export and runtime need to use them: the model name and
builder arguments, the class list with palette, the normalisation, the training input size and the resolved config.
Training-only modules (distillation adapters, autoencoders) are never part of ``state_dict``. ``last.pt`` adds the
optimiser, scheduler, scaler and RNG states so that a killed run resumes where it stopped.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from edgeseg import __version__
from edgeseg.runtime.classes import ClassSpec
from edgeseg.runtime.errors import ModelFormatError
from edgeseg.runtime.atomic_files import atomic_path
from edgeseg.runtime.metadata import ModelMeta

FORMAT = "edgeseg-checkpoint"
FORMAT_VERSION = 1


def model_card(*, model_name: str, model_kwargs: dict, classes: ClassSpec, mean, std, input_size, config: dict,
               metrics: dict | None = None) -> dict:
    """The metadata block stored beside the weights (plain types only, so ``weights_only`` loading accepts it)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgeseg_version": __version__,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "classes": classes.to_dict(),
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "input_size": [int(v) for v in input_size],
        "config": config,
        "metrics": dict(metrics or {}),
    }


def save_checkpoint(path: str | Path, card: dict, state_dict: dict, train_state: dict | None = None) -> Path:
    """Write ``card`` + weights (+ the resumable training state) to ``path`` via a temporary file."""
    payload = dict(card, state_dict=state_dict)
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; every failure names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as err:
        raise ModelFormatError(f"{path} is not a readable PyTorch checkpoint (corrupt, truncated, or it holds "
                               f"objects that cannot be loaded safely): {_load_failure(err)}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFormatError(f"{path} is not an edgeseg checkpoint (no '{FORMAT}' card); a bare state dict "
                               f"can be used as model.weights in a training config instead")
    missing = [key for key in ("model", "classes", "normalization", "input_size", "state_dict") if key not in payload]
    if missing:
        raise ModelFormatError(f"{path} misses checkpoint fields {missing}")
    _check_normalization(path, payload["normalization"])
    return payload


def _check_normalization(path, normalization) -> None:
    """Mean and std must be three finite numbers each, std positive: a zero std divides the input by zero."""
    try:
        mean, std = [float(v) for v in normalization["mean"]], [float(v) for v in normalization["std"]]
    except (TypeError, KeyError, ValueError):
        raise ModelFormatError(f"{path}: normalization must hold numeric 'mean' and 'std' lists") from None
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ModelFormatError(f"{path}: normalization needs 3 finite mean values and 3 positive std values, got "
                               f"mean {mean}, std {std}")


def _load_failure(err: Exception) -> str:
    """The reason torch gives, without its advice to retry with ``weights_only=False``: that would run the file's
    code, which is exactly what a checkpoint from an unknown source must never do."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    for line in lines[1:]:  # torch's own reason sits between its advice and a pointer to the documentation
        if "weights_only" not in line and not line.startswith("Check the documentation"):
            return line.removeprefix("WeightsUnpickler error:").strip()
    if isinstance(err, pickle.UnpicklingError) or (lines and "weights_only" in lines[0]):
        return "not a tensor archive edgeseg can read safely"
    return lines[0] if lines else type(err).__name__


def card_classes(card: dict) -> ClassSpec:
    try:
        return ClassSpec.from_dict(card["classes"])
    except (ValueError, TypeError, KeyError) as err:
        raise ModelFormatError(f"checkpoint has a malformed class list: {err}") from None


def card_to_meta(card: dict, **overrides: Any) -> ModelMeta:
    """The runtime metadata for a checkpoint's network, as export writes it into the ONNX file."""
    classes = card_classes(card)
    fields = dict(
        model=card["model"]["name"],
        classes=list(classes.names),
        palette=[list(c) for c in classes.palette],
        mean=list(card["normalization"]["mean"]),
        std=list(card["normalization"]["std"]),
        input_size=list(card["input_size"]),
        dataset=classes.dataset,
        ignore_index=classes.ignore_index,
    )
    fields.update(overrides)
    return ModelMeta(**fields)


def build_model_from_card(card: dict, load_weights: bool = True) -> torch.nn.Module:
    """Rebuild the network a checkpoint describes and load its weights (strictly: a mismatch is an error)."""
    from .models import create_model

    classes = card_classes(card)
    try:
        model = create_model(card["model"]["name"], num_classes=classes.num_classes, **card["model"]["kwargs"])
    except (KeyError, TypeError) as err:
        raise ModelFormatError(f"checkpoint describes a model that cannot be built: {err}") from err
    if load_weights:
        try:
            result = model.load_state_dict(card["state_dict"], strict=False)
        except RuntimeError as err:  # tensors of the wrong shape: another width, class count or model
            detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                          str(err).splitlines()[0])
            raise ModelFormatError(f"checkpoint weights do not fit {card['model']['name']}: {detail}") from None
        if result.missing_keys or result.unexpected_keys:
            raise ModelFormatError(f"checkpoint weights do not fit {card['model']['name']}: missing "
                                   f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model
