"""Class lists, palettes and ignore indices of the supported datasets.

Torch-free on purpose: training writes these into checkpoints, export copies them into the ONNX metadata, and the
runtime reads them back, so all three must agree on one definition.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

IGNORE_INDEX = 255
"""Label value that the loss and the metrics skip. Every dataset reader maps its own void label onto it."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Normalisation of RGB images scaled to [0, 1]; the default for every model in the zoo."""


@dataclass(frozen=True)
class ClassSpec:
    """The classes a model predicts: names in id order, one RGB colour each, and the label value to ignore."""

    dataset: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"{self.dataset}: {len(self.names)} class names but {len(self.palette)} palette colours")
        if not self.names:
            raise ValueError(f"{self.dataset}: no classes")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "names": list(self.names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ClassSpec":
        try:
            return cls(
                dataset=str(data.get("dataset", "custom")),
                names=tuple(str(n) for n in data["names"]),
                palette=tuple(tuple(int(v) for v in c) for c in data["palette"]),
                ignore_index=int(data.get("ignore_index", IGNORE_INDEX)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"class description is incomplete or malformed ({err}): {data!r}") from err


def distinct_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Deterministic, well-separated colours for datasets that ship none (golden-ratio hue walk)."""
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        sat = 0.65 + 0.35 * ((i // 7) % 2)
        val = 0.95 - 0.35 * ((i // 3) % 2)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return tuple(colours)


CAMVID = ClassSpec(
    dataset="camvid",
    names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"),
    # The colours of the SegNet tutorial's CamVid scripts (its 11-class, 360x480 preparation of CamVid).
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    extra={"void_label": 11},
)

CITYSCAPES = ClassSpec(
    dataset="cityscapes",
    names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
             (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
             (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)

# Official labelIds -> trainIds mapping of the 19 evaluated Cityscapes classes; every other id is ignored.
CITYSCAPES_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Pascal VOC's bit-interleaved colour map: the palette stored in its SegmentationClass PNGs."""
    colours = []
    for label in range(n):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


VOC = ClassSpec(
    dataset="voc",
    names=("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor"),
    palette=_voc_palette(21),
)

ADE20K = ClassSpec(
    dataset="ade20k",
    names=("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
           "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
           "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
           "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
           "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
           "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
           "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
           "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
           "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
           "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
           "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
           "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
           "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
           "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
           "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
           "bulletin board", "shower", "radiator", "glass", "clock", "flag"),
    palette=distinct_palette(150),
)
