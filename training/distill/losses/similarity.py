"""Double Similarity Distillation (Feng et al., IEEE TIP 30:5363-5376, 2021, arXiv 2107.08591): psd, csd and dsd.

Both terms are parameter-free and linear in the number of positions, which is the method's point against
(h*w)^2 pair-wise affinities (docs/methods.md).
"""

from __future__ import annotations

from itertools import combinations
from typing import Literal

import torch
import torch.nn.functional as F

from .base import DistillLoss, register_loss
from .functional import attention_map, resize_to


def _layer_pairs(num_layers: int, pairs: str) -> list[tuple[int, int]]:
    if pairs == "all":
        return list(combinations(range(num_layers), 2))
    if pairs == "adjacent":
        return [(index, index + 1) for index in range(num_layers - 1)]
    raise ValueError(f"pairs must be 'all' or 'adjacent', got {pairs!r}")


def _psd(student: list[torch.Tensor], teacher: list[torch.Tensor], pairs: list[tuple[int, int]]) -> torch.Tensor:
    size = teacher[-1].shape[-2:]
    student_attention = [attention_map(maps, size) for maps in student]
    teacher_attention = [attention_map(maps, size) for maps in teacher]
    terms = []
    for shallow, deep in pairs:
        student_residual = F.normalize(student_attention[deep] - student_attention[shallow], dim=1)
        teacher_residual = F.normalize(teacher_attention[deep] - teacher_attention[shallow], dim=1)
        terms.append(F.mse_loss(student_residual, teacher_residual))
    return torch.stack(terms).mean()


def _class_correlation(logits: torch.Tensor, temperature: float, softmax_axis: str) -> torch.Tensor:
    """(N, C, h, w) score maps -> (N, C, C) class correlation matrix."""
    if softmax_axis == "spatial":
        scores = F.softmax(logits.flatten(2) / temperature, dim=2)
    else:
        scores = F.normalize(F.softmax(logits / temperature, dim=1).flatten(2), dim=2)
    return torch.bmm(scores, scores.transpose(1, 2))


def _csd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, softmax_axis: str,
         pool_kernel: int) -> torch.Tensor:
    student_logits = resize_to(student_logits, teacher_logits.shape[-2:])
    if pool_kernel > 1:
        student_logits = F.avg_pool2d(student_logits, pool_kernel, ceil_mode=True)
        teacher_logits = F.avg_pool2d(teacher_logits, pool_kernel, ceil_mode=True)
    return F.mse_loss(_class_correlation(student_logits, temperature, softmax_axis),
                      _class_correlation(teacher_logits, temperature, softmax_axis))


def _check_csd_params(temperature: float, softmax_axis: str, pool_kernel: int) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if softmax_axis not in ("spatial", "class"):
        raise ValueError(f"softmax_axis must be 'spatial' or 'class', got {softmax_axis!r}")
    if pool_kernel < 1:
        raise ValueError(f"pool_kernel must be at least 1, got {pool_kernel}")


@register_loss("psd")
class PixelSimilarityDistillation(DistillLoss):
    """DSD's pixel-wise similarity distillation (PSD; docs/methods.md).

    For every tapped layer l, ``a_l = normalize_2(vec(1/D_l * sum_d F_{l,d}^2))`` (attention map, width-free). For a
    pair of layers n < m the residual attention ``r_{m,n} = normalize_2(a_m - a_n)`` captures what the deeper layer
    changed; ``L_PSD = 1/K * sum_k mean_i (r^S_{k,i} - r^T_{k,i})^2`` over the K layer pairs (squared L2).

    Reduction: mean over the N*h*w entries of each residual map, then mean over the K pairs.

    Taps: two or more pairs, shallow to deep (backbone stages, aux logits, the pre-classifier feature, logits...);
    widths may differ between student and teacher. All attention maps are resized bilinearly to the spatial size of
    the teacher's last tap, which makes layers at different strides comparable.

    Args:
        pairs: "all" pairs n < m (CIRKD's re-implementation, the default) or "adjacent" layers only (the paper's
            description).
    """

    num_taps = None
    min_taps = 2

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *,
                 pairs: Literal["all", "adjacent"] = "all") -> None:
        super().__init__(student_channels, teacher_channels)
        self.pairs = pairs
        self.layer_pairs = _layer_pairs(len(self.student_channels), pairs)

    def distill(self, student, teacher, labels):
        return _psd(student, teacher, self.layer_pairs)


