"""Losses that match probability distributions: per pixel over classes (kd, ace) or per channel over space (cwd).

All three are linear in the number of positions. Student maps are resized bilinearly to the teacher's size, and
labels are downsampled to that size with nearest neighbour, so every term is computed at the teacher's resolution.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .base import DistillLoss, register_loss
from .functional import downsample_labels, resize_to, width_adapter


def _require_same_classes(loss: DistillLoss) -> None:
    if loss.student_channels != loss.teacher_channels:
        raise ValueError(f"loss {loss.loss_name()!r} compares class scores: student and teacher must predict the same "
                         f"classes, got {loss.student_channels} vs {loss.teacher_channels} channels")


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


@register_loss("kd")
class PixelwiseKD(DistillLoss):
    """Pixel-wise knowledge distillation (Hinton et al., 2015, applied at every position; docs/methods.md).

    ``L = tau^2 / |Omega| * sum_i KL(softmax(z^T_i / tau) || softmax(z^S_i / tau))``, softmax over classes. The
    ``tau^2`` factor keeps the gradient scale independent of the temperature.

    Reduction: mean over the N*h*w positions (CIRKD's ``batchmean`` over pixels), so a weight of 1 matches CIRKD's
    setting and the SKD/IFVD weight of 10 corresponds to a different reduction (see docs/methods.md).

    Taps: one pair, the student's and the teacher's logits (same class count). Student logits are resized to the
    teacher's size.

    Args:
        temperature: softening temperature ``tau``; 1 in CIRKD.
    """

    num_taps = 1

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, temperature: float = 1.0) -> None:
        super().__init__(student_channels, teacher_channels)
        _require_same_classes(self)
        _check_temperature(temperature)
        self.temperature = temperature

    def distill(self, student, teacher, labels):
        teacher_logits = teacher[0]
        student_logits = resize_to(student[0], teacher_logits.shape[-2:])
        tau = self.temperature
        log_p_student = F.log_softmax(student_logits / tau, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits / tau, dim=1)
        positions = teacher_logits.shape[0] * teacher_logits.shape[2] * teacher_logits.shape[3]
        kl_sum = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
        return tau ** 2 * kl_sum / positions


@register_loss("cwd")
class ChannelWiseDistillation(DistillLoss):
    """Channel-wise distillation (Shu et al., ICCV 2021; docs/methods.md).

    Each channel's map becomes a distribution over the h*w positions, ``phi(y_c) = softmax(y_c / tau)``, and the
    student matches the teacher channel by channel:
    ``L = tau^2 / (N * C) * sum_n sum_c KL(phi(y^T_{n,c}) || phi(y^S_{n,c}))``.

    Reduction: sum over positions, mean over the N*C (image, channel) pairs.

    Taps: one pair, either logits (same class count, no adapter; the paper's setting with tau = 4) or features. When
    the widths differ, a training-only 1x1 conv + BN + ReLU adapter maps the student to the teacher's width at the
    student's resolution; the result is then resized to the teacher's size.

    Args:
        temperature: ``tau``; 4 for logits in the paper's code, 1 in mmrazor's configs.
    """

    num_taps = 1

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, temperature: float = 4.0) -> None:
        super().__init__(student_channels, teacher_channels)
        _check_temperature(temperature)
        self.temperature = temperature
        self.adapter = width_adapter(self.student_channels[0], self.teacher_channels[0])

    def distill(self, student, teacher, labels):
        teacher_maps = teacher[0]
        student_maps = resize_to(self.adapter(student[0]), teacher_maps.shape[-2:])
        tau = self.temperature
        log_p_student = F.log_softmax(student_maps.flatten(2) / tau, dim=2)
        log_p_teacher = F.log_softmax(teacher_maps.flatten(2) / tau, dim=2)
        batch, channels = teacher_maps.shape[:2]
        kl_sum = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
        return tau ** 2 * kl_sum / (batch * channels)


@register_loss("ace")
class AdaptiveCrossEntropy(DistillLoss):
    """Adaptive cross entropy (Park & Heo, Sensors 20(16):4616, 2020; docs/methods.md).

    Cross entropy of the student's class distribution against a per-pixel target that trusts the teacher only
    where the teacher is right, so that its mistakes are not distilled:

    - ``mode="switch"`` (the reading in docs/methods.md): ``t_i = p^T_i`` where ``argmax p^T_i == y_i``, else
      ``onehot(y_i)``;
    - ``mode="mix"``: ``t_i = w * p^T_i + (1 - w) * onehot(y_i)`` at every pixel, a convex mix with
      ``w = teacher_weight`` that keeps part of a wrong teacher's distribution but never all of it.

    ``L = -1 / |Omega_valid| * sum_i sum_c t_{i,c} log p^S_{i,c}``; pixels labelled ``ignore_index`` are excluded.
    The paper's exact formula was not retrievable (only its abstract was): both modes are our readings.

    Where ACE replaces a class-weighted task cross entropy, ``class_weights`` carries the same weights over: pixel
    ``i`` counts ``w_{y_i}`` times, and the mean becomes ``sum_i w_{y_i} l_i / sum_i w_{y_i}``, torch's weighted
    cross entropy. Without them the replacement changes two things at once (the target and the class balance).

    Reduction: (weighted) mean over the non-ignored positions at the teacher's resolution (0 when every pixel is
    ignored).

    Taps: one pair of logits (same class count); needs the labels, which are downsampled (nearest) to the teacher's
    size while the student logits are resized (bilinear) to it.

    Args:
        mode: "switch" or "mix", see above.
        teacher_weight: ``w`` of the "mix" mode; unused by "switch".
        class_weights: one weight per class, as ``train.class_weights``; None weighs every pixel alike.
        ignore_index: label value excluded from the loss.
    """

    num_taps = 1
    needs_labels = True

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *,
                 mode: Literal["switch", "mix"] = "switch", teacher_weight: float = 0.5,
                 class_weights: list[float] | None = None, ignore_index: int = 255) -> None:
        super().__init__(student_channels, teacher_channels)
        _require_same_classes(self)
        if mode not in ("switch", "mix"):
            raise ValueError(f"ace mode must be 'switch' or 'mix', got {mode!r}")
        if not 0.0 <= teacher_weight <= 1.0:
            raise ValueError(f"teacher_weight must lie in [0, 1], got {teacher_weight}")
        self.mode = mode
        self.teacher_weight = teacher_weight
        self.ignore_index = ignore_index
        if class_weights is not None:
            if len(class_weights) != teacher_channels[0] or any(w < 0 for w in class_weights):
                raise ValueError(f"ace class_weights needs {teacher_channels[0]} non-negative values, "
                                 f"got {class_weights!r}")
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32),
                                 persistent=False)
        else:
            self.class_weights = None

    def distill(self, student, teacher, labels):
        teacher_logits = teacher[0]
        size = teacher_logits.shape[-2:]
        log_p_student = F.log_softmax(resize_to(student[0], size), dim=1)
        labels = downsample_labels(labels.to(teacher_logits.device), size)
        valid = labels != self.ignore_index
        num_classes = teacher_logits.shape[1]
        if bool(((labels < 0) | (labels >= num_classes))[valid].any()):
            raise ValueError(f"loss 'ace': labels hold values outside [0, {num_classes}) other than the ignore index "
                             f"{self.ignore_index}")
        safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
        p_teacher = F.softmax(teacher_logits, dim=1)
        # Cross entropy against each target kind, per pixel, without materialising one-hot maps.
        ce_teacher = -(p_teacher * log_p_student).sum(dim=1)
        ce_label = -log_p_student.gather(1, safe_labels[:, None])[:, 0]
        if self.mode == "switch":
            teacher_right = p_teacher.argmax(dim=1) == safe_labels
            per_pixel = torch.where(teacher_right, ce_teacher, ce_label)
        else:
            per_pixel = self.teacher_weight * ce_teacher + (1.0 - self.teacher_weight) * ce_label
        weight = valid.to(per_pixel.dtype)
        if self.class_weights is not None:
            weight = weight * self.class_weights[safe_labels]
        return (per_pixel * weight).sum() / weight.sum().clamp(min=1e-12)
