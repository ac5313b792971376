"""``edgeseg compare``: what a deployment step costs, per class and per image, against a reference model.

Every artefact (checkpoint, ONNX at any precision or fusion, engine, ``triton://``) is scored through the same
:class:`~edgeseg.runtime.segmenter.Segmenter` stages, one image at a time at the image's own resolution, so that
the only difference between two rows is the artefact itself. The first model is the reference: each candidate gets
its per-class IoU change and its pixel agreement with the reference's class maps, and the images on which it
disagrees most are drawn in a grid (see :mod:`.compare_report`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .errors import ConfigError, ModelFormatError
from .evaluate import check_classes_match
from .metrics import ConfusionMatrix
from .segmenter import Segmenter


@dataclass
class ModelScore:
    """One artefact's scores; the agreement fields stay None for the reference."""

    name: str
    path: str
    segmenter_info: dict
    summary: dict
    seconds: float = 0.0
    agreement: float | None = None
    image_agreement: list[float] = field(default_factory=list)
    worst: list[dict] = field(default_factory=list)
    grid: str | None = None


@dataclass
class CompareReport:
    """The comparison as written to ``compare.json`` and ``compare.md`` (see :func:`compare_models`)."""

    dataset: str
    split: str | None
    images: list[str]
    classes: list[str]
    models: list[ModelScore]
    out: Path

    @property
    def markdown_path(self) -> Path:
        return self.out / "compare.md"

    @property
    def reference(self) -> ModelScore:
        return self.models[0]

    def miou_drop(self, score: ModelScore) -> float:
        """mIoU points (percent) ``score`` loses against the reference; negative when it gains."""
        return 100.0 * (self.reference.summary["miou"] - score.summary["miou"])

    def budget_failures(self, max_drop: float) -> list[str]:
        """One line per candidate whose mIoU drop exceeds ``max_drop`` points."""
        return [f"{score.name} loses {self.miou_drop(score):.2f} mIoU points against {self.reference.name} "
                f"(limit {max_drop:g})" for score in self.models[1:] if self.miou_drop(score) > max_drop]

    def summary_line(self) -> str:
        return "; ".join(f"{s.name}: mIoU {100 * s.summary['miou']:.2f} ({round(-self.miou_drop(s), 2) + 0.0:+.2f}), "
                         f"agreement {100 * (s.agreement or 0.0):.2f}%" for s in self.models[1:])


def _label(path: str, taken: set[str]) -> str:
    """A short unique name for a model in tables and file names: its file name, numbered when repeated."""
    name = path.rstrip("/").rsplit("/", 1)[-1] or path
    label, number = name, 2
    while label in taken:
        label, number = f"{name}#{number}", number + 1
    taken.add(label)
    return label


def _info(segmenter: Segmenter) -> dict:
    return {"model": segmenter.meta.model, "precision": segmenter.meta.precision, "backend": segmenter.backend.name,
            "device": segmenter.backend.device, "fused_post": segmenter.meta.fused_post}