@register_loss("csd")
class CategorySimilarityDistillation(DistillLoss):
    """DSD's category-wise similarity distillation (CSD; docs/methods.md).

    Score maps become C x (h*w) matrices Q of soft class scores and ``M = Q Q^T`` (C x C) is the class correlation;
    ``L_CSD = 1/C^2 * sum_{c,c'} (M^S_{cc'} - M^T_{cc'})^2``. Which axis the softmax runs over changes what M means:

    - ``softmax_axis="class"`` (default, the paper's description, TIP 2021 Eq. 6-7): per-pixel class probabilities
      ``softmax(z / tau)`` over C, then each class row is L2-normalised over positions; ``M_cc'`` is the cosine
      between class maps, in [0, 1] whatever the map size, so the term is of the cross entropy's order at weight 10.
    - ``softmax_axis="spatial"`` (CIRKD's re-implementation): each class map is a distribution over positions,
      ``Q = softmax(z / tau)`` over h*w, no row normalisation; ``M_cc'`` is the overlap of where the two classes are
      placed. Each entry is about 1/(h*w), so the MSE goes as 1/(h*w)^2: at 16x20 positions it is ~1e-5 of the
      cross entropy at weight 10 and trains nothing.

    Both average-pool the logits with ``pool_kernel`` first (CIRKD: 2x2).

    Reduction: mean over the N*C^2 matrix entries.

    Taps: one pair of logits (same class count); student logits are resized bilinearly to the teacher's size.

    Args:
        temperature: ``tau`` (4 in CIRKD).
        softmax_axis: "spatial" or "class", see above.
        pool_kernel: average-pooling cell applied to the logits (1 = none).
    """

    num_taps = 1

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, temperature: float = 4.0,
                 softmax_axis: Literal["spatial", "class"] = "class", pool_kernel: int = 2) -> None:
        super().__init__(student_channels, teacher_channels)
        if self.student_channels != self.teacher_channels:
            raise ValueError(f"loss 'csd' compares class scores: student and teacher must predict the same classes, "
                             f"got {self.student_channels} vs {self.teacher_channels} channels")
        _check_csd_params(temperature, softmax_axis, pool_kernel)
        self.temperature = temperature
        self.softmax_axis = softmax_axis
        self.pool_kernel = pool_kernel

    def distill(self, student, teacher, labels):
        return _csd(student[0], teacher[0], self.temperature, self.softmax_axis, self.pool_kernel)


@register_loss("dsd")
class DoubleSimilarityDistillation(DistillLoss):
    """Double Similarity Distillation (Feng et al., TIP 2021; docs/methods.md).

    ``L = psd_weight * L_PSD(taps[:-1]) + csd_weight * L_CSD(taps[-1])``: PSD over every tap but the last, CSD over
    the last one, which must be the logits. With ``psd_includes_last`` the last tap joins the PSD taps as well, as in
    CIRKD's re-implementation (taps: aux logits, pre-classifier feature, logits).

    Defaults ``psd_weight = 1000``, ``csd_weight = 10``, ``tau = 4``: the re-implementation weights that reproduce a
    gain (DeepLabV3-R18 74.21 -> 74.81 mIoU on Cityscapes val). The result already carries both weights, so its
    config weight is normally 1.

    Reduction: those of :class:`PixelSimilarityDistillation` and :class:`CategorySimilarityDistillation`.

    Taps: three or more pairs (two or more with ``psd_includes_last``), shallow to deep, the last one the logits.

    Args:
        psd_weight: ``lambda_PSD``.
        csd_weight: ``lambda_CSD``.
        temperature: ``tau`` of CSD.
        pairs: PSD layer pairs, "all" or "adjacent".
        softmax_axis: CSD softmax axis, "spatial" or "class".
        pool_kernel: CSD average-pooling cell.
        psd_includes_last: also feed the last tap (the logits) to PSD.
    """

    num_taps = None
    min_taps = 2

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, psd_weight: float = 1000.0,
                 csd_weight: float = 10.0, temperature: float = 4.0, pairs: Literal["all", "adjacent"] = "all",
                 softmax_axis: Literal["spatial", "class"] = "class", pool_kernel: int = 2,
                 psd_includes_last: bool = False) -> None:
        super().__init__(student_channels, teacher_channels)
        psd_taps = len(self.student_channels) if psd_includes_last else len(self.student_channels) - 1
        if psd_taps < 2:
            raise ValueError(f"loss 'dsd' needs at least two PSD taps before the logits tap, got "
                             f"{len(self.student_channels)} taps in all (set psd_includes_last to also use the logits)")
        if self.student_channels[-1] != self.teacher_channels[-1]:
            raise ValueError(f"loss 'dsd': the last tap must be the logits of both networks (same class count), got "
                             f"{self.student_channels[-1]} vs {self.teacher_channels[-1]} channels")
        _check_csd_params(temperature, softmax_axis, pool_kernel)
        self.psd_weight = psd_weight
        self.csd_weight = csd_weight
        self.temperature = temperature
        self.softmax_axis = softmax_axis
        self.pool_kernel = pool_kernel
        self.psd_taps = psd_taps
        self.layer_pairs = _layer_pairs(psd_taps, pairs)

    def distill(self, student, teacher, labels):
        psd = _psd(student[:self.psd_taps], teacher[:self.psd_taps], self.layer_pairs)
        csd = _csd(student[-1], teacher[-1], self.temperature, self.softmax_axis, self.pool_kernel)
        return self.psd_weight * psd + self.csd_weight * csd
