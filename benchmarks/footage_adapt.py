"""Adapt a CamVid student to one camera's unlabeled footage, and measure it on frames of the clip it never saw.

``python benchmarks/footage_adapt.py [--video CLIP] [--adapt-frames N] [--student CKPT] [--control CKPT]``

The clip's first N frames are the unlabeled source (``distill.unlabeled`` with ``max_frames: N``); the frames after
them are held back. The student continues from ``--student`` with a distillation recipe (default: the warm-start
protocol's KD arm): its labeled CamVid batches as usual, plus footage frames that learn only from the teacher (KD
and the teacher's confident pseudo-labels). Before and after, on the held-back frames: agreement with the teacher
and flicker. ``--control`` is the same recipe and seed trained without the footage (the sweep's KD run), which
separates what the footage did from what more training did; CamVid val (each run's final score) shows what
adapting cost on the labeled domain. -> ``benchmarks/results/footage_adapt.{md,json,jpg}``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic
from edgeseg.runtime.datasets import data_path
from edgeseg.runtime.preprocess import overlay

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flicker import class_maps, read_frames, stability  # noqa: E402
from provenance import REPO, header_lines, provenance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WARM = "configs/distill/camvid_cpu_r18_warm"


def adapt(config: str, student: str, video: str, frames: int, out: Path, seed: int) -> Path:
    """Train (or resume, or reuse) the adapted student; its checkpoint."""
    if (out / "metrics.json").is_file():
        print(f"[skip] adapted student exists: {out}", flush=True)
        return out / "last.pt"
    command = [sys.executable, "-m", "edgeseg.cli", "train"]
    command += ["--resume", str(out)] if (out / "last.pt").is_file() else [config, "--out", str(out)]
    for item in (f"model.weights={student}", f"train.seed={seed}", "train.threads=1",
                 f"distill.unlabeled={{source: '{video}', max_frames: {frames}}}"):
        command += ["--set", item]
    print("[train]", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return out / "last.pt"


def val_miou(checkpoint: str) -> float | None:
    """The final CamVid val mIoU its run recorded (``metrics.json`` beside the checkpoint), if there is one."""
    metrics = Path(checkpoint).parent / "metrics.json"
    if not metrics.is_file():
        return None
    record = json.loads(metrics.read_text())
    return (record.get("final") or {}).get("miou")


def picture(frames: list[np.ndarray], maps: dict[str, list[np.ndarray]], palette: np.ndarray, picks: list[int],
            width: int) -> np.ndarray:
    """Rows: the picked frames; columns: the frame, then each model's classes over it, named in the first row."""
    rows = []
    for row, index in enumerate(picks):
        frame = frames[index]
        height = round(frame.shape[0] * width / frame.shape[1])
        cells = [frame] + [overlay(frame, maps[name][index], palette, alpha=0.6) for name in maps]
        cells = [cv2.resize(cell, (width, height), interpolation=cv2.INTER_AREA) for cell in cells]
        titles = [f"frame {index}"] + list(maps) if row == 0 else [f"frame {index}"] + [""] * len(maps)
        for cell, title in zip(cells, titles):
            cv2.putText(cell, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (0, 0, 0), 4, cv2.LINE_AA)
            cv2.putText(cell, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def write_report(record: dict, out: Path) -> None:
    lines = ["# Adapting a CamVid student to unlabeled highway footage", "", *header_lines(record), "",
             f"Clip: `{record['video']}` ({record['frames']} frames, no labels). Adapted on frames "
             f"0-{record['adapt_frames'] - 1} (unlabeled, beside the labeled CamVid batches); held back: frames "
             f"{record['adapt_frames']}-{record['frames'] - 1}, which no run saw. Recipe: `{record['config']}` with "
             f"`distill.unlabeled` = the adaptation frames, seed {record['seed']}. Agreement: share of pixels with "
             "the teacher's class; flicker: share of pixels whose class changes between consecutive frames. One run "
             "per row: a figure, not a confidence interval.", "",
             "| model | held-back agreement % | held-back flicker % | adaptation-frames agreement % | "
             "CamVid val mIoU |", "|---|---:|---:|---:|---:|"]
    for row in record["rows"]:
        held, seen = row["held_back"], row["adaptation"]
        agreement = f"{100 * held['agreement']:.2f}" if "agreement" in held else ""
        agreement_seen = f"{100 * seen['agreement']:.2f}" if "agreement" in seen else ""
        miou = "" if row["val_miou"] is None else f"{100 * row['val_miou']:.2f}"
        lines.append(f"| {row['model']} | {agreement} | {100 * held['overall']:.2f} | {agreement_seen} | {miou} |")
    lines += ["", "![before and after](footage_adapt.jpg)", "",
              "Columns of the picture: a held-back frame, then each model's classes over it."]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json_atomic(out.with_suffix(".json"), record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", help="unlabeled clip (default: $EDGESEG_DATA/video/solidWhiteRight.mp4)")
    parser.add_argument("--adapt-frames", type=int, default=166,
                        help="the first N frames adapt the student; the rest are held back (default 166 of 221)")
    parser.add_argument("--teacher", default="edgeseg/assets/teacher_bisenetv2_camvid.pt")
    parser.add_argument("--student", default="runs/warm_start/camvid_cpu_r18_warm/last.pt",
                        help="the CamVid student to adapt (default: the warm-start base)")
    parser.add_argument("--control", default="runs/distill_camvid_cpu_r18_warm/kd_s3/last.pt",
                        help="the same recipe without the footage; skipped where the file is missing")
    parser.add_argument("--config", default=f"{WARM}/kd.yaml", help="distillation recipe of the adaptation run")
    parser.add_argument("--seed", type=int, default=3, help="training seed (default 3, the control run's)")
    parser.add_argument("--runs", type=Path, default=Path("runs/footage_adapt"), help="where the adapted run goes")
    parser.add_argument("--out", type=Path, default=RESULTS / "footage_adapt", help="results path without suffix")
    args = parser.parse_args(argv)
    video = args.video or str(data_path("video/solidWhiteRight.mp4"))
    frames = read_frames(video, None)
    if not 0 < args.adapt_frames < len(frames) - 1:
        parser.error(f"--adapt-frames must leave at least two held-back frames of the {len(frames)}")
    for name, path in (("--teacher", args.teacher), ("--student", args.student)):
        if not Path(path).is_file():
            parser.error(f"{name} {path} does not exist")
    adapted = adapt(args.config, args.student, video, args.adapt_frames, args.runs / Path(video).stem, args.seed)
    models = {"teacher": args.teacher, "before": args.student}
    if Path(args.control).is_file():
        models["control (no footage)"] = args.control
    models["after (adapted)"] = str(adapted)
    outputs = {name: class_maps(path, frames, name, None) for name, path in models.items()}
    teacher_maps, names = outputs["teacher"]
    split = args.adapt_frames
    rows = []
    for name, (maps, _) in outputs.items():
        reference = None if name == "teacher" else teacher_maps
        rows.append({"model": name, "path": models[name],
                     "val_miou": None if name == "teacher" else val_miou(models[name]),
                     "held_back": stability(maps[split:], names, None if reference is None else reference[split:]),
                     "adaptation": stability(maps[:split], names, None if reference is None else reference[:split])})
    from edgeseg.runtime.segmenter import Segmenter

    palette = Segmenter.load(args.teacher).palette
    held = list(range(split, len(frames)))
    picks = [held[round(i * (len(held) - 1) / 2)] for i in range(3)]
    grid = picture(frames, {name: maps for name, (maps, _) in outputs.items()}, palette, picks, width=400)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".partial.jpg")  # JPEG: a grid of photographs is 5x smaller than as PNG
    cv2.imwrite(str(temporary), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    temporary.replace(args.out.with_suffix(".jpg"))
    record = {**provenance("benchmarks/footage_adapt.py", argv), "video": video, "frames": len(frames),
              "adapt_frames": split, "config": args.config, "seed": args.seed, "picture_frames": picks,
              "classes": names, "rows": rows}
    write_report(record, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
