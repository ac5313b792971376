"""Building blocks shared by the losses: resizing, label downsampling, node budgets, affinities, adapters.

The node budget is the one memory guard of the pair-wise losses (docs/methods.md): an affinity over all
positions of a 64x128 map holds 8192^2 entries per image (256 MiB in float32, several times that with its gradient
and the difference buffers). :func:`pool_to_node_budget` shrinks a map so that ``h * w <= max_nodes`` before
:func:`cosine_affinity` builds the ``(h*w) x (h*w)`` matrix, and every pair-wise loss goes through both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinearly resize (N, C, h, w) maps to ``size``; a no-op when the size already matches."""
    size = tuple(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def downsample_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest-neighbour resize of (N, H, W) class ids: ids are never blended, the ignore value survives."""
    size = tuple(size)
    if tuple(labels.shape[-2:]) == size:
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def node_grid(height: int, width: int, max_nodes: int) -> tuple[int, int]:
    """The (h, w) grid a map is pooled to so that ``h * w <= max_nodes``, keeping its aspect ratio.

    Maps already within the budget keep their size. Otherwise the height shrinks by ``sqrt(max_nodes / (H*W))`` and
    the width takes what the budget leaves, so a 64x128 map with a 4096 budget becomes 45x91 (4095 nodes).
    """
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be at least 1, got {max_nodes}")
    if height * width <= max_nodes:
        return height, width
    scale = math.sqrt(max_nodes / (height * width))
    pooled_height = min(height, max(1, math.floor(height * scale)))
    pooled_width = min(width, max(1, max_nodes // pooled_height))
    # A very tall, narrow map keeps width 1 and gives the whole budget to its height.
    return min(pooled_height, max_nodes // pooled_width), pooled_width


def pool_to_node_budget(maps: torch.Tensor, max_nodes: int, mode: str = "avg") -> torch.Tensor:
    """Adaptively pool (N, C, h, w) maps (``mode`` "avg" or "max") to at most ``max_nodes`` positions per image."""
    grid = node_grid(maps.shape[-2], maps.shape[-1], max_nodes)
    if grid == tuple(maps.shape[-2:]):
        return maps
    if mode == "max":
        return F.adaptive_max_pool2d(maps, grid)
    if mode == "avg":
        return F.adaptive_avg_pool2d(maps, grid)
    raise ValueError(f"pooling mode must be 'avg' or 'max', got {mode!r}")


def cosine_affinity(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h*w, h*w) cosine similarity between the C-dim vectors at every pair of positions.

    Positions whose vector is all zeros (dead ReLU outputs) get zero similarity instead of a division by zero.
    """
    vectors = F.normalize(maps.flatten(2), dim=1)
    return torch.bmm(vectors.transpose(1, 2), vectors)


def attention_map(features: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Zagoruyko-Komodakis attention (p = 2): channel mean of squared activations, resized, unit L2 norm per image.

    Returns (N, h*w). The channel mean makes maps of layers with different widths comparable; the normalisation
    removes the activation scale, which differs between networks and between layers.
    """
    energy = features.pow(2).mean(dim=1, keepdim=True)
    return F.normalize(resize_to(energy, size).flatten(1), dim=1)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A training-only adapter: conv (no bias, BN follows) + BatchNorm + ReLU, padded to keep the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def width_adapter(student_width: int, teacher_width: int) -> nn.Module:
    """Map student channels onto the teacher's with a 1x1 :func:`conv_bn_relu`; nothing to learn when they match."""
    return conv_bn_relu(student_width, teacher_width, 1) if student_width != teacher_width else nn.Identity()
