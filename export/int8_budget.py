"""INT8 within an accuracy budget: ``edgeseg export --precision int8 --max-drop POINTS``.

Full INT8 can cost a student more mIoU than a deployment accepts, usually because of a few layers (a thin
projection, an attention gate) whose activations 8 bits resolve badly. The search here keeps just those in float:

1. score the unquantised FP32 graph and the full INT8 graph through the runtime on labelled check images that are
   not calibration images (:func:`load_check_set` drops any image whose pixels equal a calibration image's);
2. if INT8 loses more than the budget, rank the layers (:func:`~.precision.layer_groups`) by how much pixel
   agreement with FP32 comes back when only that layer stays in float, on a few check images (agreement counts
   every pixel, so it ranks smoothly where the mIoU of a handful of images jumps);
3. keep the highest-ranked layers in float, one more at a time, until the check mIoU is within the budget, or
   fail when :data:`MAX_FLOAT_SHARE` of the layers are in float and it still is not.

Kept layers are excluded from ONNX Runtime's quantisation (``nodes_to_exclude``), so the file stays one Q/DQ graph
that ONNX Runtime runs and TensorRT builds as a partially quantised strongly typed network, in either scheme.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter

import numpy as np
import onnx

from edgeseg.runtime.classes import ClassSpec
from edgeseg.runtime.errors import DataError, EdgesegError
from edgeseg.runtime.atomic_files import write_text_atomic
from edgeseg.runtime.metadata import ModelMeta
from edgeseg.runtime.metrics import ConfusionMatrix
from edgeseg.runtime.segmenter import Segmenter

from .onnx_graph import set_metadata
from .precision import Int8Quantizer, layer_groups

MAX_FLOAT_SHARE = 0.5
"""The search keeps at most this share of the quantised layers in float: past half of them most of INT8's speed-up
is gone, and FP16 (or a better calibration set) is the honest answer."""

SENSITIVITY_IMAGES = 8
"""Check images the layer ranking is measured on (each layer costs one quantisation and this many inferences)."""

LATENCY_RUNS = 10
"""Timed inferences per graph for the latency ratio, FP32 and INT8 interleaved so that load drift hits both."""


class Int8BudgetError(EdgesegError):
    """INT8 misses the ``--max-drop`` budget even with the most layers the search may keep in float."""


def image_digest(image: np.ndarray) -> str:
    return hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).hexdigest()


@dataclass
class CheckSet:
    """Labelled images the budget is measured on, none of them a calibration image."""

    spec: str
    images: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]
    classes: ClassSpec
    overlap: int
    """Images of the requested ones left out because a calibration image has the same pixels."""


def load_check_set(spec: str, split: str, count: int | None, calibration: list[np.ndarray]) -> CheckSet:
    """``count`` labelled images spread over ``spec``'s ``split`` (all without ``count``), calibration images out."""
    from edgeseg.runtime.datasets import open_dataset

    dataset = open_dataset(spec, split)
    total = len(dataset) if count is None else min(count, len(dataset))
    indices = dict.fromkeys(np.linspace(0, len(dataset) - 1, num=total).round().astype(int).tolist())
    calibrated = {image_digest(image) for image in calibration}
    check = CheckSet(f"{spec} ({split})", [], [], [], dataset.classes, 0)
    for index in indices:
        image, label = dataset[index]
        if image_digest(image) in calibrated:
            check.overlap += 1
            continue
        check.images.append(image)
        check.labels.append(label)
        check.names.append(dataset.paths(index)[0].name)
    if not check.images:
        raise DataError(f"all {len(indices)} check images of {check.spec} are calibration images: the budget must be "
                        "measured on other images (--check-data, or --calib-split another split)")
    return check


@dataclass
class Scored:
    """One graph scored on the check set: its file, mIoU (0-1) and class maps."""

    path: Path
    miou: float
    maps: list[np.ndarray]