def compare_models(models: Sequence[str | Path], dataset, out: str | Path, *, worst: int = 4,
                   limit: int | None = None, backend: str = "auto", device: str = "auto",
                   progress: bool | None = None) -> CompareReport:
    """Score ``models`` on ``dataset`` against the first one and write ``out/compare.{md,json}`` and the grids.

    Args:
        models: Two or more artefacts, reference first (a ``.pt`` needs ``edgeseg.training.inference`` imported).
        dataset: An ``open_dataset`` result (or anything with its interface and ``paths``).
        out: Report folder, created when missing.
        worst: Images per candidate in its worst-agreement grid (0: no grid).
        limit: Score only the first ``limit`` images.
        backend, device: As for :meth:`Segmenter.load`, for every model.
        progress: Progress bar on stderr; None shows it only on a terminal.
    """
    from .compare_report import write_report

    if len(models) < 2:
        raise ConfigError(f"compare needs a reference and at least one candidate, got {len(models)} model(s)")
    if worst < 0:
        raise ConfigError(f"--worst must be 0 or more, got {worst}")
    count = len(dataset) if limit is None else min(int(limit), len(dataset))
    taken: set[str] = set()
    with contextlib.ExitStack() as stack:
        segmenters = [stack.enter_context(Segmenter.load(str(m), backend=backend, device=device)) for m in models]
        for path, segmenter in zip(models, segmenters):
            check_classes_match(segmenter, dataset)
            if list(segmenter.meta.classes) != list(segmenters[0].meta.classes):
                raise ModelFormatError(f"{path} names other classes than the reference {models[0]}: "
                                       f"{segmenter.meta.classes} vs {segmenters[0].meta.classes}")
        scores = [ModelScore(_label(str(m), taken), str(m), _info(s), {}) for m, s in zip(models, segmenters)]
        matrices = [ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index) for _ in models]
        equal = [0] * len(models)
        pixels = 0
        for index in tqdm(range(count), desc="compare", unit="img", file=sys.stderr, leave=False,
                          disable=None if progress is None else not progress):
            image, label = dataset[index]
            maps = []
            for score, segmenter, matrix in zip(scores, segmenters, matrices):
                started = perf_counter()
                class_map = segmenter.segment(image)
                score.seconds += perf_counter() - started
                matrix.update(label, class_map)
                maps.append(class_map)
            pixels += maps[0].size
            for position in range(1, len(models)):
                same = int(np.count_nonzero(maps[position] == maps[0]))
                equal[position] += same
                scores[position].image_agreement.append(same / maps[0].size)
        names = [dataset.paths(index)[0].name for index in range(count)]
        for position, (score, matrix) in enumerate(zip(scores, matrices)):
            score.summary = matrix.summary(dataset.classes.names)
            if position:
                score.agreement = equal[position] / max(1, pixels)
                order = np.argsort(score.image_agreement, kind="stable")[:worst]
                score.worst = [{"index": int(i), "image": names[i], "agreement": score.image_agreement[i]}
                               for i in order]
        report = CompareReport(dataset.name, getattr(dataset, "split", None), names,
                               list(dataset.classes.names), scores, Path(out))
        write_report(report, dataset, segmenters)
    return report


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="two or more .pt/.onnx/.engine/triton:// models; the first is the reference")
    parser.add_argument("--data", required=True, metavar="DATASET[:ROOT]",
                        help="labelled images, e.g. camvid (embedded sample) or cityscapes:/data/cityscapes")
    parser.add_argument("--split", default="val", help="dataset split (default: val)")
    parser.add_argument("--out", default="compare", metavar="DIR",
                        help="report folder: compare.md, compare.json, worst-image grids (default: compare)")
    parser.add_argument("--max-drop", type=float, metavar="POINTS",
                        help="exit 1 when a candidate's mIoU is more than POINTS percentage points below the reference")
    parser.add_argument("--worst", type=int, default=4, metavar="K",
                        help="images per candidate in the worst-agreement grid (default: 4; 0: none)")
    parser.add_argument("--limit", type=int, metavar="N", help="compare on the first N images only")
    parser.add_argument("--backend", default="auto", help="backend for every model (default: auto, by suffix)")
    parser.add_argument("--device", default="auto", help="device for every model (default: auto)")


def run_compare(args: argparse.Namespace) -> int:
    from .datasets import open_dataset

    if args.max_drop is not None and args.max_drop < 0:
        raise ConfigError(f"--max-drop is a number of mIoU points, 0 or more; got {args.max_drop}")
    report = compare_models(args.models, open_dataset(args.data, args.split), args.out, worst=args.worst,
                            limit=args.limit, backend=args.backend, device=args.device)
    print(f"wrote {report.markdown_path} ({len(report.images)} images): {report.summary_line()}")
    failures = report.budget_failures(args.max_drop) if args.max_drop is not None else []
    if failures:
        print(f"edgeseg compare: error: {failures[0]}" + (f" (+{len(failures) - 1} more)" if len(failures) > 1
                                                          else ""), file=sys.stderr)
        return 1
    return 0
