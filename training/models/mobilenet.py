"""MobileNetV2 and MobileNetV3-Large backbones with an output-stride (dilation) option.

Block layouts and widths are those of the papers (Sandler et al. 2018, Table 2; Howard et al. 2019, Table 1), and
the modules sit in a ``features`` sequence named like torchvision's, so ImageNet state dicts from there load with
:func:`edgeseg.training.models.weights.load_backbone_weights`. MobileNetV2 drops its final 1x1 conv to 1280
channels: segmentation heads take the 320-channel map, as in the DeepLabV3+ MobileNet setting.

Once the running stride reaches ``output_stride``, later stride-2 blocks keep stride 1 and dilate their depthwise
convs instead; the backbone returns four stage outputs at strides 4, 8, 16 and 32 (or capped at the output stride).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, global_avg_pool, init_weights, make_divisible

OUTPUT_STRIDES = (8, 16, 32)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection, shortcut when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, dilation, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_shortcut else out


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (MobileNetV3 flavour: ReLU, then hard sigmoid)."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(global_avg_pool(x)))))


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: optional expansion, depthwise conv, optional squeeze-excite, linear projection."""

    def __init__(self, in_channels: int, kernel_size: int, hidden: int, out_channels: int, use_se: bool,
                 activation: type[nn.Module], stride: int, dilation: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation=activation))
        layers.append(ConvBNAct(hidden, hidden, kernel_size, stride, dilation, groups=hidden, activation=activation))
        if use_se:
            layers.append(SqueezeExcite(hidden, make_divisible(hidden // 4)))
        layers.append(ConvBNAct(hidden, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_shortcut else out


class _StridePlanner:
    """Turns nominal block strides into (stride, dilation) pairs that stop at the requested output stride.

    ``nominal`` is the stride the network would have without dilation; stages are delimited by it, so a dilated
    backbone still has four stages. ``stride`` is the real one.
    """

    def __init__(self, output_stride: int) -> None:
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"MobileNet output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.output_stride = output_stride
        self.nominal = 1
        self.stride = 1
        self.dilation = 1
        self.nominal_strides: list[int] = []
        self.strides: list[int] = []

    def step(self, stride: int) -> tuple[int, int]:
        """Plan one layer with the given nominal stride; returns the stride and dilation it really gets."""
        self.nominal *= stride
        if stride > 1 and self.stride * stride > self.output_stride:
            self.dilation *= stride
            stride = 1
        self.stride *= stride
        self.nominal_strides.append(self.nominal)
        self.strides.append(self.stride)
        return stride, self.dilation


class _MobileNetTrunk(nn.Module):
    """Shared part of both MobileNets: a ``features`` sequence and the bookkeeping of its four stages."""

    def __init__(self, layers: list[nn.Module], planner: _StridePlanner, channels: list[int]) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        # A stage ends at the last layer before the nominal stride grows, and at the very last layer; the stride-2
        # level is skipped so that stage1 is the stride-4 map, as for ResNet.
        nominal = planner.nominal_strides
        ends = [i for i in range(len(layers) - 1) if nominal[i + 1] > nominal[i] >= 4]
        ends.append(len(layers) - 1)
        self._stage_indices = tuple(ends)
        self.stage_names = tuple(f"features.{i}" for i in ends)
        self.stage_channels = tuple(channels[i] for i in ends)
        self.stage_strides = tuple(planner.strides[i] for i in ends)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._stage_indices:
                stages.append(x)
        return stages


class MobileNetV2(_MobileNetTrunk):
    """MobileNetV2 (width 1.0) without its classifier and final 1x1 conv; 320 channels at the last stage."""

    pretrained_ignore = ("classifier.", "features.18.")

    # expansion t, output channels c, repeats n, first stride s (paper, Table 2)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, output_stride: int = 16) -> None:
        planner = _StridePlanner(output_stride)
        stride, _ = planner.step(2)
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, stride, activation=nn.ReLU6)]
        channels = [32]
        in_channels = 32
        for expand, out_channels, repeats, first_stride in self.SETTINGS:
            for repeat in range(repeats):
                stride, dilation = planner.step(first_stride if repeat == 0 else 1)
                layers.append(InvertedResidual(in_channels, out_channels, stride, dilation, expand))
                channels.append(out_channels)
                in_channels = out_channels
        super().__init__(layers, planner, channels)


class MobileNetV3Large(_MobileNetTrunk):
    """MobileNetV3-Large without its classifier; the last stage is the 960-channel 1x1 conv output."""

    pretrained_ignore = ("classifier.",)

    # input channels, kernel, expanded channels, output channels, squeeze-excite, hard-swish, stride (Table 1)
    SETTINGS = (
        (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
        (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
        (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
        (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
        (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1),
    )

    def __init__(self, output_stride: int = 16) -> None:
        planner = _StridePlanner(output_stride)
        stride, _ = planner.step(2)
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, stride, activation=nn.Hardswish)]
        channels = [16]
        for in_channels, kernel, hidden, out_channels, use_se, hard_swish, nominal_stride in self.SETTINGS:
            stride, dilation = planner.step(nominal_stride)
            activation = nn.Hardswish if hard_swish else nn.ReLU
            layers.append(InvertedResidualV3(in_channels, kernel, hidden, out_channels, use_se, activation, stride,
                                             dilation))
            channels.append(out_channels)
        planner.step(1)
        layers.append(ConvBNAct(160, 960, 1, activation=nn.Hardswish))
        channels.append(960)
        super().__init__(layers, planner, channels)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                # The ImageNet weights of this network were trained with this epsilon; other values shift outputs.
                module.eps = 1e-3
