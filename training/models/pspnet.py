"""PSPNet (Zhao et al. 2017): a dilated ResNet followed by a pyramid pooling module.

The pyramid pools the last backbone map into 1x1, 2x2, 3x3 and 6x6 grids, so each position sees summaries of the
whole image at several granularities. Pooling uses :func:`.layers.adaptive_avg_pool2d`, which exports to ONNX with
dynamic input sizes (``nn.AdaptiveAvgPool2d`` would pin the exported graph to one size).
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import Tap, register_model, stage_taps
from .layers import ConvBNAct, adaptive_avg_pool2d, init_classifier, init_weights, resize_like
from .resnet import resnet18, resnet101

PYRAMID_BINS = (1, 2, 3, 6)


class PyramidPooling(nn.Module):
    """Pool to several grid sizes, reduce each with a 1x1 conv, upsample back and concatenate with the input.

    Args:
        in_channels: channels of the incoming map.
        branch_channels: output width of each pooled branch (a quarter of the input in the paper).
        bins: grid sizes of the branches.
    """

    def __init__(self, in_channels: int, branch_channels: int, bins: tuple[int, ...] = PYRAMID_BINS) -> None:
        super().__init__()
        self.bins = bins
        # Batch norm on the 1x1 branch needs more than one image per batch in training mode.
        self.branches = nn.ModuleList(ConvBNAct(in_channels, branch_channels, 1) for _ in bins)
        self.out_channels = in_channels + branch_channels * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize_like(branch(adaptive_avg_pool2d(x, b)), x) for b, branch in zip(self.bins, self.branches)]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """Backbone, pyramid pooling, a 3x3 bottleneck conv and a 1x1 classifier; logits resized to the input size.

    Args:
        backbone: a trunk returning four stage maps and describing them.
        num_classes: output channels.
        head_channels: width of the bottleneck conv (512 for the ResNet-101 teacher, 128 for ResNet-18).
        dropout: dropout probability before the classifier.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        in_channels = backbone.stage_channels[-1]
        output_stride = backbone.stage_strides[-1]
        self.backbone = backbone
        self.pyramid = PyramidPooling(in_channels, in_channels // len(PYRAMID_BINS))
        self.bottleneck = ConvBNAct(self.pyramid.out_channels, head_channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        init_weights(self.pyramid)
        init_weights(self.bottleneck)
        init_classifier(self.classifier)
        self.taps = {
            **stage_taps(backbone),
            "feature": Tap("bottleneck", head_channels, output_stride, "feature"),
            "logits": Tap("classifier", num_classes, output_stride, "logits"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.bottleneck(self.pyramid(self.backbone(x)[-1]))
        return resize_like(self.classifier(self.dropout(features)), x)


@register_model
def pspnet_resnet18(*, num_classes: int, output_stride: int = 8, head_channels: int = 128) -> PSPNet:
    """PSPNet on a dilated ResNet-18: the student of the SKD/IFVD/CWD distillation benchmarks."""
    return PSPNet(resnet18(output_stride=output_stride), num_classes, head_channels)


@register_model(role="teacher")
def pspnet_resnet101(*, num_classes: int, output_stride: int = 8, head_channels: int = 512) -> PSPNet:
    """PSPNet on a dilated ResNet-101: the teacher of the SKD/IFVD/CWD distillation benchmarks."""
    return PSPNet(resnet101(output_stride=output_stride), num_classes, head_channels)
