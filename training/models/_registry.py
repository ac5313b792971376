"""The model registry: builders register by name, configs and checkpoints refer to models by that name.

A builder is a plain function whose parameters are all keyword-only and include ``num_classes``; its other keyword
defaults are the model's documented options. Nothing passes ``**kwargs`` through, so a misspelt option in a config
fails at once with the list of options the model really has.

Every model also declares its distillation taps (:class:`Tap`): named points whose outputs a distiller hooks.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
from dataclasses import dataclass
from typing import Callable

from torch import nn

ROLES = ("teacher", "student")
TAP_KINDS = ("stage", "feature", "logits")

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_ROLES: dict[str, str] = {}


@dataclass(frozen=True)
class Tap:
    """A point in a model whose output a distiller may hook.

    Attributes:
        module: dotted path for ``model.get_submodule``; the tap is that module's forward output.
        channels: channel count of the tapped tensor, so adapters can be sized before any forward pass.
        stride: input size divided by the tapped map's size (up to rounding for sizes that are not multiples).
        kind: ``"stage"`` (backbone stage), ``"feature"`` (the map entering the final classifier conv) or
            ``"logits"`` (the classifier output before the resize to input size).
    """

    module: str
    channels: int
    stride: int
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in TAP_KINDS:
            raise ValueError(f"tap kind must be one of {TAP_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is, without building it: shown by listings and used to validate configs."""

    name: str
    role: str
    summary: str
    options: dict[str, object]
    module: str


def register_model(builder: Callable[..., nn.Module] | None = None, *, role: str = "student"):
    """Register a model builder under its function name; usable bare (``@register_model``) or with a role.

    Args:
        builder: the function to register (given when used without parentheses).
        role: ``"teacher"`` for the large networks distilled from, ``"student"`` for the deployable ones.

    Raises:
        ValueError: the name is already registered, the role is unknown, or the builder's signature breaks the
            keyword-only convention.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _BUILDERS:
            previous = _BUILDERS[name]
            raise ValueError(f"model {name!r} is already registered by {previous.__module__}.{previous.__qualname__}")
        parameters = inspect.signature(fn).parameters
        not_keyword_only = [p.name for p in parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        if not_keyword_only:
            raise ValueError(f"builder {name!r}: every parameter must be keyword-only (found {not_keyword_only})")
        if "num_classes" not in parameters:
            raise ValueError(f"builder {name!r} must take a keyword-only 'num_classes'")
        _BUILDERS[name] = fn
        _ROLES[name] = role
        return fn

    return register(builder) if builder is not None else register


def _lookup(name: str) -> Callable[..., nn.Module]:
    try:
        return _BUILDERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _BUILDERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} Registered models: {', '.join(sorted(_BUILDERS))}") from None


def list_models(pattern: str | None = None, role: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern and a role."""
    names = sorted(_BUILDERS)
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    if role is not None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        names = [name for name in names if _ROLES[name] == role]
    return names


def model_info(name: str) -> ModelInfo:
    """Role, one-line summary and option defaults of a registered model."""
    builder = _lookup(name)
    options = {p.name: p.default for p in inspect.signature(builder).parameters.values()
               if p.name != "num_classes"}
    summary = (inspect.getdoc(builder) or "").split("\n", 1)[0]
    return ModelInfo(name=name, role=_ROLES[name], summary=summary, options=options, module=builder.__module__)


def create_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a registered model with freshly initialised weights.

    Args:
        name: a name from :func:`list_models`.
        num_classes: number of output channels (classes) of the logits.
        **options: the builder's keyword options (see :func:`model_info`); anything else is an error.

    Raises:
        KeyError: unknown model name (the message suggests the closest registered name).
        TypeError: an option the model does not have (the message lists the ones it has).
        ValueError: ``num_classes`` below 1, or an option value the model cannot use.
    """
    builder = _lookup(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    accepted = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} has no option(s) {unknown}; its options are {accepted}")
    return builder(num_classes=int(num_classes), **options)


def taps_of(model: nn.Module) -> dict[str, Tap]:
    """The distillation taps a model declares, checked against its modules.

    Raises:
        TypeError: the model declares no taps (it was not built by this zoo).
        ValueError: a declared tap names a module the model does not have.
    """
    taps = getattr(model, "taps", None)
    if not isinstance(taps, dict) or not all(isinstance(tap, Tap) for tap in taps.values()):
        raise TypeError(f"{type(model).__name__} declares no distillation taps (expected a 'taps' dict of Tap)")
    for alias, tap in taps.items():
        try:
            model.get_submodule(tap.module)
        except AttributeError:
            raise ValueError(f"{type(model).__name__}: tap {alias!r} names missing module {tap.module!r}") from None
    return dict(taps)


def stage_taps(backbone: nn.Module, prefix: str = "backbone") -> dict[str, Tap]:
    """``stage1``.. taps for a backbone that lists ``stage_names``, ``stage_channels`` and ``stage_strides``."""
    return {
        f"stage{index}": Tap(f"{prefix}.{name}", channels, stride, "stage")
        for index, (name, channels, stride) in enumerate(
            zip(backbone.stage_names, backbone.stage_channels, backbone.stage_strides), start=1)
    }
