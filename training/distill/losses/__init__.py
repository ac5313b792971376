"""Distillation losses for segmentation, built by name from a config (see :func:`build_loss`).

Importing this package registers every loss: kd, cwd, ace (distributions), skd_pairwise, affinity, ka, csc
(relations between positions or channels, under a node budget) and psd, csd, dsd (Double Similarity Distillation).
"""

from . import distributions, pairwise, similarity  # noqa: F401  (importing registers the losses)
from .base import DistillLoss, build_loss, describe_loss, list_losses, register_loss

__all__ = ["DistillLoss", "build_loss", "describe_loss", "list_losses", "register_loss"]