class Int8Budget:
    """The search of the module docstring for one export; :meth:`fit` is called by :func:`~.onnx_export.export_onnx`.

    Args:
        max_drop: mIoU points (percent) INT8 may lose against FP32 on the check set.
        check: The check set (:func:`load_check_set`).
        log: Where progress lines go.
    """

    def __init__(self, max_drop: float, check: CheckSet, log: Callable[[str], None]) -> None:
        self.max_drop, self.check, self.log = max_drop, check, log

    def _score(self, graph: onnx.ModelProto, meta: ModelMeta, path: Path, count: int | None = None) -> Scored:
        set_metadata(graph, meta)
        onnx.save(graph, str(path))
        images = self.check.images[:count]
        matrix = ConfusionMatrix(self.check.classes.num_classes, ignore_index=self.check.classes.ignore_index)
        with Segmenter.load(path, device="cpu") as segmenter:
            maps = [segmenter.segment(image) for image in images]
        for label, class_map in zip(self.check.labels, maps):
            matrix.update(label, class_map)
        return Scored(path, matrix.miou(), maps)

    def _drop(self, fp32: Scored, int8: Scored) -> float:
        return 100.0 * (fp32.miou - int8.miou)

    def rank_layers(self, quantizer: Int8Quantizer, groups: dict[str, list[str]], meta: ModelMeta, fp32: Scored,
                    workdir: Path) -> list[tuple[str, float]]:
        """Layers by the pixel agreement with FP32 regained when each alone stays float, most first."""
        count = min(SENSITIVITY_IMAGES, len(self.check.images))

        def agreement(scored: Scored) -> float:
            return float(np.mean([np.mean(a == b) for a, b in zip(scored.maps, fp32.maps[:count])]))

        full = agreement(self._score(quantizer.quantize()[0], meta, workdir / "sensitivity.onnx", count))
        gains = [(layer, agreement(self._score(quantizer.quantize(nodes)[0], meta, workdir / "sensitivity.onnx",
                                               count)) - full) for layer, nodes in groups.items()]
        return sorted(gains, key=lambda item: -item[1])  # stable: ties keep graph order

    def fit(self, quantizer: Int8Quantizer, fp32_graph: onnx.ModelProto, meta: ModelMeta,
            workdir: Path) -> tuple[onnx.ModelProto, list[str]]:
        """The INT8 graph within the budget and its float nodes; records the outcome in ``meta.extra``.

        Raises:
            Int8BudgetError: the budget does not hold with :data:`MAX_FLOAT_SHARE` of the layers in float.
        """
        check, budget = self.check, self.max_drop
        fp32 = self._score(fp32_graph, replace(meta, precision="fp32", extra={}), workdir / "fp32_check.onnx")
        graph, excluded = quantizer.quantize()
        int8 = full = self._score(graph, meta, workdir / "int8_check.onnx")
        self.log(f"int8 budget: on {len(check.images)} check images of {check.spec} (none used for calibration): "
                 f"FP32 mIoU {100 * fp32.miou:.2f}, full INT8 {100 * full.miou:.2f} "
                 f"(drop {self._drop(fp32, full):.2f}, budget {budget:g})")
        groups = layer_groups(quantizer.prepared, quantizer.boundary)
        kept: list[str] = []
        if self._drop(fp32, full) > budget:
            cap = math.ceil(MAX_FLOAT_SHARE * len(groups))
            ranking = self.rank_layers(quantizer, groups, meta, fp32, workdir)
            self.log("  most sensitive layers (agreement with FP32 regained when kept float): "
                     + ", ".join(f"{layer} {100 * gain:+.2f}%" for layer, gain in ranking[:5]))
            for layer, _ in ranking[:cap]:
                kept.append(layer)
                graph, excluded = quantizer.quantize([node for name in kept for node in groups[name]])
                int8 = self._score(graph, meta, workdir / "int8_check.onnx")
                self.log(f"  + {layer} in float: INT8 mIoU {100 * int8.miou:.2f} (drop {self._drop(fp32, int8):.2f})")
                if self._drop(fp32, int8) <= budget:
                    break
            else:
                raise Int8BudgetError(
                    f"INT8 loses {self._drop(fp32, int8):.2f} mIoU points on {len(check.images)} images of "
                    f"{check.spec} with {len(kept)} of {len(groups)} layers kept in float (the cap, "
                    f"{MAX_FLOAT_SHARE:.0%}), over the --max-drop {budget:g} budget; nothing written: export fp16, "
                    "or calibrate on more images")
        ratio = latency_ratio(fp32.path, int8.path, check.images[0], meta.batch or 1)
        meta.extra["int8_budget"] = {
            "max_drop": budget, "fp32_miou": fp32.miou, "full_int8_miou": full.miou, "int8_miou": int8.miou,
            "kept_layers": kept, "layers": len(groups), "latency_ratio": ratio, "check_data": check.spec,
            "check_images": check.names, "calibration_overlap_dropped": check.overlap,
        }
        self.log(f"int8 budget holds: INT8 mIoU {100 * int8.miou:.2f} vs FP32 {100 * fp32.miou:.2f} "
                 f"(drop {self._drop(fp32, int8):.2f} <= {budget:g}); kept in float: {', '.join(kept) or 'none'}; "
                 f"latency INT8/FP32 {ratio:.2f}x (ONNX Runtime CPU)")
        return graph, excluded


def latency_ratio(fp32_path: Path, int8_path: Path, image: np.ndarray, batch: int) -> float:
    """Median INT8 over median FP32 inference time on this CPU (backend only, pre/post-processing excluded)."""
    with Segmenter.load(fp32_path, device="cpu") as fp32, Segmenter.load(int8_path, device="cpu") as int8:
        inputs = fp32.prepare([image] * batch)
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for run in range(LATENCY_RUNS + 1):
            for name, segmenter in (("fp32", fp32), ("int8", int8)):
                started = perf_counter()
                segmenter.run(inputs)
                if run:  # the first run of each warms up
                    times[name].append(perf_counter() - started)
    return statistics.median(times["int8"]) / statistics.median(times["fp32"])


def write_budget_report(folder: str | Path, outcome: dict, calibration: str) -> Path:
    """``int8_budget.md`` in ``folder``: the figures of ``meta.extra["int8_budget"]`` for a reader."""
    kept = outcome["kept_layers"]
    lines = [
        "# INT8 within an mIoU budget", "",
        f"Check data: {len(outcome['check_images'])} images of {outcome['check_data']}; calibration: {calibration}. "
        f"No check image is a calibration image (compared by pixels; {outcome['calibration_overlap_dropped']} "
        "dropped).", "",
        "| graph | mIoU % | drop (points) |", "|---|---|---|",
        f"| FP32 | {100 * outcome['fp32_miou']:.2f} | |",
        f"| INT8, all layers | {100 * outcome['full_int8_miou']:.2f} | "
        f"{100 * (outcome['fp32_miou'] - outcome['full_int8_miou']):.2f} |",
        f"| INT8, {len(kept)} kept in float | {100 * outcome['int8_miou']:.2f} | "
        f"{100 * (outcome['fp32_miou'] - outcome['int8_miou']):.2f} |", "",
        f"Budget: {outcome['max_drop']:g} points. Layers kept in float ({len(kept)} of {outcome['layers']}): "
        f"{', '.join(kept) or 'none'}.", "",
        f"Latency INT8 / FP32 on this CPU (ONNX Runtime): {outcome['latency_ratio']:.2f}x.", "",
        "Check images: " + ", ".join(outcome["check_images"]), "",
    ]
    path = Path(folder) / "int8_budget.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "\n".join(lines))
