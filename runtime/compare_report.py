"""The files of ``edgeseg compare``: ``compare.json``, ``compare.md`` and one worst-image grid PNG per candidate.

A grid row is one image: the image, the reference's class map, the candidate's, and the disagreement mask (white
where the two differ), so a reader sees at a glance whether a precision step frays boundaries, loses a thin class
or fails on a whole region.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from .atomic_files import write_bytes_atomic, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from .compare import CompareReport, ModelScore
    from .segmenter import Segmenter

TILE_WIDTH = 320
"""Width of one grid tile: enough to see boundaries, small enough that a 4x4 grid stays a few hundred kB."""


def colour_map(class_map: np.ndarray, palette) -> np.ndarray:
    """Class ids -> RGB colours; ids without a colour (the ignore index) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut[: len(colours)] = colours
    return lut[class_map]


def _tile(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    size = (TILE_WIDTH, max(1, round(height * TILE_WIDTH / width)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(tile, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def grid_rows(image: np.ndarray, reference: np.ndarray, candidate: np.ndarray, palette,
              caption: str) -> np.ndarray:
    """One grid row (RGB): image | reference map | candidate map | disagreement mask."""
    mask = np.where((reference != candidate)[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=2)
    tiles = [_tile(image), _tile(colour_map(reference, palette)), _tile(colour_map(candidate, palette)), _tile(mask)]
    for tile, text in zip(tiles, (caption, "reference", "candidate", "disagreement")):
        _caption(tile, text)
    return np.concatenate(tiles, axis=1)


def _file_name(index: int, name: str) -> str:
    return f"worst_{index}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"


def write_grid(path, rows: Sequence[np.ndarray]) -> None:
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0))) for row in rows]
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.concatenate(padded), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding of {path} failed")
    write_bytes_atomic(path, encoded.tobytes())


def write_report(report: CompareReport, dataset, segmenters: Sequence[Segmenter]) -> None:
    """Draw each candidate's worst images (re-segmented, untimed), then write the JSON and the Markdown."""
    report.out.mkdir(parents=True, exist_ok=True)
    palette = segmenters[0].meta.palette
    for position, score in enumerate(report.models[1:], start=1):
        if not score.worst:
            continue
        rows = []
        for entry in score.worst:
            image = dataset.read_image(entry["index"])
            caption = f"{entry['image']} {100 * entry['agreement']:.1f}%"
            rows.append(grid_rows(image, segmenters[0].segment(image), segmenters[position].segment(image), palette,
                                  caption))
        score.grid = _file_name(position, score.name)
        write_grid(report.out / score.grid, rows)
    write_json_atomic(report.out / "compare.json", report_json(report))
    write_text_atomic(report.markdown_path, report_markdown(report))


def _change(score: ModelScore, reference: ModelScore) -> dict[str, float | None]:
    """Per-class IoU change against the reference (None where either side has no IoU for the class)."""
    ours, theirs = score.summary["per_class_iou"], reference.summary["per_class_iou"]
    return {name: None if ours[name] is None or theirs[name] is None else ours[name] - theirs[name] for name in ours}


def report_json(report: CompareReport) -> dict:
    models = []
    for position, score in enumerate(report.models):
        entry = {key: value for key, value in asdict(score).items() if key not in ("summary", "segmenter_info")}
        entry.update(score.segmenter_info)
        entry.update(score.summary)
        entry["ms_per_image"] = 1000.0 * score.seconds / max(1, len(report.images))
        if position:
            entry["miou_change"] = -report.miou_drop(score) / 100.0
            entry["per_class_change"] = _change(score, report.reference)
        models.append(entry)
    return {"dataset": report.dataset, "split": report.split, "images": len(report.images),
            "reference": report.reference.name, "classes": report.classes, "models": models}


def _points(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    value = round(100 * value, 2) + 0.0  # + 0.0: no "-0.00" for a change that rounds to nothing
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def report_markdown(report: CompareReport) -> str:
    reference = report.reference
    lines = [f"# edgeseg compare: {report.dataset} {report.split or ''}".rstrip(), "",
             f"{len(report.images)} images, each at its own resolution; reference: `{reference.name}`. Agreement is "
             "the share of pixels whose class equals the reference's; time is the model's own segment() calls.", "",
             "| model | precision | backend | mIoU % | change | pixel acc % | agreement % | time s | ms/image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for position, score in enumerate(report.models):
        info, summary = score.segmenter_info, score.summary
        change = "ref" if not position else _points(-report.miou_drop(score) / 100, signed=True)
        agreement = "ref" if score.agreement is None else _points(score.agreement)
        lines.append(f"| `{score.name}` | {info['precision']} | {info['backend']} | {_points(summary['miou'])} | "
                     f"{change} | {_points(summary['pixel_acc'])} | {agreement} | {score.seconds:.2f} | "
                     f"{1000 * score.seconds / max(1, len(report.images)):.1f} |")
    lines += ["", "## Per-class IoU % (change against the reference)", "",
              "| class | " + " | ".join(f"`{score.name}`" for score in report.models) + " |",
              "|---|" + "---|" * len(report.models)]
    changes = [_change(score, reference) for score in report.models[1:]]
    for name in report.classes:
        cells = [_points(reference.summary["per_class_iou"][name])]
        cells += [f"{_points(score.summary['per_class_iou'][name])} ({_points(change[name], signed=True)})"
                  for score, change in zip(report.models[1:], changes)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for score in report.models[1:]:
        if not score.worst:
            continue
        listed = ", ".join(f"{entry['image']} ({100 * entry['agreement']:.1f}%)" for entry in score.worst)
        lines += ["", f"## Worst images of `{score.name}` by agreement", "", listed, "",
                  "image | reference | candidate | disagreement (white)", "", f"![worst images]({score.grid})"]
    return "\n".join(lines) + "\n"
