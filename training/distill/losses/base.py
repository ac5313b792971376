"""The contract every distillation loss follows, and the registry that builds one from a config entry.

A loss sees the outputs of the tapped layers as two lists, ``student[i]`` / ``teacher[i]`` for the i-th tapped layer
pair, in the order the config lists them. It owns its training-only adapters (so the trainer's optimiser reaches
them through ``loss.parameters()`` and the student checkpoint never contains them) and treats teacher tensors as
constants. ``build_loss`` checks the config's parameters against the constructor's signature before anything is
built, so a typo in a YAML file fails at start-up with the list of valid names instead of deep inside a run.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, ClassVar, Literal

import torch
from torch import nn

__all__ = ["DistillLoss", "build_loss", "describe_loss", "list_losses", "register_loss"]

_REGISTRY: dict[str, type["DistillLoss"]] = {}


class DistillLoss(nn.Module):
    """Base class: validates the taps, detaches the teacher, and hands both lists to :meth:`distill`.

    Subclasses set the class attributes below and implement :meth:`distill`; ``forward`` is shared so that every
    loss rejects a wrong number of taps or a wrong channel count with the same clear message.

    Attributes:
        num_taps: how many tapped layer pairs the loss takes; ``None`` means "two or more" (see ``min_taps``).
        min_taps: the smallest tap count when ``num_taps`` is ``None``.
        needs_labels: whether ``forward`` must receive the ground-truth labels.
    """

    num_taps: ClassVar[int | None] = 1
    min_taps: ClassVar[int] = 2
    needs_labels: ClassVar[bool] = False

    def __init__(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        super().__init__()
        self.student_channels = _channel_list(student_channels, "student_channels")
        self.teacher_channels = _channel_list(teacher_channels, "teacher_channels")
        name = type(self).loss_name()
        if len(self.student_channels) != len(self.teacher_channels):
            raise ValueError(f"loss {name!r}: {len(self.student_channels)} student taps but "
                             f"{len(self.teacher_channels)} teacher taps; the config must list them in pairs")
        taps = len(self.student_channels)
        if self.num_taps is not None and taps != self.num_taps:
            raise ValueError(f"loss {name!r} takes exactly {self.num_taps} tapped layer pair(s), got {taps}")
        if self.num_taps is None and taps < self.min_taps:
            raise ValueError(f"loss {name!r} takes {self.min_taps} or more tapped layer pairs, got {taps}")

    @classmethod
    def loss_name(cls) -> str:
        return getattr(cls, "registered_name", cls.__name__)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor],
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Validate the taps, detach the teacher and compute the loss (a 0-dim tensor)."""
        name = self.loss_name()
        student, teacher = list(student), list(teacher)
        if len(student) != len(self.student_channels) or len(teacher) != len(self.teacher_channels):
            raise ValueError(f"loss {name!r} was built for {len(self.student_channels)} tap pair(s), got "
                             f"{len(student)} student and {len(teacher)} teacher tensors")
        for index, (s, t, s_ch, t_ch) in enumerate(zip(student, teacher, self.student_channels,
                                                        self.teacher_channels)):
            if s.dim() != 4 or t.dim() != 4:
                raise ValueError(f"loss {name!r}, tap {index}: expected (N, C, h, w) tensors, got student "
                                 f"{tuple(s.shape)} and teacher {tuple(t.shape)}")
            if s.shape[1] != s_ch or t.shape[1] != t_ch:
                raise ValueError(f"loss {name!r}, tap {index}: built for {s_ch} student / {t_ch} teacher channels, "
                                 f"got {s.shape[1]} / {t.shape[1]}")
            if s.shape[0] != t.shape[0]:
                raise ValueError(f"loss {name!r}, tap {index}: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")
        if self.needs_labels:
            if labels is None:
                raise ValueError(f"loss {name!r} needs the ground-truth labels")
            if labels.dim() != 3 or labels.shape[0] != student[0].shape[0]:
                raise ValueError(f"loss {name!r}: labels must be (N, H, W), got {tuple(labels.shape)}")
        # Mixed precision: the softmaxes, norms and Gram matrices below are computed in float32.
        student = [s.float() for s in student]
        teacher = [t.detach().float() for t in teacher]
        return self.distill(student, teacher, labels)

    def distill(self, student: list[torch.Tensor], teacher: list[torch.Tensor],
                labels: torch.Tensor | None) -> torch.Tensor:
        """The loss itself, on validated float32 taps with the teacher already detached."""
        raise NotImplementedError


