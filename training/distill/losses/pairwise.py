"""Losses that compare relations between positions or channels: skd_pairwise, affinity, ka and csc.

The position-to-position terms build an ``(h*w) x (h*w)`` matrix per image, quadratic in the map size. Each of these
losses takes ``max_nodes`` (positions per image, default 4096) and pools its maps with
:func:`~.functional.pool_to_node_budget` until ``h * w <= max_nodes`` before building the matrix: a 64x128 map
(8192 positions) becomes 45x91, and the affinity matrix shrinks from 256 MiB to 64 MiB per image in float32. The
node count actually used is kept in ``last_node_count`` for logging.

Affinities are averaged over the pairs (mean of squared differences), so the loss value does not depend on how many
nodes the budget leaves.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from .base import DistillLoss, register_loss
from .functional import conv_bn_relu, pool_to_node_budget, resize_to, width_adapter

DEFAULT_MAX_NODES = 4096


def _check_max_nodes(max_nodes: int) -> None:
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be at least 1, got {max_nodes}")


class _PairwiseMixin:
    """Shared budgeted affinity comparison; records the node count it used."""

    max_nodes: int
    last_node_count: int | None

    def _affinity_mse(self, student_maps: torch.Tensor, teacher_maps: torch.Tensor, mode: str) -> torch.Tensor:
        student_maps = pool_to_node_budget(student_maps, self.max_nodes, mode)
        teacher_maps = pool_to_node_budget(teacher_maps, self.max_nodes, mode)
        self.last_node_count = teacher_maps.shape[-2] * teacher_maps.shape[-1]
        return F.mse_loss(functional.cosine_affinity(student_maps), functional.cosine_affinity(teacher_maps))


@register_loss("skd_pairwise")
class StructuredPairwiseDistillation(_PairwiseMixin, DistillLoss):
    """Pair-wise distillation of Structured KD (Liu et al., CVPR 2019; docs/methods.md).

    The feature map is max-pooled into a graph of nodes; ``a_ij`` is the cosine similarity of the C-dim vectors of
    nodes i and j, and ``L_pa = 1/N * sum_n 1/|R|^2 * sum_ij (a^S_ij - a^T_ij)^2``. Cosine similarities are
    width-free, so student and teacher may have different channel counts without an adapter.

    Reduction: mean over the N*|R|^2 node pairs.

    Taps: one pair, the feature before the classifier (post-PSP/ASPP). The student map is resized bilinearly to the
    teacher's size, then both are max-pooled with ``pool_kernel`` (CIRKD: 2x2 cells; the official SKD code instead
    pools to a 2x2 graph, ``pool_kernel`` = half the map) and, if still above ``max_nodes`` positions, adaptively
    max-pooled down to the budget.

    Args:
        pool_kernel: side of the square max-pooling cell that forms one node (1 = every position is a node).
        max_nodes: memory budget in nodes per image, see the module docstring.
    """

    num_taps = 1

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, pool_kernel: int = 2,
                 max_nodes: int = DEFAULT_MAX_NODES) -> None:
        super().__init__(student_channels, teacher_channels)
        if pool_kernel < 1:
            raise ValueError(f"pool_kernel must be at least 1, got {pool_kernel}")
        _check_max_nodes(max_nodes)
        self.pool_kernel = pool_kernel
        self.max_nodes = max_nodes
        self.last_node_count = None

    def distill(self, student, teacher, labels):
        teacher_maps = teacher[0]
        student_maps = resize_to(student[0], teacher_maps.shape[-2:])
        if self.pool_kernel > 1:
            student_maps = F.max_pool2d(student_maps, self.pool_kernel, ceil_mode=True)
            teacher_maps = F.max_pool2d(teacher_maps, self.pool_kernel, ceil_mode=True)
        return self._affinity_mse(student_maps, teacher_maps, mode="max")


class _LatentSpaceLoss(_PairwiseMixin, DistillLoss):
    """Knowledge Adaptation losses: they compare student maps with the teacher's feature *encoded* by a frozen,
    separately trained autoencoder (``training/distill/autoencoder.py``).

    The encoder is handed over with :meth:`set_encoder` and kept in a plain list, so it is neither a submodule
    (absent from ``parameters()``, ``state_dict()`` and ``train()``) nor trained by the optimiser.
    """

    num_taps = 1

    def __init__(self, student_channels: list[int], teacher_channels: list[int], latent_channels: int,
                 max_nodes: int) -> None:
        super().__init__(student_channels, teacher_channels)
        if latent_channels < 1:
            raise ValueError(f"latent_channels must be at least 1, got {latent_channels}")
        _check_max_nodes(max_nodes)
        self.latent_channels = latent_channels
        self.max_nodes = max_nodes
        self.last_node_count = None
        self._encoder: list[nn.Module] = []

    def set_encoder(self, encoder: nn.Module) -> None:
        """Use ``encoder`` (teacher feature -> latent code) from now on; it is frozen and put in eval mode."""
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"the encoder must be an nn.Module, got {type(encoder).__name__}")
        encoder.eval().requires_grad_(False)
        self._encoder[:] = [encoder]

    @property
    def encoder(self) -> nn.Module | None:
        return self._encoder[0] if self._encoder else None

    def encode_teacher(self, teacher_features: torch.Tensor) -> torch.Tensor:
        """The teacher feature in the latent space, computed without a graph (the encoder is a constant)."""
        encoder = self.encoder
        if encoder is None:
            raise RuntimeError(f"loss {self.loss_name()!r} has no encoder: train a FeatureAutoencoder on the "
                               f"teacher's features and call set_encoder(autoencoder.encoder) before the first step")
        encoder.to(teacher_features.device)
        with torch.no_grad():
            latent = encoder(teacher_features).float()
        if latent.dim() != 4 or latent.shape[1] != self.latent_channels:
            raise RuntimeError(f"loss {self.loss_name()!r} expects {self.latent_channels}-channel latent maps, the "
                               f"encoder returned shape {tuple(latent.shape)}")
        return latent


@register_loss("affinity")
class AffinityDistillation(_LatentSpaceLoss):
    """Affinity distillation of Knowledge Adaptation (He et al., CVPR 2019; docs/methods.md), alone.

    ``A_ij = 1/m * cos(Phi_i, Phi_j)`` over the m = h*w positions of a map; the teacher's ``Phi`` is E(teacher
    feature), the student's is C_a(student feature) with a training-only 3x3 conv + BN + ReLU adapter to the latent
    width. ``L_aff = sum_ij (A^S_ij - A^T_ij)^2`` (squared Frobenius norm), which equals the mean over the m^2 pairs
    of the squared cosine differences: the 1/m scaling makes the loss independent of the node count.

    Reduction: mean over N*m^2 pairs.

    Taps: one pair, the last feature before the classifier of each network. The adapted student map is resized
    bilinearly to the latent map's size; both are average-pooled to the ``max_nodes`` budget. Call
    :meth:`set_encoder` before the first forward.

    Args:
        latent_channels: width of the autoencoder's code (output width of the adapter).
        max_nodes: memory budget in positions per image, see the module docstring.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, latent_channels: int,
                 max_nodes: int = DEFAULT_MAX_NODES) -> None:
        super().__init__(student_channels, teacher_channels, latent_channels, max_nodes)
        self.affinity_adapter = conv_bn_relu(self.student_channels[0], latent_channels, 3)

    def distill(self, student, teacher, labels):
        latent = self.encode_teacher(teacher[0])
        adapted = resize_to(self.affinity_adapter(student[0]), latent.shape[-2:])
        return self._affinity_mse(adapted, latent, mode="avg")


