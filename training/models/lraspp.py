"""LR-ASPP (Howard et al. 2019, "Searching for MobileNetV3"): the light segmentation head of MobileNetV3.

The last backbone map is reduced by a 1x1 conv and re-weighted per channel by a gate computed from global context
(squeeze-excitation style); the result is classified, upsampled to the stride-8 map and added to a linear
classifier over the stride-8 backbone features, which restore some spatial detail. Global average pooling stands
in for the paper's large-kernel pooling, which would tie the network to one input size.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import Tap, register_model, stage_taps
from .layers import ConvBNAct, global_avg_pool, init_classifier, init_weights, resize_like
from .mobilenet import MobileNetV3Large


class ContextGate(nn.Module):
    """1x1 conv-BN-ReLU of the high-level map, scaled per channel by a sigmoid of its global average."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = ConvBNAct(in_channels, out_channels, 1)
        self.gate = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(x) * self.gate(global_avg_pool(x))


class TwoScaleClassifier(nn.Module):
    """Sum of a classifier on the gated context (upsampled) and a classifier on the stride-8 backbone map."""

    def __init__(self, low_channels: int, context_channels: int, num_classes: int) -> None:
        super().__init__()
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.context_classifier = nn.Conv2d(context_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.low_classifier(low) + self.context_classifier(resize_like(context, low))


class LRASPP(nn.Module):
    """Backbone, context gate and two-scale classifier; logits are resized to the input size.

    Args:
        backbone: a trunk returning four stage maps; stage 2 (stride 8) and the last stage are used.
        num_classes: output channels.
        inter_channels: width of the gated context map.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, inter_channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.context = ContextGate(backbone.stage_channels[-1], inter_channels)
        self.classifier = TwoScaleClassifier(backbone.stage_channels[1], inter_channels, num_classes)
        init_weights(self.context)
        init_classifier(self.classifier.low_classifier)
        init_classifier(self.classifier.context_classifier)
        self.taps = {
            **stage_taps(backbone),
            # The gated map is the only learned input of the context classifier; it is hooked before the upsampling
            # to stride 8 that happens inside the classifier.
            "feature": Tap("context", inter_channels, backbone.stage_strides[-1], "feature"),
            "logits": Tap("classifier", num_classes, backbone.stage_strides[1], "logits"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.backbone(x)
        logits = self.classifier(stages[1], self.context(stages[-1]))
        return resize_like(logits, x)


@register_model
def lraspp_mobilenetv3_large(*, num_classes: int, output_stride: int = 16, inter_channels: int = 128) -> LRASPP:
    """LR-ASPP on MobileNetV3-Large (last stage dilated to stride 16): the cheapest of the mobile students."""
    return LRASPP(MobileNetV3Large(output_stride=output_stride), num_classes, inter_channels)
