"""Training configs: plain YAML data over typed defaults, with ``--set a.b=value`` overrides.

Precedence is defaults < YAML file < ``--set``. A key must already exist in the defaults and keep its type, so a
typo fails at start-up with a close-match suggestion instead of being ignored for hours. YAML is read with
``yaml.safe_load``: a config is data, never code. The resolved config is written into the run folder and into
every checkpoint.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from edgeseg.runtime.errors import ConfigError
from edgeseg.runtime.atomic_files import write_text_atomic
from edgeseg.runtime.sizes import parse_size

# Sections whose contents are free-form (validated by the code that consumes them, e.g. a model builder's
# keyword arguments or the list of distillation losses).
FREE_FORM = {"model.kwargs", "distill"}

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "model": {
        "name": "deeplabv3_resnet18",
        "kwargs": {},
        "weights": None,            # a full edgeseg checkpoint or state dict to start from
        "backbone_weights": None,   # e.g. a torchvision ImageNet ResNet file the user has locally
    },
    "data": {
        "dataset": "camvid",        # NAME or NAME:ROOT; bare "camvid" is the embedded sample
        "train_split": "train",
        "train_include": None,      # train on the images whose file stem matches a pattern, e.g. ["0001TP_*"]
        "val_split": "val",
        "base_size": None,          # [H, W] images are resized to before augmentation; None = native size
        "crop_size": [360, 480],
        "scale_range": [0.5, 2.0],
        "flip": True,
        "jitter": 0.2,
        "eval_size": None,          # [H, W] fed to the network at validation; None = base_size or native
        "batch_size": 8,
        "workers": 2,
        "val_limit": None,          # validate on the first N images only (None = all)
    },
    "optim": {
        "name": "sgd",              # sgd | adamw
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "poly_power": 0.9,
        "warmup_iters": 0,
    },
    "train": {
        "iterations": 1000,
        "val_every": 250,           # val/ckpt/log every N iterations; 0 = only after the last one
        "ckpt_every": 100,
        "log_every": 10,
        "seed": 0,
        "device": "auto",           # auto | cpu | cuda | cuda:N
        "amp": "auto",              # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
        "channels_last": "auto",    # auto (on CUDA) | true | false
        "threads": None,            # torch intra-op threads on CPU; None = torch's default
        "class_weights": None,      # per-class CE weights, e.g. CamVid median-frequency balancing
        "balance_every": 100,       # distillation: measure each loss term against the CE every N steps (0 = first)
    },
    "distill": None,                # see edgeseg.training.distill.distiller for the schema
}


def _close_match(key: str, options) -> str:
    match = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# Sizes as [H, W]; "HxW" (the form of the CLI's --size options) is accepted too.
SIZE_KEYS = {"data.base_size", "data.crop_size", "data.eval_size"}
# String settings that also take true/false.
BOOL_OR_STRING = {"train.channels_last"}


def _check_size(path: str, value: Any) -> list[int]:
    return list(parse_size(value, path))


def _check_type(path: str, default: Any, value: Any) -> Any:
    """Keep a value's type equal to its default's; ints may stand for floats, None defaults take anything."""
    if path in SIZE_KEYS and value is not None:
        return _check_size(path, value)
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(default, str) and isinstance(value, bool):
        # YAML 1.1 reads on/off/yes/no as booleans: `amp: off` means the string "off".
        return value if path in BOOL_OR_STRING else ("on" if value else "off")
    if not isinstance(value, type(default)):
        raise ConfigError(f"{path} must be {type(default).__name__} like its default {default!r}, got {value!r}")
    return value


def merge(base: dict, update: dict, prefix: str = "") -> dict:
    """Recursively merge ``update`` into a copy of ``base``, refusing unknown keys and type changes."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in merged:
            raise ConfigError(f"unknown config key {path!r}{_close_match(key, merged)}")
        if path in FREE_FORM and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = _merge_free_form(merged[key], value)
        elif path in FREE_FORM or merged[key] is None and isinstance(value, dict):
            merged[key] = copy.deepcopy(value)
        elif isinstance(merged[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section; give it as a mapping, got {value!r}")
            merged[key] = merge(merged[key], value, prefix=f"{path}.")
        else:
            merged[key] = _check_type(path, merged[key], value)
    return merged


def _merge_free_form(base: dict, update: dict) -> dict:
    """Merge without a schema: ``--set distill.teacher=X`` changes the teacher and keeps the losses."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _merge_free_form(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML (numbers, lists...)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    path, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} names no key")
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    return nested


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if data is None:  # an empty file would silently train every default for an hour
        raise ConfigError(f"{path} is empty; a config names at least what it changes (see configs/)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


# Settings that count something and must be at least 1 (0 is allowed where it means "only at the end").
POSITIVE_KEYS = {("train", "iterations"): 1, ("data", "batch_size"): 1, ("train", "log_every"): 0,
                 ("train", "val_every"): 0, ("train", "ckpt_every"): 0, ("train", "balance_every"): 0,
                 ("data", "workers"): 0, ("optim", "warmup_iters"): 0}


def resolve_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> dict:
    """Defaults (or ``base``), then the YAML file, then each ``--set`` override, in that order."""
    config = copy.deepcopy(base if base is not None else DEFAULTS)
    if path is not None:
        config = merge(config, load_yaml(path))
    for text in overrides:
        config = merge(config, parse_override(text))
    for (section, key), lowest in POSITIVE_KEYS.items():
        value = config.get(section, {}).get(key)
        if isinstance(value, int) and value < lowest:
            raise ConfigError(f"{section}.{key} must be at least {lowest}, got {value}")
    return config


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def save_config(config: dict, path: str | Path) -> Path:
    return write_text_atomic(path, dump_config(config))