@register_loss("ka")
class KnowledgeAdaptation(_LatentSpaceLoss):
    """Knowledge Adaptation (He et al., CVPR 2019, arXiv 1903.04688; docs/methods.md).

    ``L = beta * L_adapt + gamma * L_aff`` with

    - ``L_adapt = 1/|I| * sum_j || E(phi_t)_j / ||E(phi_t)_j||_q - C_f(phi_s)_j / ||C_f(phi_s)_j||_q ||_p``: the
      student feature, adapted by C_f (3x3 conv + BN + ReLU, training-only) to the latent width, must point the same
      way as the teacher's latent code at every position j; each code vector is q-normalised (paper Eq. 3);
    - ``L_aff``: the affinity term of :class:`AffinityDistillation` between E(phi_t) and C_a(phi_s), with a second
      adapter C_a of the same form.

    Defaults beta = 50, gamma = 1 (the paper's, fixed for all datasets); p = 1, q = 2 as in torchdistill's
    re-implementation (the paper's values are unverified: docs/methods.md).

    Reduction of L_adapt (``adapt_reduction``):

    - ``"element"`` (default): the p-norm's terms are averaged over the code's channels too, i.e. the mean of
      ``|difference|^p`` over all N*C*h*w elements (for p = 1). With the paper's beta = 50 the term starts near the
      cross entropy's size, which is the balance the paper's fixed beta implies for its per-element losses.
    - ``"position"``: the p-norm per position, averaged over positions (the literal reading of Eq. 3). For 128-d unit
      codes the L1 norm of a difference is about 9 at initialisation, so beta = 50 makes the term ~190x the cross
      entropy and the student learns little else (measured on CamVid with the committed BiSeNetV2 teacher).

    L_aff: mean over N*m^2 pairs. The result already carries beta and gamma, so its config weight is normally 1.

    Taps: one pair, the last feature before the classifier of each network. Adapted student maps are resized
    bilinearly to the latent map's size. Call :meth:`set_encoder` before the first forward.

    Args:
        latent_channels: width of the autoencoder's code.
        adapt_weight: ``beta``.
        affinity_weight: ``gamma``.
        p: norm order of the difference in L_adapt.
        q: norm order that normalises each code vector in L_adapt.
        adapt_reduction: "element" or "position", see above.
        max_nodes: memory budget of the affinity term in positions per image.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, latent_channels: int,
                 adapt_weight: float = 50.0, affinity_weight: float = 1.0, p: float = 1.0, q: float = 2.0,
                 adapt_reduction: Literal["element", "position"] = "element",
                 max_nodes: int = DEFAULT_MAX_NODES) -> None:
        super().__init__(student_channels, teacher_channels, latent_channels, max_nodes)
        if p <= 0 or q <= 0:
            raise ValueError(f"norm orders p and q must be positive, got p={p}, q={q}")
        if adapt_reduction not in ("element", "position"):
            raise ValueError(f"adapt_reduction must be 'element' or 'position', got {adapt_reduction!r}")
        self.adapt_reduction = adapt_reduction
        self.adapt_weight = adapt_weight
        self.affinity_weight = affinity_weight
        self.p = p
        self.q = q
        self.feature_adapter = conv_bn_relu(self.student_channels[0], latent_channels, 3)
        self.affinity_adapter = conv_bn_relu(self.student_channels[0], latent_channels, 3)

    def distill(self, student, teacher, labels):
        latent = self.encode_teacher(teacher[0])
        size = latent.shape[-2:]
        adapted = F.normalize(resize_to(self.feature_adapter(student[0]), size), p=self.q, dim=1)
        target = F.normalize(latent, p=self.q, dim=1)
        if self.adapt_reduction == "element":
            adapt_loss = (adapted - target).abs().pow(self.p).mean()
        else:
            adapt_loss = torch.linalg.vector_norm(adapted - target, ord=self.p, dim=1).mean()
        affinity_student = resize_to(self.affinity_adapter(student[0]), size)
        affinity_loss = self._affinity_mse(affinity_student, latent, mode="avg")
        return self.adapt_weight * adapt_loss + self.affinity_weight * affinity_loss


@register_loss("csc")
class ChannelSpatialCorrelation(_PairwiseMixin, DistillLoss):
    """Channel and spatial correlation loss (Park & Heo, Sensors 20(16):4616, 2020; docs/methods.md).

    Two Gram matrices of the same feature map, matched with MSE:

    - channel: each channel's map is L2-normalised over positions, ``G_ch = F F^T`` (D x D, cosine between
      channels), over all positions (linear in h*w);
    - spatial: the map is average-pooled to the ``max_nodes`` budget, each position's vector is L2-normalised over
      channels, ``G_sp = F^T F`` (m x m, cosine between positions).

    ``L = channel_weight * MSE(G_ch^S, G_ch^T) + spatial_weight * MSE(G_sp^S, G_sp^T)``. The paper's text was not
    retrievable beyond its abstract (docs/methods.md): this factorised form of the "full" channel-and-spatial
    correlation is our reading, and the weights default to 1.

    Reduction: mean over the N*D^2 and N*m^2 entries respectively.

    Taps: one pair of features. When the widths differ, a training-only 1x1 conv + BN + ReLU adapter maps the
    student to the teacher's width (needed by the channel Gram); the student map is then resized bilinearly to the
    teacher's size.

    Args:
        channel_weight: weight of the channel-correlation term.
        spatial_weight: weight of the spatial-correlation term.
        max_nodes: memory budget of the spatial Gram in positions per image.
    """

    num_taps = 1

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, channel_weight: float = 1.0,
                 spatial_weight: float = 1.0, max_nodes: int = DEFAULT_MAX_NODES) -> None:
        super().__init__(student_channels, teacher_channels)
        _check_max_nodes(max_nodes)
        self.channel_weight = channel_weight
        self.spatial_weight = spatial_weight
        self.max_nodes = max_nodes
        self.last_node_count = None
        self.adapter = width_adapter(self.student_channels[0], self.teacher_channels[0])

    def distill(self, student, teacher, labels):
        teacher_maps = teacher[0]
        student_maps = resize_to(self.adapter(student[0]), teacher_maps.shape[-2:])
        channel_loss = _channel_correlation_mse(student_maps, teacher_maps)
        spatial_loss = self._affinity_mse(student_maps, teacher_maps, mode="avg")
        return self.channel_weight * channel_loss + self.spatial_weight * spatial_loss


def _channel_correlation_mse(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """MSE between the (N, D, D) cosine-similarity matrices of the channel maps of two (N, D, h, w) tensors.

    With fewer positions m than channels D the D x D matrices are never formed: for row-normalised S and T (D x m),
    ``||S S^T - T T^T||^2 = ||S^T S||^2 + ||T^T T||^2 - 2 ||S^T T||^2`` (cyclic trace), three m x m products instead
    of two D x D ones: for a 1024-channel teacher feature on a 16x20 map, half the time forward and backward.
    """
    student_rows = F.normalize(student_maps.flatten(2), dim=2)
    teacher_rows = F.normalize(teacher_maps.flatten(2), dim=2)
    batch, channels, positions = teacher_rows.shape
    if positions >= channels:
        return F.mse_loss(torch.bmm(student_rows, student_rows.transpose(1, 2)),
                          torch.bmm(teacher_rows, teacher_rows.transpose(1, 2)))

    def squared_norm_of_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return torch.bmm(left.transpose(1, 2), right).pow(2).sum()

    squared_distance = (squared_norm_of_product(student_rows, student_rows)
                        + squared_norm_of_product(teacher_rows, teacher_rows)
                        - 2 * squared_norm_of_product(student_rows, teacher_rows))
    return squared_distance.clamp_min(0) / (batch * channels * channels)
