"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018) with the ASPP context module.

ASPP looks at the last backbone map through parallel 3x3 convs of growing dilation plus a global-context branch;
the rates scale with the output stride (6/12/18 at stride 16, 12/24/36 at stride 8) so they cover the same part of
the image. DeepLabV3 classifies the ASPP output directly at the output stride; DeepLabV3+ adds a light decoder
that mixes in stride-4 backbone features for sharper object boundaries.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import Tap, register_model, stage_taps
from .layers import ConvBNAct, SeparableConvBNAct, global_avg_pool, init_classifier, init_weights, resize_like
from .mobilenet import MobileNetV2
from .resnet import resnet18, resnet50, resnet101


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """Dilation rates of the three 3x3 ASPP branches: (6, 12, 18) at output stride 16, scaled with the stride."""
    return tuple(rate * 16 // output_stride for rate in (6, 12, 18))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 conv, dilated 3x3 convs and image pooling, concatenated and projected."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNAct(in_channels, out_channels, 1)]
            + [ConvBNAct(in_channels, out_channels, 3, dilation=rate) for rate in rates]
        )
        # Batch norm on a 1x1 pooled map needs more than one image per batch in training mode.
        self.image_pool = ConvBNAct(in_channels, out_channels, 1)
        self.project = ConvBNAct(out_channels * (len(rates) + 2), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(global_avg_pool(x))
        outputs.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outputs, dim=1))


class DeepLabV3(nn.Module):
    """Backbone, ASPP, a 3x3 fusion conv and a 1x1 classifier; logits are resized to the input size.

    Args:
        backbone: a trunk returning four stage maps and describing them (``stage_channels``, ...).
        num_classes: output channels.
        head_channels: width of ASPP and the fusion conv (256 for the ResNet-50/101 teachers, 128 for ResNet-18).
        dropout: dropout probability before the classifier.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        output_stride = backbone.stage_strides[-1]
        self.backbone = backbone
        self.aspp = ASPP(backbone.stage_channels[-1], head_channels, aspp_rates(output_stride))
        self.fuse = ConvBNAct(head_channels, head_channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        init_weights(self.aspp)
        init_weights(self.fuse)
        init_classifier(self.classifier)
        self.taps = {
            **stage_taps(backbone),
            "feature": Tap("fuse", head_channels, output_stride, "feature"),
            "logits": Tap("classifier", num_classes, output_stride, "logits"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[-1]
        logits = self.classifier(self.dropout(self.fuse(self.aspp(features))))
        return resize_like(logits, x)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3 encoder plus a decoder that fuses the upsampled ASPP map with projected stride-4 features.

    The decoder convs are depthwise separable, as in the paper's efficient variants: at stride 4 a dense 3x3 conv
    over 304 channels would cost more than the whole MobileNet backbone.

    Args:
        backbone: a trunk returning four stage maps; stage 1 (stride 4) feeds the decoder.
        num_classes: output channels.
        head_channels: width of ASPP and of the decoder.
        low_level_channels: width the stride-4 features are projected to before concatenation (48 in the paper,
            small so that the encoder's semantics dominate).
        dropout: dropout probability before the classifier.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int, low_level_channels: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.stage_channels[-1], head_channels, aspp_rates(backbone.stage_strides[-1]))
        self.low_level = ConvBNAct(backbone.stage_channels[0], low_level_channels, 1)
        self.decoder = nn.Sequential(
            SeparableConvBNAct(head_channels + low_level_channels, head_channels),
            SeparableConvBNAct(head_channels, head_channels),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        for module in (self.aspp, self.low_level, self.decoder):
            init_weights(module)
        init_classifier(self.classifier)
        decoder_stride = backbone.stage_strides[0]
        self.taps = {
            **stage_taps(backbone),
            "feature": Tap("decoder", head_channels, decoder_stride, "feature"),
            "logits": Tap("classifier", num_classes, decoder_stride, "logits"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.backbone(x)
        low = self.low_level(stages[0])
        context = resize_like(self.aspp(stages[-1]), low)
        features = self.decoder(torch.cat([context, low], dim=1))
        return resize_like(self.classifier(self.dropout(features)), x)


@register_model
def deeplabv3_resnet18(*, num_classes: int, output_stride: int = 8, head_channels: int = 128) -> DeepLabV3:
    """DeepLabV3 on a dilated ResNet-18: the standard CNN student of segmentation distillation benchmarks."""
    return DeepLabV3(resnet18(output_stride=output_stride), num_classes, head_channels)


@register_model(role="teacher")
def deeplabv3_resnet50(*, num_classes: int, output_stride: int = 8, head_channels: int = 256) -> DeepLabV3:
    """DeepLabV3 on a dilated ResNet-50: the lighter teacher."""
    return DeepLabV3(resnet50(output_stride=output_stride), num_classes, head_channels)


@register_model(role="teacher")
def deeplabv3_resnet101(*, num_classes: int, output_stride: int = 8, head_channels: int = 256) -> DeepLabV3:
    """DeepLabV3 on a dilated ResNet-101: the usual teacher of distillation benchmarks."""
    return DeepLabV3(resnet101(output_stride=output_stride), num_classes, head_channels)


@register_model
def deeplabv3plus_mobilenetv2(*, num_classes: int, output_stride: int = 16, head_channels: int = 256,
                              low_level_channels: int = 48) -> DeepLabV3Plus:
    """DeepLabV3+ on MobileNetV2 with a separable decoder at stride 4: a mobile student with sharp edges."""
    return DeepLabV3Plus(MobileNetV2(output_stride=output_stride), num_classes, head_channels, low_level_channels)
