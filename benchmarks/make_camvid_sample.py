"""Build the small CamVid copy embedded in the package (``edgeseg/assets/camvid_mini``) from the full dataset.

The sample lets the tests and ``edgeseg quickstart`` run on real road scenes without any download, while keeping the
wheel a few MB: every 3rd training pair and every 4th validation pair, at half resolution (240x180), images as
JPEG and labels as PNG. Images are shrunk with area averaging (no aliasing); labels with nearest neighbour, because
blending class ids would invent classes along every edge.

Usage::

    python benchmarks/make_camvid_sample.py --source $EDGESEG_DATA/camvid --output edgeseg/assets/camvid_mini
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.atomic_files import write_bytes_atomic

DEFAULT_STEPS = {"train": 3, "val": 4}


def encode(image_bgr_or_label, suffix: str, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(suffix, image_bgr_or_label, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {suffix} file")
    return buffer.tobytes()


def make_split(source: Path, output: Path, split: str, step: int, scale: float, jpeg_quality: int) -> int:
    """Copy every ``step``-th pair of one split; returns how many pairs were written."""
    dataset = open_dataset(f"camvid:{source}", split)
    written = 0
    for index in range(0, len(dataset), step):
        image_path, label_path = dataset.paths(index)
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)  # raw ids 0-11: the sample keeps CamVid's coding
        if image is None or label is None:
            raise RuntimeError(f"cannot read {image_path} or {label_path}")
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        small_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small_label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        write_bytes_atomic(output / "images" / split / f"{image_path.stem}.jpg",
                           encode(small_image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]))
        write_bytes_atomic(output / "labels" / split / f"{label_path.stem}.png",
                           encode(small_label, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 9]))
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="full CamVid copy: images/{train,val}/*.png and labels/{train,val}/*.png")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "edgeseg" / "assets"
                        / "camvid_mini", help="sample folder to write (existing files of the same name are replaced)")
    parser.add_argument("--train-step", type=int, default=DEFAULT_STEPS["train"], help="keep every N-th train pair")
    parser.add_argument("--val-step", type=int, default=DEFAULT_STEPS["val"], help="keep every N-th val pair")
    parser.add_argument("--scale", type=float, default=0.5, help="resize factor (0.5: 480x360 -> 240x180)")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    args = parser.parse_args(argv)
    for split, step in (("train", args.train_step), ("val", args.val_step)):
        count = make_split(args.source, args.output, split, step, args.scale, args.jpeg_quality)
        print(f"{split}: {count} pairs -> {args.output}")
    total = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"sample size: {total / 1e6:.2f} MB (README.md included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
