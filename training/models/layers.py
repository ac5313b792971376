"""Building blocks shared by the model families, written so that every model exports to ONNX with dynamic H/W.

Two rules hold throughout: sizes are always read from the runtime tensor (never from a stored input size), and
pooling with more than one output bin goes through :func:`adaptive_avg_pool2d` below instead of
``F.adaptive_avg_pool2d``, whose ONNX export only works for static sizes divisible by the bin count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNAct(nn.Sequential):
    """Convolution, batch norm and an optional activation, padded so that stride 1 keeps the spatial size.

    A ``Sequential`` (0: conv, 1: bn, 2: activation) on purpose: the parameter names then match torchvision's
    ``Conv2dNormActivation``, so ImageNet MobileNet state dicts load without renaming.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, activation: type[nn.Module] | None = nn.ReLU) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            # In place is safe here: the activation only ever overwrites the fresh batch-norm output.
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SeparableConvBNAct(nn.Sequential):
    """Depthwise 3x3 conv-BN-ReLU, then pointwise conv-BN-ReLU: the reach of a 3x3 conv at a fraction of its cost."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels),
            ConvBNAct(in_channels, out_channels, 1),
        )


def resize_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``reference``.

    The target size is read from the reference tensor at run time, which the ONNX tracer records as a shape
    computation: the exported graph then follows any input size instead of baking in the export-time one.
    """
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over height and width, kept as a 1x1 map (exports as ReduceMean, which every backend handles)."""
    return x.mean(dim=(2, 3), keepdim=True)


def _bin_averaging_matrix(length: int | torch.Tensor, bins: int, like: torch.Tensor) -> torch.Tensor:
    """A (bins, length) matrix whose row i averages the input cells of adaptive-pooling bin i.

    Bin i covers ``[floor(i * L / bins), ceil((i + 1) * L / bins))``, the same integer bounds that
    ``F.adaptive_avg_pool2d`` uses, so neighbouring bins overlap when L is not a multiple of ``bins``.
    """
    bin_index = torch.arange(bins, device=like.device)
    start = torch.div(bin_index * length, bins, rounding_mode="floor")
    end = torch.div((bin_index + 1) * length + bins - 1, bins, rounding_mode="floor")
    position = torch.arange(length, device=like.device)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool2d(x: torch.Tensor, bins: int | tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling to ``bins`` cells, equal to ``F.adaptive_avg_pool2d`` and exportable with dynamic H/W.

    Pooling is separable, so it is written as ``rows @ x @ cols.T`` with averaging matrices built from the runtime
    height and width. The matrices are tiny (bins x H, W x bins), so the two matmuls cost about as much as reading
    the input once.
    """
    bins_h, bins_w = (bins, bins) if isinstance(bins, int) else bins
    if bins_h == 1 and bins_w == 1:
        return global_avg_pool(x)
    rows = _bin_averaging_matrix(x.shape[-2], bins_h, x)
    cols = _bin_averaging_matrix(x.shape[-1], bins_w, x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out, for ReLU), unit batch-norm scale, zero biases.

    Fan-out keeps the gradient scale stable in the backward pass of deep, dilated stacks; call it once on the
    whole model before any pretrained backbone is loaded.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def init_classifier(conv: nn.Conv2d) -> None:
    """Small normal weights (std 0.01) and zero bias for the final 1x1 classifier.

    With Kaiming scale the initial logits reach the hundreds, so the first cross-entropy gradients are huge;
    near-zero logits start every class at about equal probability instead.
    """
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without going more than 10 % below ``value``.

    MobileNets size their squeeze-excitation layers this way; hardware kernels prefer multiples of 8.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
