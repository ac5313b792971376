"""mIoU, pixel accuracy and per-class IoU of a deployed model on a dataset split.

Predictions go through the same Segmenter stages for every backend and are mapped to the label grid with a
nearest-neighbour resize of the network-resolution class map, so a checkpoint and its ONNX or TensorRT export are
scored by identical code and their numbers are directly comparable.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

import numpy as np
from tqdm import tqdm

from .errors import DataError, ModelFormatError
from .metrics import ConfusionMatrix
from .segmenter import Segmenter


def _read_batch(dataset, start: int, stop: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pairs = [dataset[index] for index in range(start, stop)]
    return [image for image, _ in pairs], [label for _, label in pairs]


def check_classes_match(segmenter: Segmenter, dataset) -> None:
    """Refuse to score a model against a dataset with a different number of classes: every IoU would be wrong."""
    model_classes, data_classes = segmenter.meta.num_classes, dataset.classes.num_classes
    if model_classes != data_classes:
        raise ModelFormatError(
            f"model {segmenter.meta.model} predicts {model_classes} classes ({segmenter.meta.dataset}) but dataset "
            f"{dataset.name} has {data_classes} ({dataset.classes.dataset}); evaluate it on the dataset it was "
            "trained for")


def evaluate(segmenter: Segmenter, dataset, batch_size: int = 1, limit: int | None = None,
             progress: bool | None = None) -> dict:
    """Score ``segmenter`` on ``dataset`` (an ``open_dataset`` result or anything with the same interface).

    Args:
        segmenter: The model to score.
        dataset: Has ``classes`` (ClassSpec), ``name``, ``len()`` and ``[i] -> (RGB image, label with 255 ignored)``.
        batch_size: Images per network call; reading the next batch overlaps with inference on this one.
        limit: Score only the first ``limit`` images (quick checks).
        progress: Show a progress bar on stderr; ``None`` shows it only on an interactive terminal.

    Returns:
        The :meth:`ConfusionMatrix.summary` keys (``miou``, ``pixel_acc``, ``per_class_iou`` by dataset class name)
        plus ``images``, ``pixels``, ``seconds``, ``model``, ``backend``, ``device``, ``providers``,
        ``compute_precision`` (see :class:`~.backends.base.Backend`), ``dataset``, ``split``.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    check_classes_match(segmenter, dataset)
    count = len(dataset) if limit is None else min(int(limit), len(dataset))
    if count <= 0:
        raise DataError(f"dataset {dataset.name} has no images to evaluate")
    matrix = ConfusionMatrix(dataset.classes.num_classes, ignore_index=dataset.classes.ignore_index)
    started = perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-reader") as reader, \
            tqdm(total=count, desc="eval", unit="img", file=sys.stderr, leave=False,
                 disable=None if progress is None else not progress) as bar:
        pending = reader.submit(_read_batch, dataset, 0, min(batch_size, count))
        for following in [*range(batch_size, count, batch_size), None]:
            images, labels = pending.result()
            if following is not None:  # read the next batch while this one runs
                pending = reader.submit(_read_batch, dataset, following, min(following + batch_size, count))
            raw = segmenter.run(segmenter.prepare(images))
            for label, prediction in zip(labels, segmenter.finish(raw, [label.shape[:2] for label in labels])):
                matrix.update(label, prediction)
            bar.update(len(images))
    seconds = perf_counter() - started
    backend = segmenter.backend
    return {
        **matrix.summary(dataset.classes.names),
        "images": count,
        "pixels": matrix.pixels,
        "seconds": seconds,
        "model": segmenter.meta.model,
        "backend": backend.name,
        "device": backend.device,
        "providers": list(backend.providers),
        "compute_precision": backend.compute_precision,
        "dataset": dataset.name,
        "split": getattr(dataset, "split", None),
    }
