"""Segmentation metrics from an accumulated confusion matrix (torch-free, shared by training and runtime)."""

from __future__ import annotations

import numpy as np

from .classes import IGNORE_INDEX
from .errors import DataError


class ConfusionMatrix:
    """Counts (label, prediction) pairs over a whole split; mIoU and accuracy are derived from the counts.

    Labels equal to ``ignore_index`` are skipped. Any other label outside ``[0, num_classes)`` is an error rather
    than silently dropped, because it means a corrupt label file or a wrong class list.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, label: np.ndarray, prediction: np.ndarray) -> None:
        label = np.asarray(label)
        prediction = np.asarray(prediction)
        if label.shape != prediction.shape:
            raise DataError(f"label shape {label.shape} differs from prediction shape {prediction.shape}")
        valid = label != self.ignore_index
        gt = label[valid].astype(np.int64, copy=False)
        pred = prediction[valid].astype(np.int64, copy=False)
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            bad = np.unique(gt[(gt < 0) | (gt >= self.num_classes)])[:10].tolist()
            raise DataError(f"label values {bad} are outside the {self.num_classes} classes "
                            f"(and are not the ignore index {self.ignore_index})")
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise DataError(f"prediction holds class ids outside [0, {self.num_classes})")
        self.matrix += np.bincount(gt * self.num_classes + pred,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    @property
    def pixels(self) -> int:
        return int(self.matrix.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU as fractions; NaN for a class absent from both labels and predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur in labels or predictions."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.diag(self.matrix).sum() / total) if total else 0.0

    def summary(self, class_names: list[str] | tuple[str, ...]) -> dict:
        """The JSON-ready result: ``miou``, ``pixel_acc`` and ``per_class_iou`` (name -> IoU or None)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        iou = self.iou()
        return {
            "miou": self.miou(),
            "pixel_acc": self.pixel_accuracy(),
            "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
        }


def format_iou_table(summary: dict) -> str:
    """A plain-text table of per-class IoU followed by mIoU and pixel accuracy (values in percent)."""
    rows = [(name, "  n/a" if v is None else f"{100 * v:5.1f}") for name, v in summary["per_class_iou"].items()]
    width = max(len(name) for name, _ in rows + [("pixel accuracy", "")])
    lines = [f"{'class':<{width}}  IoU %", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"{'-' * width}  -----", f"{'mIoU':<{width}}  {100 * summary['miou']:5.1f}",
              f"{'pixel accuracy':<{width}}  {100 * summary['pixel_acc']:5.1f}"]
    return "\n".join(lines)