def register_loss(name: str):
    """Class decorator: make a :class:`DistillLoss` buildable by ``name`` from a config."""

    def decorator(cls: type[DistillLoss]) -> type[DistillLoss]:
        if not (isinstance(cls, type) and issubclass(cls, DistillLoss)):
            raise TypeError(f"@register_loss({name!r}) decorates DistillLoss subclasses, not {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss name {name!r} is already taken by {_REGISTRY[name].__qualname__}")
        cls.registered_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_losses() -> list[str]:
    """Names accepted by :func:`build_loss`, sorted."""
    return sorted(_REGISTRY)


def describe_loss(name: str) -> dict[str, tuple[Any, Any]]:
    """The hyper-parameters of loss ``name``: parameter -> (annotation, default or ``inspect.Parameter.empty``)."""
    cls = _loss_class(name)
    hints = typing.get_type_hints(cls.__init__)
    return {param.name: (hints.get(param.name, Any), param.default) for param in _hyper_parameters(cls)}


def build_loss(name: str, *, student_channels: list[int], teacher_channels: list[int], **params: Any) -> DistillLoss:
    """Build a registered loss after checking ``params`` against its constructor.

    Raises:
        ValueError: the name is unknown, a parameter is unknown, missing or of the wrong type (the message lists
            the valid parameters with their types and defaults), or the channel lists do not fit the loss.
    """
    cls = _loss_class(name)
    spec = describe_loss(name)
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(f"loss {name!r} has no parameter(s) {', '.join(unknown)}; valid: {_format_spec(spec)}")
    missing = [key for key, (_, default) in spec.items() if default is inspect.Parameter.empty and key not in params]
    if missing:
        raise ValueError(f"loss {name!r} needs parameter(s) {', '.join(missing)}; valid: {_format_spec(spec)}")
    checked = {key: _check_value(name, key, value, spec[key][0]) for key, value in params.items()}
    return cls(student_channels=student_channels, teacher_channels=teacher_channels, **checked)


def _loss_class(name: str) -> type[DistillLoss]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown distillation loss {name!r}; valid: {', '.join(list_losses())}") from None


def _hyper_parameters(cls: type[DistillLoss]) -> list[inspect.Parameter]:
    signature = inspect.signature(cls.__init__)
    return [p for p in signature.parameters.values()
            if p.name not in ("self", "student_channels", "teacher_channels")
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def _format_spec(spec: dict[str, tuple[Any, Any]]) -> str:
    if not spec:
        return "none (this loss has no parameters)"
    parts = []
    for key, (annotation, default) in spec.items():
        shown = _type_name(annotation)
        parts.append(f"{key} ({shown}, required)" if default is inspect.Parameter.empty
                     else f"{key} ({shown}, default {default!r})")
    return ", ".join(parts)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(annotation))
    if _is_union(annotation):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return f"list[{_type_name(typing.get_args(annotation)[0])}]"
    return getattr(annotation, "__name__", str(annotation))


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _check_value(loss: str, key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` (ints widened to float for float parameters) or raise a ValueError that says what fits."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for option in options:
        accepted, converted = _accepts(option, value)
        if accepted:
            return converted
    hint = " (YAML reads 1e-7 as text: write 1.0e-7)" if isinstance(value, str) and float in options else ""
    raise ValueError(f"loss {loss!r}: parameter {key} must be {_type_name(annotation)}, got {value!r}{hint}")


def _accepts(option: Any, value: Any) -> tuple[bool, Any]:
    if option is Any:
        return True, value
    if option is type(None):
        return value is None, value
    if typing.get_origin(option) is Literal:
        return value in typing.get_args(option) and not isinstance(value, bool), value
    if option is bool:
        return isinstance(value, bool), value
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if option is float:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        return numeric, float(value) if numeric else value
    if option is str:
        return isinstance(value, str), value
    if typing.get_origin(option) is list:  # list[X]: a YAML list whose every item is an X
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_accepts(typing.get_args(option)[0], item) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    return isinstance(value, option), value


def _channel_list(channels: Any, what: str) -> list[int]:
    valid = isinstance(channels, (list, tuple)) and all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
    if not valid:
        raise ValueError(f"{what} must be a list of positive ints (one per tapped layer), got {channels!r}")
    return [int(c) for c in channels]
