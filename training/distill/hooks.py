"""Forward hooks that record the outputs of named layers, so distillation never edits a model's code.

Layers are named either by a tap alias the model declares (``stage3``, ``feature``, ``logits``; see
``edgeseg.training.models.taps_of``), by ``output`` (the network's final, input-resolution logits), or by any dotted
module path (``backbone.layer3.1.conv2``). A wrong name fails at start-up with the closest valid names, not hours
later.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from edgeseg.runtime.errors import ConfigError

OUTPUT_TAP = "output"


def resolve_layer(model: nn.Module, name: str) -> str:
    """Turn a tap alias or module path into a module path that exists in ``model``."""
    from ..models import taps_of

    taps = taps_of(model)
    if name == OUTPUT_TAP:
        return ""  # the root module: its forward output
    path = taps[name].module if name in taps else name
    try:
        model.get_submodule(path)
    except AttributeError:
        candidates = [*taps, OUTPUT_TAP] + [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, candidates, n=3)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ConfigError(f"{type(model).__name__} has no layer or tap named {name!r} (declared taps: "
                          f"{', '.join(taps) or 'none'}{hint})") from None
    return path


class FeatureTaps:
    """Record the output of each named layer on every forward pass; ``close()`` removes the hooks.

    Use as a context manager, or keep it for a whole run and close it at the end.
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.paths = {name: resolve_layer(model, name) for name in names}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for name, path in self.paths.items():
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._recorder(name)))

    def _recorder(self, name: str):
        def record(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ConfigError(f"layer {self.paths[name]!r} returns {type(output).__name__}, not a tensor; "
                                  f"tap a layer with a single tensor output")
            self.outputs[name] = output
        return record

    def take(self, names: list[str]) -> list[torch.Tensor]:
        """The recorded outputs for ``names``, in order; fails if a layer did not run in the last forward."""
        missing = [n for n in names if n not in self.outputs]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the last forward pass")
        return [self.outputs[n] for n in names]

    def clear(self) -> None:
        self.outputs.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
