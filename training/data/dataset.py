"""Torch wrapper around the runtime's dataset readers, and the DataLoader builder for training and validation.

Reproducibility does not depend on the number of workers: each sample draws its augmentation from a generator
seeded by (seed, epoch, index), not from per-worker random state, so the same run with 0, 2 or 8 workers (or
resumed mid-way) sees the same crops.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import time
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from edgeseg.runtime.datasets import SegmentationDataset, open_dataset
from edgeseg.runtime.errors import ConfigError

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class SegmentationTorchDataset(Dataset):
    """(image float32 CHW tensor, label int64 HxW tensor) samples of a :class:`SegmentationDataset`.

    The current epoch lives in a shared-memory tensor, so :meth:`set_epoch` in the main process reaches persistent
    loader workers too; call it before iterating the loader for that epoch.

    Args:
        seg_dataset: Source of (RGB uint8 image, uint8 label) pairs.
        transform: ``transform(image, label, rng) -> (float32 CHW array, uint8 HxW array)``, e.g. TrainTransform.
        seed: Base seed of the per-sample random generators.
    """

    def __init__(self, seg_dataset: SegmentationDataset, transform: Transform, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.dataset = seg_dataset
        self.transform = transform
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def classes(self):
        return self.dataset.classes

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_rng(self, index: int) -> np.random.Generator:
        """The generator that augments sample ``index`` in the current epoch (independent streams per triple)."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        image, label = self.transform(image, label, self.sample_rng(index))
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))


def collate_samples(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """Stack images and labels into batch tensors when their shapes agree, otherwise keep them as lists.

    Training crops always stack. Validation keeps labels at each image's own resolution, so a batch of differently
    sized images comes back as ``(list of CHW tensors, list of HxW tensors)`` instead of failing.
    """
    images, labels = zip(*batch)

    def stack_if_uniform(tensors):
        return torch.stack(tensors) if len({t.shape for t in tensors}) == 1 else list(tensors)

    return stack_if_uniform(images), stack_if_uniform(labels)


WORKER_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# How often a loader worker checks that the process it loads for is still alive.
PARENT_CHECK_S = 1.0


def _exit_when_gone(pid: int) -> None:
    """End this worker once process ``pid`` is gone (a SIGKILL leaves no chance to stop the workers)."""
    while True:
        time.sleep(PARENT_CHECK_S)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # the pid now belongs to another user's process: ours is gone
            os._exit(0)


def _init_worker(trainer_pid: int, _worker_id: int) -> None:
    # The workers are the parallelism; OpenCV's own threads would only fight them (and the training step) for cores.
    cv2.setNumThreads(1)
    # A fork-server worker's parent is the fork server, not the training process, so DataLoader's own parent check
    # never fires when training is SIGKILLed (OOM killer, preemption): the worker, the fork server and the resource
    # tracker then idled on for minutes, ~370 MB each run. Watching the training process ends all three.
    threading.Thread(target=_exit_when_gone, args=(trainer_pid,), daemon=True, name="edgeseg-parent-watch").start()


def make_loader(dataset: Dataset, sampler, batch_size: int, workers: int, drop_last: bool) -> DataLoader:
    """The one place loaders are made: persistent workers started by a fork server.

    Workers forked from a process that already runs thread pools (torch, OpenCV, ONNX Runtime) can deadlock; the
    fork server is a clean single-threaded process, and persistent workers pay its start-up once per run.
    """
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_samples, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                      persistent_workers=workers > 0,
                      worker_init_fn=functools.partial(_init_worker, os.getpid()) if workers > 0 else None,
                      multiprocessing_context=WORKER_START_METHOD if workers > 0 else None)


def build_loader(spec: str | SegmentationDataset, split: str, transform: Transform, batch_size: int, workers: int,
                 seed: int, shuffle: bool, drop_last: bool, distributed: bool = False) -> DataLoader:
    """DataLoader over one split, ready for training (shuffle, drop_last) or validation (neither).

    The sampler is a :class:`DistributedSampler` in every case (one replica when not distributed): its order for
    epoch ``e`` depends only on (seed, e), which makes a resumed run replay the same order. Call
    :func:`set_loader_epoch` before each epoch, or every epoch repeats the order and the augmentation of epoch 0.
    A distributed validation loader pads the split to a multiple of the world size by repeating samples.

    Args:
        spec: Dataset spec (``camvid``, ``cityscapes:/data/cityscapes``...) or an opened dataset.
        split: Split to read when ``spec`` is a string.
        transform: TrainTransform, EvalTransform or any callable of the same form.
        batch_size: Samples per batch (per process when distributed).
        workers: Loader processes; 0 reads in the calling process. Workers persist across epochs.
        seed: Seeds the shuffle order and the per-sample augmentation.
        shuffle: Shuffle the order every epoch.
        drop_last: Drop the last incomplete batch (training), keep it (validation).
        distributed: Split the samples across the ranks of the initialised process group.
    """
    seg_dataset = open_dataset(spec, split) if isinstance(spec, str) else spec
    dataset = SegmentationTorchDataset(seg_dataset, transform, seed=seed)
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
    if drop_last and len(sampler) < batch_size:
        raise ConfigError(f"batch size {batch_size} is larger than the {len(sampler)} samples per process of "
                          f"{seg_dataset.name} {seg_dataset.split}: no complete batch could be formed")
    return make_loader(dataset, sampler, batch_size, workers, drop_last)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Move a loader from :func:`build_loader` to ``epoch``: new shuffle order and new augmentation draws."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
