"""Training data: joint augmentation (numpy/OpenCV) and the torch Dataset/DataLoader over the runtime readers."""

from .dataset import SegmentationTorchDataset, build_loader, collate_samples, set_loader_epoch
from .transforms import ColorJitter, EvalTransform, TrainTransform, hflip, random_crop, random_scale

__all__ = [
    "ColorJitter",
    "EvalTransform",
    "SegmentationTorchDataset",
    "TrainTransform",
    "build_loader",
    "collate_samples",
    "hflip",
    "random_crop",
    "random_scale",
    "set_loader_epoch",
]
