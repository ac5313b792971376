"""Supervised and distillation training: one loop, iteration-based, resumable, single or multi GPU.

The loop is plain on purpose: cross entropy (plus the distillation terms when the config has a ``distill``
section), SGD or AdamW with a poly schedule, AMP and channels_last on CUDA, DistributedDataParallel under
``torchrun``. Every ``ckpt_every`` iterations ``last.pt`` is rewritten atomically with the full training state, so
a run killed at any moment resumes from its last checkpoint with ``--resume``.
"""

from __future__ import annotations

import csv
import os
import random
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Sampler
from tqdm import tqdm

from edgeseg.runtime.classes import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.errors import ConfigError
from edgeseg.runtime.atomic_files import atomic_path, write_json_atomic
from edgeseg.runtime.metrics import ConfusionMatrix
from edgeseg.runtime.preprocess import resize_labels

from .amp import autocast, autocast_dtype
from .checkpoint import load_checkpoint, model_card, save_checkpoint
from .config import save_config
from .data.dataset import SegmentationTorchDataset, make_loader
from .data.transforms import EvalTransform, TrainTransform
from .models import create_model, read_state_dict


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can start mid-epoch, so a resumed run sees the batches it would have.

    Under DDP each rank takes every ``world``-th index of the same permutation.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)[self.rank::self.world]
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world)) - self.start


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA GPU is available")
    return device


