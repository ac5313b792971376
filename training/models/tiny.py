"""``tiny_segnet``: a few convolutions, for tests, smoke configs and checking a pipeline end to end in seconds.

It learns something (a stride-8 encoder with a dilated context conv), but it is no baseline worth reporting.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import Tap, register_model
from .layers import ConvBNAct, init_classifier, init_weights, resize_like


class TinySegNet(nn.Module):
    """Three strided conv stages (16/32/64 channels), one dilated 3x3 conv and a 1x1 classifier."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        channels = (width, 2 * width, 4 * width)
        self.backbone = nn.Sequential(
            ConvBNAct(3, channels[0], 3, stride=2),
            ConvBNAct(channels[0], channels[1], 3, stride=2),
            ConvBNAct(channels[1], channels[2], 3, stride=2),
        )
        self.context = ConvBNAct(channels[2], channels[2], 3, dilation=2)
        self.classifier = nn.Conv2d(channels[2], num_classes, 1)
        init_weights(self)
        init_classifier(self.classifier)
        self.taps = {
            "stage1": Tap("backbone.0", channels[0], 2, "stage"),
            "stage2": Tap("backbone.1", channels[1], 4, "stage"),
            "stage3": Tap("backbone.2", channels[2], 8, "stage"),
            "feature": Tap("context", channels[2], 8, "feature"),
            "logits": Tap("classifier", num_classes, 8, "logits"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_like(self.classifier(self.context(self.backbone(x))), x)


@register_model
def tiny_segnet(*, num_classes: int, width: int = 16) -> TinySegNet:
    """A few conv layers (about 60 k parameters at width 16) for fast tests and smoke runs; not a real baseline."""
    return TinySegNet(num_classes, width)
