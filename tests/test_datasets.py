"""Dataset readers: every layout and id mapping on tiny fake trees, every bad-data error, the embedded sample."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.runtime.classes import CAMVID, CITYSCAPES_ID_TO_TRAIN_ID, IGNORE_INDEX, VOC, distinct_palette
from edgeseg.runtime.datasets import DATASET_NAMES, open_dataset, parse_dataset_spec
from edgeseg.runtime.image_files import read_raw_label
from edgeseg.runtime.errors import DataError

SIZE = (12, 16)  # height, width of every fake image


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Write a random RGB image (PNG or JPEG by suffix) and return the RGB pixels a lossless reader must give."""
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def write_label(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values.astype(np.uint8))


def label_with(values: list[int], size: tuple[int, int] = SIZE) -> np.ndarray:
    """A label map that uses each of ``values`` in turn across the pixels."""
    return np.resize(np.asarray(values, dtype=np.uint8), size[0] * size[1]).reshape(size)


def write_indexed_png(path: Path, indices: np.ndarray, palette: np.ndarray, transparency: bytes | None = None):
    """Minimal 8-bit palette PNG writer, independent of the reader (OpenCV cannot write indexed PNGs)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    height, width = indices.shape
    rows = b"".join(b"\x00" + indices[row].astype(np.uint8).tobytes() for row in range(height))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
    data += chunk(b"PLTE", np.asarray(palette, dtype=np.uint8).tobytes())
    if transparency is not None:
        data += chunk(b"tRNS", transparency)
    data += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_camvid(root: Path, names=("a", "b"), split: str = "train", image_suffix: str = ".png") -> Path:
    for i, name in enumerate(names):
        write_image(root / "images" / split / f"{name}{image_suffix}", seed=i)
        write_label(root / "labels" / split / f"{name}.png", label_with([0, 3, 10, 11]))
    return root


def assert_data_error(match_path: Path, call, *words: str) -> DataError:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert str(match_path) in message, message
    explanation = message.replace(str(match_path), "")  # the words must not come from the test's folder name
    for word in words:
        assert word in explanation, message
    return info.value


# ------------------------------------------------------------------------------------------------------ specs

def test_dataset_roots_read_environment_variables_and_an_unset_one_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESEG_DATA", str(tmp_path))
    assert parse_dataset_spec("camvid:${EDGESEG_DATA}/camvid") == ("camvid", tmp_path / "camvid")
    assert parse_dataset_spec("camvid:$EDGESEG_DATA/cv") == ("camvid", tmp_path / "cv")
    monkeypatch.delenv("EDGESEG_DATA")
    with pytest.raises(DataError, match=r"\$EDGESEG_DATA, which is not set .*export EDGESEG_DATA="):
        parse_dataset_spec("camvid:${EDGESEG_DATA}/camvid")


def test_parse_dataset_spec_splits_name_and_root():
    assert parse_dataset_spec("camvid") == ("camvid", None)
    assert parse_dataset_spec("cityscapes:/data/city") == ("cityscapes", Path("/data/city"))
    assert parse_dataset_spec("VOC:/d/VOCdevkit") == ("voc", Path("/d/VOCdevkit"))


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(DataError) as info:
        open_dataset("kitti:/data/kitti")
    assert "kitti" in str(info.value)
    for name in DATASET_NAMES:
        assert name in str(info.value)


def test_dataset_other_than_camvid_needs_a_root():
    with pytest.raises(DataError, match="voc:/path"):
        open_dataset("voc")


def test_missing_root_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    assert_data_error(missing, lambda: open_dataset(f"camvid:{missing}"))


# ---------------------------------------------------------------------------------------------------- layouts

def test_camvid_layout_maps_void_to_ignore_and_pairs_jpg_with_png(tmp_path):
    root = make_camvid(tmp_path / "camvid", names=("x", "y"), split="val", image_suffix=".jpg")
    dataset = open_dataset(f"camvid:{root}", "val")
    assert (dataset.name, dataset.split, len(dataset)) == ("camvid", "val", 2)
    assert dataset.classes == CAMVID
    image_path, label_path = dataset.paths(1)
    assert (image_path.name, label_path.name) == ("y.jpg", "y.png")
    image, label = dataset[0]
    assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label, label_with([0, 3, 10, IGNORE_INDEX]))


def test_camvid_png_image_is_read_as_rgb(tmp_path):
    root = tmp_path / "camvid"
    rgb = write_image(root / "images" / "train" / "a.png", seed=3)
    write_label(root / "labels" / "train" / "a.png", label_with([1]))
    np.testing.assert_array_equal(open_dataset(f"camvid:{root}").read_image(0), rgb)


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    stem = "aachen_000000_000019"
    write_image(root / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png")
    raw = [0, 1, 6, 7, 8, 26, 33, 9, 255]  # void ids (0, 1, 6, 9) and eval ids (7, 8, 26, 33), 255
    write_label(root / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png", label_with(raw))
    dataset = open_dataset(f"cityscapes:{root}", "val")
    assert len(dataset) == 1 and dataset.classes.num_classes == 19
    expected = [CITYSCAPES_ID_TO_TRAIN_ID.get(value, IGNORE_INDEX) for value in raw]
    assert expected[3:7] == [0, 1, 13, 18]  # road, sidewalk, car, bicycle
    np.testing.assert_array_equal(dataset.read_label(0), label_with(expected))


@pytest.mark.parametrize("root_level", ["VOCdevkit", "VOC2012"])
def test_voc_reads_palette_indices_and_border(tmp_path, root_level):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    indices = label_with([0, 15, 20, 255, 7])
    write_image(voc / "JPEGImages" / "2007_000032.jpg")
    write_image(voc / "JPEGImages" / "2007_000039.jpg")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: VOC.num_classes] = VOC.palette
    palette[255] = (224, 224, 192)  # VOC's border colour
    write_indexed_png(voc / "SegmentationClass" / "2007_000032.png", indices, palette)
    write_indexed_png(voc / "SegmentationClass" / "2007_000039.png", label_with([1]), palette)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    root = tmp_path / "VOCdevkit" if root_level == "VOCdevkit" else voc
    dataset = open_dataset(f"voc:{root}", "val")
    assert len(dataset) == 1 and dataset.classes == VOC  # the split list, not the folder, defines the split
    np.testing.assert_array_equal(dataset.read_label(0), indices)


def test_indexed_png_with_short_palette_and_transparency_gives_indices(tmp_path):
    path = tmp_path / "mask.png"
    indices = label_with([0, 1, 2, 3])
    write_indexed_png(path, indices, palette=[(9, 9, 9), (200, 0, 0), (0, 200, 0), (0, 0, 200)],
                      transparency=b"\x00\x80")
    np.testing.assert_array_equal(read_raw_label(path), indices)


def test_indexed_png_written_by_pillow_gives_indices(tmp_path):
    image_module = pytest.importorskip("PIL.Image", reason="cross-check with the reference palette PNG writer")
    indices = label_with([0, 5, 21, 255, 2])
    picture = image_module.fromarray(indices, mode="P")
    picture.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tolist())
    picture.save(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_raw_label(tmp_path / "mask.png"), indices)


@pytest.mark.parametrize("root_level", ["ADEChallengeData2016", "parent"])
def test_ade20k_shifts_ids_and_ignores_zero(tmp_path, root_level):
    ade = tmp_path / "ADEChallengeData2016"
    write_image(ade / "images" / "training" / "ADE_train_00000001.jpg")
    write_label(ade / "annotations" / "training" / "ADE_train_00000001.png", label_with([0, 1, 2, 150]))
    root = ade if root_level == "ADEChallengeData2016" else tmp_path
    dataset = open_dataset(f"ade20k:{root}", "train")
    assert len(dataset) == 1 and dataset.classes.num_classes == 150
    np.testing.assert_array_equal(dataset.read_label(0), label_with([IGNORE_INDEX, 0, 1, 149]))
    assert_data_error(ade / "images" / "validation", lambda: open_dataset(f"ade20k:{root}", "val"))


def test_folder_layout_with_splits_and_mixed_class_list(tmp_path):
    root = tmp_path / "roads"
    root.mkdir()
    (root / "classes.txt").write_text("# my classes\nroad 128 64 128\nparked car\n\nsky 70 130 180\n")
    write_image(root / "images" / "train" / "f1.jpg")
    write_label(root / "masks" / "train" / "f1.png", label_with([0, 1, 2, 255]))
    dataset = open_dataset(f"folder:{root}", "train")
    assert dataset.classes.names == ("road", "parked car", "sky")
    assert dataset.classes.palette == ((128, 64, 128), distinct_palette(3)[1], (70, 130, 180))
    np.testing.assert_array_equal(dataset[0][1], label_with([0, 1, 2, 255]))
    write_image(root / "images" / "train" / "f2.png")
    write_label(root / "masks" / "train" / "f2.png", label_with([3]))  # a fourth class the list does not define
    with_bad_mask = open_dataset(f"folder:{root}", "train")
    assert_data_error(root / "masks" / "train" / "f2.png", lambda: with_bad_mask[1], "[3]")


def test_folder_layout_without_splits(tmp_path):
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\n")
    write_image(root / "images" / "p.png")
    write_label(root / "masks" / "p.png", label_with([0, 1]))
    for split in ("train", "val"):
        assert len(open_dataset(f"folder:{root}", split)) == 1


def test_folder_layout_needs_a_class_list(tmp_path):
    root = tmp_path / "noclasses"
    write_image(root / "images" / "p.png")
    assert_data_error(root / "classes.txt", lambda: open_dataset(f"folder:{root}"))


def test_grey_mask_saved_as_rgb_is_accepted_but_colour_mask_is_not(tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.repeat(label_with([0, 1, 2])[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(read_raw_label(grey), label_with([0, 1, 2]))
    colour = tmp_path / "colour.png"
    cv2.imwrite(str(colour), np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8))
    assert_data_error(colour, lambda: read_raw_label(colour), "colour")


# ------------------------------------------------------------------------------------------------ bad data

def test_image_without_label_fails_at_open(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    lonely = root / "images" / "train" / "c.png"
    write_image(lonely)
    assert_data_error(lonely, lambda: open_dataset(f"camvid:{root}"), "no label")


def test_label_without_image_is_ignored(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    write_label(root / "labels" / "train" / "orphan.png", label_with([1]))
    assert len(open_dataset(f"camvid:{root}")) == 2


def test_without_validation_a_missing_label_fails_when_read(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    (root / "labels" / "train" / "b.png").unlink()
    dataset = open_dataset(f"camvid:{root}", validate=False)
    assert len(dataset) == 2
    dataset[0]
    assert_data_error(root / "labels" / "train" / "b.png", lambda: dataset[1], "does not exist")


def test_image_label_size_mismatch_names_both_files(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    write_image(root / "images" / "train" / "b.png", size=(SIZE[0], SIZE[1] + 2))
    error = assert_data_error(root / "images" / "train" / "b.png", lambda: open_dataset(f"camvid:{root}")[1])
    assert str(root / "labels" / "train" / "b.png") in str(error)


def test_label_value_outside_classes_is_reported_with_the_value(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    bad = root / "labels" / "train" / "b.png"
    write_label(bad, label_with([1, 2, 12, 40]))
    dataset = open_dataset(f"camvid:{root}")
    dataset[0]
    assert_data_error(bad, lambda: dataset[1], "[12, 40]")


def test_unreadable_image_file(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    broken = root / "images" / "train" / "b.png"
    broken.write_bytes(b"this is not an image")
    assert_data_error(broken, lambda: open_dataset(f"camvid:{root}")[1], "cannot be decoded")


def test_unreadable_label_file(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    broken = root / "labels" / "train" / "a.png"
    broken.write_bytes(b"")
    assert_data_error(broken, lambda: open_dataset(f"camvid:{root}").read_label(0))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_is_detected(tmp_path, suffix):
    root = make_camvid(tmp_path / "camvid", image_suffix=suffix)
    path = root / "images" / "train" / f"a{suffix}"
    write_image(path, size=(64, 64))  # big enough that half of it still has a decodable header
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    assert_data_error(path, lambda: open_dataset(f"camvid:{root}").read_image(0), "truncated")


def test_truncated_label_png_is_detected(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    path = root / "labels" / "train" / "a.png"
    data = path.read_bytes()
    path.write_bytes(data[:-12])  # only the IEND chunk is missing
    assert_data_error(path, lambda: open_dataset(f"camvid:{root}").read_label(0), "truncated")


def test_empty_split_names_the_folder(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    (root / "images" / "val").mkdir()
    assert_data_error(root / "images" / "val", lambda: open_dataset(f"camvid:{root}", "val"), "no images")


def test_missing_split_lists_the_available_ones(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    assert_data_error(root / "images" / "test", lambda: open_dataset(f"camvid:{root}", "test"), "train")


def test_voc_missing_split_list_and_missing_label(tmp_path):
    voc = tmp_path / "VOC2012"
    write_image(voc / "JPEGImages" / "x.jpg")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("x\n")
    assert_data_error(voc / "ImageSets" / "Segmentation" / "val.txt", lambda: open_dataset(f"voc:{voc}", "val"))
    assert_data_error(voc / "JPEGImages" / "x.jpg", lambda: open_dataset(f"voc:{voc}", "train"), "no label")


def test_index_out_of_range_raises_index_error(tmp_path):
    dataset = open_dataset(f"camvid:{make_camvid(tmp_path / 'camvid')}")
    with pytest.raises(IndexError):
        dataset[2]
    assert dataset.paths(-1) == dataset.paths(1)


# ------------------------------------------------------------------------------------------ embedded sample

def test_embedded_camvid_sample_counts_and_class_ids():
    expected_counts = {"train": -(-367 // 3), "val": -(-101 // 4)}  # every 3rd / 4th pair of the full splits
    for split, count in expected_counts.items():
        dataset = open_dataset("camvid", split)
        assert len(dataset) == count
        assert dataset.classes == CAMVID
    val = open_dataset("camvid", "val")
    seen = set()
    for index in range(len(val)):
        image, label = val[index]
        assert image.shape == (180, 240, 3) and label.shape == (180, 240)
        seen.update(np.unique(label).tolist())
    assert seen <= set(range(CAMVID.num_classes)) | {IGNORE_INDEX}
    assert {0, 1, 3, IGNORE_INDEX} <= seen  # sky, building, road and void are in every CamVid street scene


# The full copy under $EDGESEG_DATA (make sets it; on the development and CI machines: shared/data beside the clone).
FULL_CAMVID = Path(os.environ.get("EDGESEG_DATA", "/nonexistent")) / "camvid"


@pytest.mark.skipif(not FULL_CAMVID.is_dir(), reason="needs the full CamVid copy the sample was made from")
def test_embedded_sample_matches_its_source():
    source = sorted(p.stem for p in (FULL_CAMVID / "images" / "val").glob("*.png"))[::4]
    sample = open_dataset("camvid", "val")
    assert [sample.paths(i)[0].stem for i in range(len(sample))] == source
    full_label = cv2.imread(str(FULL_CAMVID / "labels" / "val" / f"{source[5]}.png"), cv2.IMREAD_UNCHANGED)
    halved = cv2.resize(full_label, (240, 180), interpolation=cv2.INTER_NEAREST)
    expected = np.where(halved == 11, IGNORE_INDEX, halved)
    np.testing.assert_array_equal(sample.read_label(5), expected)


def test_reader_works_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from edgeseg.runtime.datasets import open_dataset\n"
            "image, label = open_dataset('camvid', 'val')[0]\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print(image.shape, label.shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "(180, 240, 3) (180, 240)" in result.stdout


def test_data_path_reads_the_data_root_or_names_the_unset_variable(monkeypatch, tmp_path):
    from edgeseg.runtime.datasets import data_path

    monkeypatch.setenv("EDGESEG_DATA", str(tmp_path))
    assert data_path("video/clip.mp4") == tmp_path / "video" / "clip.mp4"
    monkeypatch.delenv("EDGESEG_DATA")
    with pytest.raises(DataError, match="EDGESEG_DATA, which is not set"):
        data_path("video/clip.mp4")
