"""BiSeNetV2 (Yu et al. 2021): a wide, shallow detail branch and a narrow, deep semantic branch, fused by guided
aggregation.

The detail branch keeps stride 8 with plain 3x3 convs (64/64/128 channels); the semantic branch reaches stride 32
through a stem, gather-and-expand layers and a context-embedding block (16..128 channels). The aggregation layer
lets each branch gate the other at both resolutions. Training-time auxiliary heads of the paper are left out: the
zoo's contract is a single logits tensor, and the semantic stages are exposed as distillation taps instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import Tap, register_model
from .layers import ConvBNAct, global_avg_pool, init_classifier, init_weights, resize_like


class StemBlock(nn.Module):
    """Stride-4 stem: a strided conv, then a conv path and a max-pool path side by side, concatenated and fused."""

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = ConvBNAct(3, out_channels, 3, stride=2)
        self.conv_path = nn.Sequential(
            ConvBNAct(out_channels, out_channels // 2, 1),
            ConvBNAct(out_channels // 2, out_channels, 3, stride=2),
        )
        self.pool_path = nn.MaxPool2d(3, stride=2, padding=1)
        self.fuse = ConvBNAct(2 * out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.conv_path(x), self.pool_path(x)], dim=1))


class GatherExpand(nn.Module):
    """Gather-and-expand layer: 3x3 conv, depthwise expansion by 6 (strided twice when downsampling), projection.

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: 1 keeps the size with an identity shortcut; 2 halves it, with a depthwise-separable shortcut.
        expansion: channel multiplier of the depthwise convs.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = [
            ConvBNAct(in_channels, in_channels, 3),
            ConvBNAct(in_channels, hidden, 3, stride=stride, groups=in_channels, activation=None),
        ]
        if stride > 1:
            layers.append(ConvBNAct(hidden, hidden, 3, groups=hidden, activation=None))
        layers.append(ConvBNAct(hidden, out_channels, 1, activation=None))
        self.body = nn.Sequential(*layers)
        self.shortcut = None
        if stride > 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, stride=stride, groups=in_channels, activation=None),
                ConvBNAct(in_channels, out_channels, 1, activation=None),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + shortcut)


class ContextEmbedding(nn.Module):
    """Adds a projection of the globally pooled map to every position, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Batch norm on the pooled 1x1 map needs more than one image per batch in training mode.
        self.pooled_norm = nn.BatchNorm2d(channels)
        self.project = ConvBNAct(channels, channels, 1)
        self.fuse = ConvBNAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.project(self.pooled_norm(global_avg_pool(x)))
        return self.fuse(x + context)


class SemanticBranch(nn.Module):
    """Stem (stride 4), then gather-and-expand stages at strides 8, 16, 32 and the context embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = StemBlock(16)
        self.stage3 = nn.Sequential(GatherExpand(16, 32, stride=2), GatherExpand(32, 32))
        self.stage4 = nn.Sequential(GatherExpand(32, 64, stride=2), GatherExpand(64, 64))
        self.stage5 = nn.Sequential(GatherExpand(64, 128, stride=2), *(GatherExpand(128, 128) for _ in range(3)))
        self.context = ContextEmbedding(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.context(self.stage5(self.stage4(self.stage3(self.stem(x)))))


class GuidedAggregation(nn.Module):
    """Bilateral guided aggregation: each branch is gated by a sigmoid of the other, at both resolutions."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.detail_keep = nn.Sequential(
            ConvBNAct(channels, channels, 3, groups=channels, activation=None),
            nn.Conv2d(channels, channels, 1, bias=False),
        )
        self.detail_down = ConvBNAct(channels, channels, 3, stride=2, activation=None)
        self.semantic_up = ConvBNAct(channels, channels, 3, activation=None)
        self.semantic_keep = nn.Sequential(
            ConvBNAct(channels, channels, 3, groups=channels, activation=None),
            nn.Conv2d(channels, channels, 1, bias=False),
        )
        self.fuse = ConvBNAct(channels, channels, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        detail_gated = self.detail_keep(detail) * torch.sigmoid(resize_like(self.semantic_up(semantic), detail))
        detail_coarse = F.avg_pool2d(self.detail_down(detail), 3, stride=2, padding=1)
        semantic_gated = detail_coarse * torch.sigmoid(self.semantic_keep(semantic))
        return self.fuse(detail_gated + resize_like(semantic_gated, detail))


class BiSeNetV2(nn.Module):
    """BiSeNetV2 without auxiliary heads; logits come out at stride 8 and are resized to the input size.

    Args:
        num_classes: output channels.
        head_channels: width of the 3x3 conv of the segmentation head (1024 in the reference setting).
        dropout: dropout probability before the classifier.
    """

    def __init__(self, num_classes: int, head_channels: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.detail = nn.Sequential(
            nn.Sequential(ConvBNAct(3, 64, 3, stride=2), ConvBNAct(64, 64, 3)),
            nn.Sequential(ConvBNAct(64, 64, 3, stride=2), ConvBNAct(64, 64, 3), ConvBNAct(64, 64, 3)),
            nn.Sequential(ConvBNAct(64, 128, 3, stride=2), ConvBNAct(128, 128, 3), ConvBNAct(128, 128, 3)),
        )
        self.semantic = SemanticBranch()
        self.aggregate = GuidedAggregation(128)
        self.head = ConvBNAct(128, head_channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        init_weights(self)
        init_classifier(self.classifier)
        self.taps = {
            "detail": Tap("detail", 128, 8, "stage"),
            "stage1": Tap("semantic.stem", 16, 4, "stage"),
            "stage2": Tap("semantic.stage3", 32, 8, "stage"),
            "stage3": Tap("semantic.stage4", 64, 16, "stage"),
            "stage4": Tap("semantic.context", 128, 32, "stage"),
            "feature": Tap("head", head_channels, 8, "feature"),
            "logits": Tap("classifier", num_classes, 8, "logits"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.aggregate(self.detail(x), self.semantic(x))
        return resize_like(self.classifier(self.dropout(self.head(fused))), x)


@register_model
def bisenetv2(*, num_classes: int, head_channels: int = 1024) -> BiSeNetV2:
    """BiSeNetV2: a two-branch real-time student trained from scratch."""
    return BiSeNetV2(num_classes, head_channels)
