"""Temporal stability of students on real footage: flicker, and agreement with a reference model, frame by frame.

``python benchmarks/flicker.py NAME=MODEL [NAME=MODEL ...] [--reference NAME] [--video CLIP]``

Every model (checkpoint or export, through the runtime's Segmenter) segments every frame of the clip, which has no
labels. Flicker is the share of pixels whose class changes between consecutive frames (the runtime's FlickerMeter,
the figure ``edgeseg video`` reports); agreement is the share of pixels holding the reference model's class. A
steadier student is not a better one by itself: a model that calls everything Road never flickers, so read flicker
beside agreement. Models named ``<arm>_s<seed>`` (one sweep's runs) also get each arm's paired difference from
``plain`` by seed, with its 95% interval: the sweep's students checked on footage none of them was tuned on.
-> ``benchmarks/results/flicker.{md,json}``
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic
from edgeseg.runtime.datasets import data_path
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.sizes import parse_size
from edgeseg.runtime.video.sources import open_source
from edgeseg.runtime.video.stats import FlickerMeter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import header_lines, provenance  # noqa: E402
from stats import paired  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def read_frames(video: str, limit: int | None) -> list[np.ndarray]:
    """The clip's frames as RGB (a short clip: held in memory so that every model sees the same pixels)."""
    with open_source(video) as source:
        frames = [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for _, frame in zip(range(limit or 10**9), source)]
    if not frames:
        raise SystemExit(f"error: {video} gave no frames")
    return frames


def class_maps(model: str, frames: list[np.ndarray], name: str,
               size: tuple[int, int] | None) -> tuple[list[np.ndarray], list[str]]:
    if model.endswith(".pt"):
        import edgeseg.training.inference  # noqa: F401  (registers the checkpoint backend)
    segmenter = Segmenter.load(model, size=size)
    maps = [segmenter.segment(frame) for frame in tqdm(frames, desc=name, leave=False)]
    return maps, list(segmenter.meta.classes)


def stability(maps: list[np.ndarray], names: list[str], reference: list[np.ndarray] | None) -> dict:
    meter = FlickerMeter()
    for class_map in maps:
        meter.add(class_map)
    row = meter.summary(names)
    if reference is not None:
        row["agreement"] = round(float(np.mean([(a == b).mean() for a, b in zip(maps, reference)])), 6)
    return row


def paired_by_seed(rows: list[dict], reference: str = "plain") -> list[dict]:
    """Per arm, agreement and flicker minus the ``reference`` arm's, paired by seed (``<arm>_s<seed>`` names)."""
    by_arm: dict[str, dict[int, dict]] = {}
    for row in rows:
        match = re.fullmatch(r"(.+)_s(\d+)", row["model"])
        if match:
            by_arm.setdefault(match[1], {})[int(match[2])] = row
    if reference not in by_arm:
        return []
    pairs = []
    for arm, seeds in by_arm.items():
        if arm == reference:
            continue
        entry = {"arm": arm, "versus": reference}
        for figure in ("agreement", "overall"):
            values = {seed: row[figure] for seed, row in seeds.items() if figure in row}
            base = {seed: row[figure] for seed, row in by_arm[reference].items() if figure in row}
            entry[figure] = paired(values, base)
        pairs.append(entry)
    return pairs


def _interval(result: dict) -> str:
    if result["diff"] is None:
        return "n/a"
    text = f"{100 * result['diff']:+.2f}"
    return text + (f" [{100 * result['ci'][0]:+.2f}, {100 * result['ci'][1]:+.2f}]" if result["ci"] else "")


def write_report(record: dict, out: Path) -> None:
    names = record["classes"]
    lines = ["# Flicker on real footage", "", *header_lines(record), "",
             f"Clip: `{record['video']}`, {record['frames']} frames, no labels, network input: "
             f"{record['network_size']}. Flicker: share of pixels whose class "
             "changes between consecutive frames (lower is steadier); agreement: share of pixels with the "
             f"reference model's class (reference: {record['reference'] or 'none'}). Read them together: a model "
             "that predicts one class everywhere never flickers.", "",
             "| model | flicker % | agreement with reference % | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for row in record["rows"]:
        agreement = f"{100 * row['agreement']:.2f}" if "agreement" in row else ""
        per_class = " | ".join("" if row["per_class"][n] is None else f"{100 * row['per_class'][n]:.1f}"
                               for n in names)
        lines.append(f"| {row['model']} | {100 * row['overall']:.2f} | {agreement} | {per_class} |")
    lines += ["", "Per class: the share of the pixels of that class in one frame that hold another class in the next."]
    if record.get("paired"):
        lines += ["", "Each arm against `plain`, paired by seed (percentage points, mean difference [95% t "
                      "interval]; an interval containing 0 is no evidence either way):", "",
                  "| arm | pairs | agreement difference | flicker difference |", "|---|---:|---|---|"]
        for entry in record["paired"]:
            lines.append(f"| {entry['arm']} | {entry['agreement']['n']} | {_interval(entry['agreement'])} | "
                         f"{_interval(entry['overall'])} |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json_atomic(out.with_suffix(".json"), record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL", help="a label and a checkpoint or export")
    parser.add_argument("--reference", help="the NAME whose classes the others' agreement is measured against")
    parser.add_argument("--video", help="clip to segment (default: $EDGESEG_DATA/video/solidWhiteRight.mp4)")
    parser.add_argument("--limit", type=int, help="first N frames only")
    parser.add_argument("--size", type=parse_size,
                        help="network input HxW for dynamic exports (default: each model's own input size)")
    parser.add_argument("--out", type=Path, default=RESULTS / "flicker", help="results path without suffix")
    args = parser.parse_args(argv)
    models = dict(item.split("=", 1) for item in args.models)
    if args.reference is not None and args.reference not in models:
        parser.error(f"--reference {args.reference} is not one of {', '.join(models)}")
    video = args.video or str(data_path("video/solidWhiteRight.mp4"))
    frames = read_frames(video, args.limit)
    outputs = {name: class_maps(path, frames, name, args.size) for name, path in models.items()}
    reference = outputs[args.reference][0] if args.reference else None
    rows = [{"model": name, "path": models[name], **stability(maps, names, None if name == args.reference
                                                               else reference)}
            for name, (maps, names) in outputs.items()]
    record = {**provenance("benchmarks/flicker.py", argv), "video": video, "frames": len(frames),
              "network_size": list(args.size) if args.size else "each model's own",
              "reference": args.reference, "classes": next(iter(outputs.values()))[1], "rows": rows,
              "paired": paired_by_seed(rows)}
    write_report(record, args.out)
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
