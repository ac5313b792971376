"""Fast-SCNN (Poudel et al. 2019): a two-branch real-time network that shares its first layers between branches.

"Learning to downsample" brings the image to stride 8 with three cheap convs; a global feature extractor of
MobileNetV2 bottlenecks and a pyramid pooling module works at stride 32 on top of it; a fusion module adds the
upsampled global features to the stride-8 map, and a small classifier finishes at stride 8. Widths follow the
paper (32/48/64, 64/96/128, 128). It has no ImageNet backbone: it is trained from scratch.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import Tap, register_model
from .layers import ConvBNAct, SeparableConvBNAct, adaptive_avg_pool2d, init_classifier, init_weights, resize_like
from .mobilenet import InvertedResidual

PYRAMID_BINS = (1, 2, 3, 6)


def _bottlenecks(in_channels: int, out_channels: int, stride: int, repeats: int = 3) -> nn.Sequential:
    blocks = [InvertedResidual(in_channels, out_channels, stride, 1, expand_ratio=6)]
    blocks += [InvertedResidual(out_channels, out_channels, 1, 1, expand_ratio=6) for _ in range(1, repeats)]
    return nn.Sequential(*blocks)


class PyramidPoolingFusion(nn.Module):
    """Pyramid pooling that projects back to its input width: pooled branches, concatenation, 1x1 conv."""

    def __init__(self, channels: int, bins: tuple[int, ...] = PYRAMID_BINS) -> None:
        super().__init__()
        self.bins = bins
        branch_channels = channels // len(bins)
        self.branches = nn.ModuleList(ConvBNAct(channels, branch_channels, 1) for _ in bins)
        self.project = ConvBNAct(channels + branch_channels * len(bins), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize_like(branch(adaptive_avg_pool2d(x, b)), x) for b, branch in zip(self.bins, self.branches)]
        return self.project(torch.cat([x, *pooled], dim=1))


class FeatureFusion(nn.Module):
    """Adds the upsampled low-resolution branch (depthwise conv, then 1x1) to the projected high-resolution one."""

    def __init__(self, high_res_channels: int, low_res_channels: int, out_channels: int) -> None:
        super().__init__()
        self.low_res = nn.Sequential(
            ConvBNAct(low_res_channels, low_res_channels, 3, groups=low_res_channels),
            ConvBNAct(low_res_channels, out_channels, 1, activation=None),
        )
        self.high_res = ConvBNAct(high_res_channels, out_channels, 1, activation=None)
        self.relu = nn.ReLU()

    def forward(self, high_res: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        return self.relu(self.high_res(high_res) + self.low_res(resize_like(low_res, high_res)))


class FastSCNN(nn.Module):
    """Fast-SCNN; logits come out at stride 8 and are resized to the input size."""

    def __init__(self, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.learning_to_downsample = nn.Sequential(
            ConvBNAct(3, 32, 3, stride=2),
            SeparableConvBNAct(32, 48, stride=2),
            SeparableConvBNAct(48, 64, stride=2),
        )
        self.global_features = nn.Sequential(
            _bottlenecks(64, 64, stride=2),
            _bottlenecks(64, 96, stride=2),
            _bottlenecks(96, 128, stride=1),
            PyramidPoolingFusion(128),
        )
        self.fusion = FeatureFusion(64, 128, 128)
        self.refine = nn.Sequential(SeparableConvBNAct(128, 128), SeparableConvBNAct(128, 128))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(128, num_classes, 1)
        init_weights(self)
        init_classifier(self.classifier)
        self.taps = {
            "stage1": Tap("learning_to_downsample", 64, 8, "stage"),
            "stage2": Tap("global_features.0", 64, 16, "stage"),
            "stage3": Tap("global_features.2", 128, 32, "stage"),
            "stage4": Tap("global_features.3", 128, 32, "stage"),
            "feature": Tap("refine", 128, 8, "feature"),
            "logits": Tap("classifier", num_classes, 8, "logits"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.learning_to_downsample(x)
        features = self.refine(self.fusion(shared, self.global_features(shared)))
        return resize_like(self.classifier(self.dropout(features)), x)


@register_model
def fastscnn(*, num_classes: int) -> FastSCNN:
    """Fast-SCNN: a real-time student trained from scratch, about 1.1 M parameters."""
    return FastSCNN(num_classes)