def poly_factor(iteration: int, total: int, power: float, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up, then (1 - progress) ** power down to zero at ``total``."""
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    return max(0.0, 1.0 - iteration / max(1, total)) ** power


def is_due(iteration: int, every: int, total: int) -> bool:
    """Whether a periodic action (log, validate, checkpoint) runs after ``iteration``; ``every`` <= 0: at the end."""
    return iteration == total or every > 0 and iteration % every == 0


def is_balance_due(iteration: int, start: int, every: int) -> bool:
    """The loss balance is measured at a run's (or a resumed run's) first step and every ``every`` steps."""
    return iteration == start or (every > 0 and (iteration + 1) % every == 0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _tuple_or_none(value) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


class Trainer:
    """Owns the model, data, optimiser and run folder of one training run."""

    def __init__(self, config: dict, out_dir: str | Path, resume_from: str | Path | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self._setup_device()
        train_cfg, data_cfg = config["train"], config["data"]
        seed_everything(train_cfg["seed"] + self.rank)

        self.train_set = open_dataset(data_cfg["dataset"], data_cfg["train_split"])
        if data_cfg["train_include"]:
            self.train_set = self.train_set.select(list(data_cfg["train_include"]))
        self.val_set = open_dataset(data_cfg["dataset"], data_cfg["val_split"])
        self.classes = self.train_set.classes
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        base_size = _tuple_or_none(data_cfg["base_size"])
        self.eval_size = _tuple_or_none(data_cfg["eval_size"]) or base_size or self._native_size()
        self.train_transform = TrainTransform(
            crop_size=tuple(data_cfg["crop_size"]), base_size=base_size, scale_range=tuple(data_cfg["scale_range"]),
            flip=data_cfg["flip"], jitter=data_cfg["jitter"], mean=mean, std=std)
        self.eval_transform = EvalTransform(size=self.eval_size, mean=mean, std=std)
        self.mean, self.std = mean, std

        model_cfg = config["model"]
        self.model = create_model(model_cfg["name"], num_classes=self.classes.num_classes, **model_cfg["kwargs"])
        self._load_initial_weights(model_cfg)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

        self.distiller = None
        self.unlabeled = None  # frames the student learns from the teacher alone (distill.unlabeled)
        if config.get("distill") and config["distill"].get("unlabeled"):
            from .data.unlabeled import open_unlabeled, sampling_summary, unlabeled_settings

            self.unlabeled_settings = unlabeled_settings(config["distill"]["unlabeled"])
            self.unlabeled = open_unlabeled(self.unlabeled_settings)  # a broken source fails here, before training
            if self.rank == 0:
                print(sampling_summary(self.unlabeled, self.unlabeled_settings, data_cfg["batch_size"]))
        if config.get("distill"):
            from .distill.distiller import Distiller

            self.distiller = Distiller(config["distill"], student=self.model, classes=self.classes,
                                       device=self.device, amp_dtype=self.amp_dtype, out_dir=self.out_dir,
                                       train_set=self.train_set, train_transform=self.train_transform)
            if self.distributed:  # ranks seed differently; DDP syncs the student, the adapters need the same
                for tensor in self.distiller.state_dict().values():
                    dist.broadcast(tensor, src=0)

        self.net = self.model
        if self.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.distiller is not None:
            params += [p for p in self.distiller.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer(params)
        optim_cfg = config["optim"]
        total = train_cfg["iterations"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: poly_factor(it, total, optim_cfg["poly_power"], optim_cfg["warmup_iters"]))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        weights = train_cfg["class_weights"]
        self.class_weights = None if weights is None else torch.tensor(weights, dtype=torch.float32,
                                                                       device=self.device)
        if self.class_weights is not None and len(self.class_weights) != self.classes.num_classes:
            raise ConfigError(f"train.class_weights has {len(self.class_weights)} entries for "
                              f"{self.classes.num_classes} classes")

        self.iteration = 0
        self.start_iteration = 0
        self.pending_balance: dict | None = None
        self.best_miou = -1.0
        self.history: list[dict] = []
        if resume_from is not None:
            self._resume(resume_from)

    # ----------------------------------------------------------------------------------------------- set-up
    def _setup_device(self) -> None:
        train_cfg = self.config["train"]
        if self.distributed:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            use_cuda = torch.cuda.is_available() and train_cfg["device"] != "cpu"
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self.device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        else:
            self.device = pick_device(train_cfg["device"])
        if train_cfg["threads"]:
            torch.set_num_threads(int(train_cfg["threads"]))
        self.amp_dtype = autocast_dtype(train_cfg["amp"], self.device)
        setting = train_cfg["channels_last"]
        self.channels_last = self.device.type == "cuda" if setting == "auto" else bool(setting)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _native_size(self) -> tuple[int, int]:
        image, _ = self.val_set[0]
        return image.shape[0], image.shape[1]

    def _load_initial_weights(self, model_cfg: dict) -> None:
        if model_cfg["weights"]:
            path = model_cfg["weights"]
            state = read_state_dict(path)  # an edgeseg checkpoint or a bare state dict
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected or missing:
                raise ConfigError(f"model.weights {path} does not fit {model_cfg['name']}: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        if model_cfg["backbone_weights"]:
            from .models import load_backbone_weights

            load_backbone_weights(self.model, model_cfg["backbone_weights"])

    def _build_optimizer(self, params) -> torch.optim.Optimizer:
        optim_cfg = self.config["optim"]
        if optim_cfg["name"] == "sgd":
            return torch.optim.SGD(params, lr=optim_cfg["lr"], momentum=optim_cfg["momentum"],
                                   weight_decay=optim_cfg["weight_decay"])
        if optim_cfg["name"] == "adamw":
            return torch.optim.AdamW(params, lr=optim_cfg["lr"], weight_decay=optim_cfg["weight_decay"])
        raise ConfigError(f"optim.name must be sgd or adamw, got {optim_cfg['name']!r}")

    def _resume(self, source: str | Path) -> None:
        path = Path(source)
        path = path / "last.pt" if path.is_dir() else path
        payload = load_checkpoint(path, map_location="cpu")
        state = payload.get("train_state")
        if state is None:
            raise ConfigError(f"{path} holds no training state to resume from (only last.pt does)")
        self.model.load_state_dict(payload["state_dict"])
        if self.distiller is not None and "distiller" in state:
            self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self._apply_optim_config()
        self.iteration = self.start_iteration = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        self.history = list(state.get("history", []))
        torch.set_rng_state(state["torch_rng"])
        if self.rank == 0:
            print(f"resumed from {path} at iteration {self.iteration}")

    def _apply_optim_config(self) -> None:
        """After a resume: the optimizer state brings back the hyper-parameters it was saved with, but the run's
        config (which ``--set optim.lr=...`` may have changed) is what applies from here on."""
        optim_cfg = self.config["optim"]
        self.scheduler.base_lrs = [optim_cfg["lr"]] * len(self.optimizer.param_groups)
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(initial_lr=optim_cfg["lr"], lr=optim_cfg["lr"] * factor,
                         weight_decay=optim_cfg["weight_decay"])
            if "momentum" in group:
                group["momentum"] = optim_cfg["momentum"]

    # ----------------------------------------------------------------------------------------------- loop
    def _batches(self, dataset, seed: int, batch: int, what: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless stream of batches of ``dataset``, starting exactly where iteration ``self.iteration`` left off."""
        sampler = EpochSampler(len(dataset), seed, self.rank, self.world)
        if len(sampler) < batch:
            raise ConfigError(f"a batch takes {batch} {what} but there are only {len(sampler)}")
        loader = make_loader(dataset, sampler, batch, self.config["data"]["workers"], drop_last=True)
        per_epoch = len(sampler) // batch
        epoch, offset = divmod(self.iteration, per_epoch)
        while True:
            sampler.set_position(epoch, offset * batch)
            dataset.set_epoch(epoch)
            yield from loader
            epoch, offset = epoch + 1, 0

    def _labeled_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = self.config["train"]["seed"]
        dataset = SegmentationTorchDataset(self.train_set, self.train_transform, seed=seed)
        return self._batches(dataset, seed, self.config["data"]["batch_size"], "training images (data.batch_size)")

    def _unlabeled_batches(self) -> Iterator[torch.Tensor] | None:
        """The unlabeled frames of every step; their own order and augmentation (seed + 1), the same crops."""
        if self.unlabeled is None:
            return None
        from .data.unlabeled import unlabeled_batch_size

        seed = self.config["train"]["seed"] + 1
        batch = unlabeled_batch_size(self.config["data"]["batch_size"], self.unlabeled_settings["ratio"])
        dataset = SegmentationTorchDataset(self.unlabeled, self.train_transform, seed=seed)
        return (images for images, _ in self._batches(dataset, seed, batch, "unlabeled frames"))

    def _task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.class_weights, ignore_index=IGNORE_INDEX)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor,
                   unlabeled: torch.Tensor | None = None) -> dict[str, float]:
        """One optimiser step; ``unlabeled`` frames join the batch and learn from the teacher alone."""
        self.net.train()
        labeled = images.shape[0]
        if unlabeled is not None:
            images = torch.cat([images, unlabeled])
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            logits = self.net(images)
            task = self._task_loss(logits[:labeled] if unlabeled is not None else logits, labels)
            parts = {"ce": task}
            loss = task
            if self.distiller is not None:
                self.distiller.teach(images)
                pseudo_term = None
                if unlabeled is not None:
                    pseudo_term, labels = self._pseudo_label_loss(logits[labeled:], labels, parts)
                distill_total, distill_parts = self.distiller.losses(labels)
                loss = self.distiller.task_weight * task + distill_total
                if pseudo_term is not None:
                    loss = loss + pseudo_term
                    self.distiller.last_weighted["pseudo_ce"] = pseudo_term  # the balance check weighs it too
                parts.update(distill_parts)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {self.iteration}; lower optim.lr or "
                                     f"check the distillation weights")
        if self.distiller is not None and is_balance_due(self.iteration, self.start_iteration,
                                                         self.config["train"]["balance_every"]):
            self._check_balance(task)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.distributed and self.distiller is not None:
            self._average_adapter_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    def _pseudo_label_loss(self, logits: torch.Tensor, labels: torch.Tensor, parts: dict):
        """Cross entropy of the unlabeled frames against the teacher's confident classes, weighted; and the batch's
        labels with those pseudo-labels appended, for the losses (ACE) that need labels."""
        from .data.unlabeled import pseudo_labels

        settings = self.unlabeled_settings
        pseudo = pseudo_labels(self.distiller.teacher_probabilities()[labels.shape[0]:], settings["threshold"])
        confident = pseudo != IGNORE_INDEX
        parts["pseudo_share"] = confident.float().mean()
        value = self._task_loss(logits, pseudo) if bool(confident.any()) else logits.sum() * 0.0
        parts["pseudo_ce"] = value.detach()
        return settings["pseudo_weight"] * value, torch.cat([labels, pseudo])

    def _check_balance(self, task: torch.Tensor) -> None:
        """Measure every weighted term against the cross entropy (see :mod:`.distill.balance`); log and warn."""
        from .distill.balance import balance_columns, balance_warnings, format_balance_table, measure_balance

        params = [p for p in self.model.parameters() if p.requires_grad]
        balance = measure_balance(self.distiller.last_weighted, task, params, self.distiller.task_weight)
        self.pending_balance = {"iteration": self.iteration + 1, **balance_columns(balance)}
        if self.rank == 0:
            if self.iteration == self.start_iteration:
                tqdm.write(format_balance_table(balance, self.iteration + 1))
            for line in balance_warnings(balance):
                tqdm.write(f"warning: {line}")

    def _average_adapter_gradients(self) -> None:
        """DDP averages the student's gradients; the distillation adapters live outside it and need the same."""
        for param in self.distiller.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= self.world

    @torch.no_grad()
    def validate(self, limit: int | None = None) -> dict:
        """mIoU on the validation split: network input at ``eval_size``, argmax there, nearest to the label grid."""
        self.model.eval()
        matrix = ConfusionMatrix(self.classes.num_classes, self.classes.ignore_index)
        count = len(self.val_set) if limit is None else min(limit, len(self.val_set))
        indices = range(self.rank, count, self.world)
        for i in tqdm(indices, desc="validate", leave=False, disable=self.rank != 0, mininterval=2.0):
            image, label = self.val_set[i]
            tensor = torch.from_numpy(self.eval_transform.image(image))[None].to(self.device)
            if self.channels_last:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp_dtype):
                logits = self.model(tensor)
            prediction = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
            matrix.update(label, resize_labels(prediction, label.shape))
        if self.distributed:
            counts = torch.from_numpy(matrix.matrix).to(self.device)
            dist.all_reduce(counts)
            matrix.matrix = counts.cpu().numpy()
        return matrix.summary(self.classes.names)

    def _card(self, metrics: dict | None = None) -> dict:
        model_cfg = self.config["model"]
        return model_card(model_name=model_cfg["name"], model_kwargs=model_cfg["kwargs"], classes=self.classes,
                          mean=self.mean, std=self.std, input_size=self.eval_size, config=self.config,
                          metrics=metrics)

    def _save(self, name: str, metrics: dict | None, with_state: bool) -> None:
        if self.rank != 0:
            return
        state = None
        if with_state:
            state = {
                "iteration": self.iteration,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "best_miou": self.best_miou,
                "history": self.history,
                "torch_rng": torch.get_rng_state(),
            }
            if self.distiller is not None:
                state["distiller"] = self.distiller.state_dict()
        save_checkpoint(self.out_dir / name, self._card(metrics), self.model.state_dict(), state)

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary checkpoint files a kill during a save left behind (``last.pt`` itself is intact)."""
        for pattern in (".last.*.tmp.pt", ".best.*.tmp.pt"):
            for stale in self.out_dir.glob(pattern):
                stale.unlink(missing_ok=True)
                print(f"removed {stale.name}, left by an interrupted checkpoint save")

    def _log(self, row: dict) -> None:
        self.history.append(row)
        if self.rank != 0:
            return
        path = self.out_dir / "metrics.csv"
        fields = sorted({key for r in self.history for key in r}, key=lambda k: (k != "iteration", k))
        # Rewritten whole (atomically) so that columns added later (val rows) stay aligned.
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.history)

    def fit(self) -> dict:
        train_cfg = self.config["train"]
        total = train_cfg["iterations"]
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            save_config(self.config, self.out_dir / "config.yaml")
        metrics: dict = {}
        batches = self._labeled_batches()
        unlabeled = self._unlabeled_batches()
        bar = tqdm(total=total, initial=self.iteration, desc="train", disable=self.rank != 0, mininterval=1.0,
                   dynamic_ncols=True)
        running: dict[str, float] = {}
        step_times: list[float] = []
        try:
            while self.iteration < total:
                images, labels = next(batches)
                extra = next(unlabeled) if unlabeled is not None else None
                started = time.perf_counter()
                values = self.train_step(images, labels, extra)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                step_times.append(time.perf_counter() - started)
                self.iteration += 1
                for key, value in values.items():
                    running[key] = running.get(key, 0.0) + value
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if self.pending_balance is not None:
                    self._log(self.pending_balance)
                    self.pending_balance = None
                if is_due(self.iteration, train_cfg["log_every"], total):
                    count = len(step_times)
                    row = {"iteration": self.iteration, "lr": self.scheduler.get_last_lr()[0],
                           "step_s": sum(step_times) / max(1, count)}
                    row.update({key: value / max(1, count) for key, value in running.items()})
                    self._log(row)
                    running, step_times = {}, []
                if is_due(self.iteration, train_cfg["val_every"], total):
                    metrics = self.validate(self.config["data"]["val_limit"])
                    self._log({"iteration": self.iteration, "val_miou": metrics["miou"],
                               "val_pixel_acc": metrics["pixel_acc"]})
                    bar.write(f"iteration {self.iteration}: val mIoU {100 * metrics['miou']:.2f}")
                    if metrics["miou"] > self.best_miou:
                        self.best_miou = metrics["miou"]
                        self._save("best.pt", metrics, with_state=False)
                if is_due(self.iteration, train_cfg["ckpt_every"], total):
                    self._save("last.pt", metrics, with_state=True)
        finally:
            bar.close()
            if self.distiller is not None:
                self.distiller.close()
        result = {"iterations": self.iteration, "final": metrics, "best_miou": self.best_miou,
                  "mean_step_s": _mean([r["step_s"] for r in self.history if "step_s" in r])}
        if self.rank == 0:
            write_json_atomic(self.out_dir / "metrics.json", result)
        if self.distributed:
            dist.destroy_process_group()
        return result


def _mean(values: list[float]) -> float | None:
    """None when there is nothing to average: metrics.json must stay valid JSON (no NaN)."""
    return float(sum(values) / len(values)) if values else None


def load_run_config(run: str | Path) -> dict:
    """The resolved config stored in a run's ``last.pt`` (a run folder or the file itself)."""
    path = Path(run)
    path = path / "last.pt" if path.is_dir() else path
    return load_checkpoint(path)["config"]
