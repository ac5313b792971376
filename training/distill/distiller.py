"""Teacher -> student distillation wired from a config: a frozen teacher, forward hooks, a weighted list of losses.

Config schema (the ``distill`` section of a training config)::

    distill:
      teacher: runs/teacher/best.pt     # an edgeseg checkpoint; frozen, eval mode, no gradients
      teachers: [a.pt, b.pt]            # or an ensemble (instead of teacher): class probabilities are averaged for
                                        # the logits/output taps and the pseudo-labels; feature taps come from the
                                        # first teacher
      task_weight: 1.0                  # weight of the student's own cross entropy (0 turns it off, e.g. for ACE)
      teacher_amp: auto                 # teacher forward dtype: auto (training AMP on CUDA, bf16 on CPUs with
                                        # native bf16), bf16, fp16 or off
      losses:
        - {name: psd, weight: 1000.0, student: [stage2, stage3, stage4], teacher: [stage2, stage3, stage4]}
        - {name: kd, weight: 1.0, student: [logits], teacher: [logits], params: {temperature: 1.0}}
      autoencoder:                      # Knowledge Adaptation only: the teacher-feature autoencoder stage
        iterations: 400
        lr: 0.1
        cache_dir: null                 # default: ~/.cache/edgeseg/autoencoders
      unlabeled: footage.mp4            # unlabeled frames mixed into every batch (edgeseg.training.data.unlabeled)

Every loss owns its training-only adapters, so the student's ``state_dict`` (and its export) never contains them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from edgeseg.runtime.errors import ConfigError
from edgeseg.runtime.atomic_files import file_sha256

from ..amp import autocast, teacher_autocast_dtype
from ..checkpoint import build_model_from_card, card_classes, load_checkpoint
from .hooks import FeatureTaps
from .losses import build_loss

LOSS_KEYS = {"name", "weight", "student", "teacher", "params"}
DISTILL_KEYS = {"teacher", "teachers", "task_weight", "losses", "autoencoder", "teacher_amp", "unlabeled"}
ENSEMBLE_TAPS = {"logits", "output"}  # taps that hold class scores: the ones an ensemble can average
# ``stride`` 2 halves the code's resolution: with a teacher feature at half the student's output stride (the paper's
# large-output-stride students) it brings the teacher to the student's grid and cuts the encoder's cost by four.
AUTOENCODER_DEFAULTS = {"iterations": 400, "lr": 0.1, "cache_dir": None, "batch_size": 8, "stride": 1}
AUTOENCODER_SEED = 0


def _as_list(value, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise ConfigError(f"{where} must be a layer name or a non-empty list of layer names, got {value!r}")
    return value


class Distiller:
    """Runs the teacher beside the student and turns their tapped layers into the weighted distillation loss."""

    def __init__(self, config: dict, *, student: nn.Module, classes, device: torch.device,
                 amp_dtype: torch.dtype | None, out_dir: Path, train_set=None, train_transform=None) -> None:
        if not isinstance(config, dict) or ("teacher" in config) == ("teachers" in config):
            raise ConfigError("distill needs a 'teacher' checkpoint path or a 'teachers' list (one of the two)")
        unknown = set(config) - DISTILL_KEYS
        if unknown:
            raise ConfigError(f"unknown distill keys {sorted(unknown)}; expected {', '.join(sorted(DISTILL_KEYS))}")
        self.device, self.amp_dtype = device, amp_dtype
        self.teacher_dtype = teacher_autocast_dtype(config.get("teacher_amp", "auto"), device, amp_dtype)
        self.task_weight = float(config.get("task_weight", 1.0))
        paths = config["teachers"] if "teachers" in config else [config["teacher"]]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise ConfigError(f"distill.teachers must be a non-empty list of checkpoint paths, got {paths!r}")
        self.teachers = [self._load_teacher(Path(path), classes) for path in paths]
        self.teacher, self.teacher_path = self.teachers[0], Path(paths[0])
        self.teacher_name = self.teacher.edgeseg_name

        specs = config.get("losses") or []
        if not specs:
            raise ConfigError("distill.losses is empty: list at least one loss")
        self.specs = [self._check_spec(spec, i) for i, spec in enumerate(specs)]
        student_names = sorted({n for s in self.specs for n in s["student"]})
        teacher_names = sorted({n for s in self.specs for n in s["teacher"]})
        self.student_taps = FeatureTaps(student, student_names)
        self.teacher_taps = FeatureTaps(self.teacher, teacher_names)
        # An ensemble averages what is a class distribution; the other teachers need only those taps.
        self.ensemble_names = [n for n in teacher_names if n in ENSEMBLE_TAPS] if len(self.teachers) > 1 else []
        self.extra_taps = [FeatureTaps(t, self.ensemble_names) for t in self.teachers[1:] if self.ensemble_names]
        self.teacher_output: torch.Tensor | None = None
        student_channels, teacher_channels = self._probe_channels(student, train_transform)
        self.teacher_channels = teacher_channels
        self.autoencoder_stats: dict[str, dict[str, float]] = {}
        self.last_weighted: dict[str, torch.Tensor] = {}
        self.criteria = nn.ModuleList()
        for spec in self.specs:
            try:
                loss = build_loss(spec["name"], student_channels=[student_channels[n] for n in spec["student"]],
                                  teacher_channels=[teacher_channels[n] for n in spec["teacher"]],
                                  **spec["params"])
            except (ValueError, TypeError) as err:
                raise ConfigError(f"distill loss {spec['name']!r}: {err}") from err
            self.criteria.append(loss.to(device))
        self._prepare_autoencoders(config.get("autoencoder") or {}, train_set, train_transform)

    # ---------------------------------------------------------------------------------------------- set-up
    def _load_teacher(self, path: Path, classes) -> nn.Module:
        card = load_checkpoint(path)
        teacher_classes = card_classes(card)
        if tuple(teacher_classes.names) != tuple(classes.names):
            raise ConfigError(f"teacher {path} predicts {list(teacher_classes.names)} but the student trains on "
                              f"{list(classes.names)}")
        teacher = build_model_from_card(card).to(self.device).eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        teacher.edgeseg_name = card["model"]["name"]
        return teacher

    @staticmethod
    def _check_spec(spec: dict, index: int) -> dict:
        where = f"distill.losses[{index}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"{where} must be a mapping with at least a 'name'")
        unknown = set(spec) - LOSS_KEYS
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(LOSS_KEYS)}")
        student = _as_list(spec.get("student", "logits"), f"{where}.student")
        teacher = _as_list(spec.get("teacher", student), f"{where}.teacher")
        if len(student) != len(teacher):
            raise ConfigError(f"{where} pairs {len(student)} student layers with {len(teacher)} teacher layers")
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.params must be a mapping")
        return {"name": spec["name"], "weight": float(spec.get("weight", 1.0)), "student": student,
                "teacher": teacher, "params": params}

    @torch.no_grad()
    def _probe_channels(self, student: nn.Module, transform) -> tuple[dict[str, int], dict[str, int]]:
        """One forward pass of both networks on a blank crop tells every tapped layer's channel count."""
        height, width = transform.crop_size if transform is not None else (64, 64)
        probe = torch.zeros(1, 3, height, width, device=self.device)
        was_training = student.training
        student.eval()
        student(probe)
        student.train(was_training)
        self.teacher(probe)
        channels = ({n: t.shape[1] for n, t in self.student_taps.outputs.items()},
                    {n: t.shape[1] for n, t in self.teacher_taps.outputs.items()})
        self.student_taps.clear()
        self.teacher_taps.clear()
        return channels

    def _prepare_autoencoders(self, config: dict, train_set, transform) -> None:
        """Train (or load from cache) the teacher-feature autoencoder of every loss that needs one.

        As in the paper, the autoencoder is pre-trained once per teacher, with its own fixed seed: students trained
        with different seeds share it, and only the student's training varies between them.
        """
        needing = [(spec, loss) for spec, loss in zip(self.specs, self.criteria) if hasattr(loss, "set_encoder")]
        if not needing:
            return
        unknown = set(config) - set(AUTOENCODER_DEFAULTS)
        if unknown:
            raise ConfigError(f"unknown distill.autoencoder keys {sorted(unknown)}")
        settings = {**AUTOENCODER_DEFAULTS, **config}
        cache_dir = Path(settings["cache_dir"] or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                         / "edgeseg" / "autoencoders")
        digest = file_sha256(self.teacher_path)[:16]
        # Everything else that shapes the trained encoder, so that a changed setting never loads a stale one.
        recipe = json.dumps({"settings": {k: v for k, v in settings.items() if k != "cache_dir"},
                             "seed": AUTOENCODER_SEED, "teacher_dtype": str(self.teacher_dtype),
                             "data": repr(train_set), "crop": getattr(transform, "crop_size", None),
                             "base": getattr(transform, "base_size", None),
                             "scale": getattr(transform, "scale_range", None)}, sort_keys=True, default=str)
        recipe_digest = hashlib.sha256(recipe.encode()).hexdigest()[:8]
        for spec, loss in needing:
            layer = spec["teacher"][-1]
            latent = int(loss.latent_channels)
            name = f"{self.teacher_name}-{digest}-{layer}-{latent}-{recipe_digest}.pt"
            cache = cache_dir / name
            loss.set_encoder(self._autoencoder(cache, layer, latent, settings, train_set, transform))

    def _autoencoder(self, cache: Path, layer: str, latent: int, settings: dict, train_set, transform):
        from edgeseg.runtime.atomic_files import atomic_path

        from ..data.dataset import SegmentationTorchDataset, make_loader
        from .autoencoder import FeatureAutoencoder, code_statistics, train_autoencoder

        def teacher_features(loader):
            while True:
                for images, _ in loader:
                    with torch.no_grad(), autocast(self.device, self.teacher_dtype):
                        self.teacher(images.to(self.device))
                    (feature,) = self.teacher_taps.take([layer])
                    self.teacher_taps.clear()
                    yield feature.float()

        def feature_loader():
            if train_set is None:
                raise ConfigError("Knowledge Adaptation needs training data to fit its autoencoder")
            dataset = SegmentationTorchDataset(train_set, transform, seed=AUTOENCODER_SEED + 7919)
            sampler = torch.utils.data.RandomSampler(dataset,
                                                     generator=torch.Generator().manual_seed(AUTOENCODER_SEED))
            return make_loader(dataset, sampler, settings["batch_size"], workers=0, drop_last=True)

        if cache.is_file():
            state = torch.load(cache, map_location="cpu", weights_only=True)
            channels = state["channels"]
            model = FeatureAutoencoder(channels, latent, stride=state.get("stride", 1))
            model.load_state_dict(state["state_dict"])
            print(f"autoencoder for teacher layer {layer!r}: loaded from {cache}")
        else:
            print(f"autoencoder for teacher layer {layer!r}: training ({settings['iterations']} iterations), "
                  f"cache {cache}")
            channels = self.teacher_channels[layer]
            model = train_autoencoder(teacher_features(feature_loader()), channels, latent,
                                      iterations=settings["iterations"], lr=settings["lr"], device=self.device,
                                      stride=int(settings["stride"]))
            with atomic_path(cache) as tmp:
                torch.save({"channels": channels, "stride": model.stride, "state_dict": model.state_dict()}, tmp)
        model.to(self.device).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        if train_set is not None:
            stats = code_statistics(model, next(teacher_features(feature_loader())))
            self.autoencoder_stats[layer] = stats
            print(f"autoencoder for teacher layer {layer!r}: relative reconstruction error "
                  f"{stats['relative_error']:.3f}, positions with an all-zero code {100 * stats['zero_codes']:.1f}%")
        return model.encoder

    # ---------------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def teach(self, images: torch.Tensor) -> None:
        """Run the teacher(s) on the batch the student just saw: their taps feed :meth:`losses`, their output
        :meth:`teacher_probabilities`. An ensemble's class-distribution taps become the log of the mean softmax."""
        with autocast(self.device, self.teacher_dtype):
            outputs = [teacher(images).float() for teacher in self.teachers]
        self.teacher_output = outputs[0] if len(outputs) == 1 else torch.log(_mean_softmax(outputs))
        for name in self.ensemble_names:
            maps = [self.teacher_taps.outputs[name], *(taps.outputs[name] for taps in self.extra_taps)]
            self.teacher_taps.outputs[name] = torch.log(_mean_softmax(maps))
        for taps in self.extra_taps:
            taps.clear()

    def teacher_probabilities(self) -> torch.Tensor:
        """Class probabilities of the teacher (or the ensemble's mean) at the input resolution, last batch."""
        if self.teacher_output is None:
            raise RuntimeError("teach() has not run on this batch")
        return torch.softmax(self.teacher_output, dim=1)

    def losses(self, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted distillation loss for the batch the student and :meth:`teach` just ran on.

        Each weighted term, still attached to the graph, is kept in ``last_weighted`` for the loss-balance check.
        """
        total = labels.new_zeros((), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        for spec, criterion in zip(self.specs, self.criteria):
            student = [t.float() for t in self.student_taps.take(spec["student"])]
            teacher = [t.float() for t in self.teacher_taps.take(spec["teacher"])]
            with torch.autocast(self.device.type, enabled=False):
                value = criterion(student, teacher, labels)
            key = spec["name"] if spec["name"] not in parts else f"{spec['name']}_{len(parts)}"
            parts[key] = value.detach()
            weighted[key] = spec["weight"] * value
            total = total + weighted[key]
        self.last_weighted = weighted
        self.student_taps.clear()
        self.teacher_taps.clear()
        self.teacher_output = None
        return total, parts

    def parameters(self):
        return self.criteria.parameters()

    def state_dict(self) -> dict:
        return self.criteria.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.criteria.load_state_dict(state)

    def close(self) -> None:
        self.student_taps.close()
        self.teacher_taps.close()
        for taps in self.extra_taps:
            taps.close()


def _mean_softmax(maps: list[torch.Tensor]) -> torch.Tensor:
    """Average class probabilities of several teachers, each resized (bilinear) to the first one's grid."""
    size = maps[0].shape[-2:]
    total = torch.zeros_like(maps[0], dtype=torch.float32)
    for logits in maps:
        logits = logits.float()
        if logits.shape[-2:] != size:
            logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        total += torch.softmax(logits, dim=1)
    return (total / len(maps)).clamp_min(1e-12)
