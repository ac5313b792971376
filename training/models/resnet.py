"""ResNet-18/50/101 backbones with dilation, laid out so torchvision ImageNet state dicts load unchanged.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``downsample.0/1``), and the
bottleneck strides in its 3x3 conv ("ResNet v1.5"). Only the classifier (``fc``) is absent: segmentation has no
use for it, and :func:`edgeseg.training.models.weights.load_backbone_weights` skips those keys.

To keep a finer output stride, the last one or two stages trade their stride for dilation, as in DeepLab: the
receptive field grows as before while the maps stay at 1/8 or 1/16 of the input.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import init_weights

OUTPUT_STRIDES = (8, 16, 32)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride, dilation)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place sum: the block input may be a hooked distillation tap and must stay untouched.
        return self.relu(out + shortcut)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand by 4, with a shortcut (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride, dilation)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class ResNet(nn.Module):
    """A ResNet trunk (no classifier) that returns the outputs of its four stages.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        depths: number of blocks in each of the four stages.
        output_stride: 8, 16 or 32, the stride of the last stage; stages past it are dilated instead of strided.
    """

    #: ImageNet checkpoint keys with no counterpart here (the classification layer).
    pretrained_ignore = ("fc.",)

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, int, int, int],
                 output_stride: int = 8) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"ResNet output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._in_channels = 64
        self._dilation = 1
        self._stride = 4
        strides = []
        for index, (channels, blocks) in enumerate(zip((64, 128, 256, 512), depths), start=1):
            stage_stride = 1 if index == 1 else 2
            setattr(self, f"layer{index}", self._make_stage(block, channels, blocks, stage_stride, output_stride))
            strides.append(self._stride)
        self.stage_names = ("layer1", "layer2", "layer3", "layer4")
        self.stage_channels = tuple(c * block.expansion for c in (64, 128, 256, 512))
        self.stage_strides = tuple(strides)
        init_weights(self)
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                # Each residual branch starts as zero, so every block begins as the identity: easier early training.
                nn.init.zeros_(module.last_bn.weight)

    def _make_stage(self, block, channels: int, blocks: int, stride: int, output_stride: int) -> nn.Sequential:
        # A stage that gives up its stride keeps the previous dilation in its first block (where the stride would
        # have been) and uses the enlarged one in the rest, so sampling stays dense without gaps.
        entry_dilation = self._dilation
        if stride > 1 and self._stride * stride > output_stride:
            self._dilation *= stride
            stride = 1
        self._stride *= stride
        downsample = None
        if stride != 1 or self._in_channels != channels * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, channels * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(channels * block.expansion),
            )
        layers = [block(self._in_channels, channels, stride, entry_dilation, downsample)]
        self._in_channels = channels * block.expansion
        layers += [block(self._in_channels, channels, 1, self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            stages.append(x)
        return stages


def resnet18(*, output_stride: int = 8) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), output_stride)


def resnet50(*, output_stride: int = 8) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), output_stride)


def resnet101(*, output_stride: int = 8) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), output_stride)
