"""Model size and compute, to compare students and to size CPU training runs before starting them."""

from __future__ import annotations

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
    height, width = input_size
    parameter = next(model.parameters())
    dummy = torch.zeros(batch_size, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(dummy)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
