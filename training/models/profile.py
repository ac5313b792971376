"""Model size and compute, to compare students and to size CPU training runs before starting them."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as batch-norm statistics are not parameters and are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: tuple[int, int], batch_size: int = 1) -> float:
    """GFLOPs of one inference forward pass at ``input_size`` (height, width).

    Convention: one multiply-add counts as 2 FLOPs and the result is divided by 1e9, so the number is twice the
    "GMACs" some papers report. Only convolutions and matrix products are counted (by
    ``torch.utils.flop_counter.FlopCounterMode``); batch norm, activations, pooling and resizing are left out,
    as in most published tables.
    """
    with FlopCounterMode(display=False) as counter:
        _forward_once(model, input_size, batch_size)
    return counter.get_total_flops() / 1e9


_WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def count_traffic(model: nn.Module, input_size: tuple[int, int], batch_size: int = 1) -> float:
    """Megabytes one forward pass must move through memory at least, in the model's dtype: the input and output
    of every convolution and linear layer and its weights, once each.

    This is the traffic of a deployed graph whose batch norms and activations are fused into the convolutions and
    whose tensors do not stay in cache between layers; with :func:`count_flops` it gives a model's arithmetic
    intensity, which decides whether a roofline bounds it by compute or by memory bandwidth. Pooling, resizing and
    element-wise layers add traffic it does not count, so the figure is a lower bound.
    """
    total = [0]

    def tally(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        weights = sum(p.numel() for p in module.parameters(recurse=False))
        total[0] += (inputs[0].numel() + output.numel() + weights) * output.element_size()

    with contextlib.ExitStack() as hooks:
        for module in model.modules():
            if isinstance(module, _WEIGHTED_LAYERS):
                hooks.callback(module.register_forward_hook(tally).remove)
        _forward_once(model, input_size, batch_size)
    return total[0] / 1e6


def _forward_once(model: nn.Module, input_size: tuple[int, int], batch_size: int) -> None:
    """One inference forward pass of a zero batch in the model's dtype and device; the train/eval mode is restored."""
    height, width = input_size
    parameter = next(model.parameters())
    dummy = torch.zeros(batch_size, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(dummy)
    finally:
        model.train(was_training)
