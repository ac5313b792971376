"""Joint transforms, the torch dataset wrapper and the loader: geometry, alignment, padding, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeseg.runtime.classes import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.errors import ConfigError
from edgeseg.runtime.preprocess import normalize, resize_image
from edgeseg.training.data import (ColorJitter, EvalTransform, SegmentationTorchDataset, TrainTransform,
                                   build_loader, collate_samples, hflip, random_crop, random_scale,
                                   set_loader_epoch)

GREY_STEP = 20  # image pixel = GREY_STEP * class id in every channel: alignment can be checked pixel by pixel


def coded_sample(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A label of random classes 0..9 and an image whose grey level encodes each pixel's class."""
    label = np.random.default_rng(seed).integers(0, 10, (height, width), dtype=np.uint8)
    image = np.repeat((label * GREY_STEP)[:, :, None], 3, axis=2).astype(np.uint8)
    return image, label


def denormalize(chw: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    hwc = chw.transpose(1, 2, 0) * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    return np.rint(hwc * 255).astype(np.int32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("shape", [(40, 50), (20, 30), (64, 20)])
def test_random_crop_is_exactly_the_crop_size(shape):
    image, label = coded_sample(*shape)
    out_image, out_label = random_crop(image, label, rng(), (32, 48))
    assert out_image.shape == (32, 48, 3) and out_label.shape == (32, 48)
    assert out_image.dtype == np.uint8 and out_label.dtype == np.uint8


def test_random_crop_pads_label_with_ignore_exactly_where_image_is_padded():
    image, label = coded_sample(20, 30)
    fill = (7, 8, 9)
    for seed in range(5):
        out_image, out_label = random_crop(image, label, rng(seed), (32, 48), image_fill=fill)
        padded = out_label == IGNORE_INDEX
        assert padded.sum() == 32 * 48 - 20 * 30
        assert (out_image[padded] == fill).all()
        kept = ~padded
        np.testing.assert_array_equal(out_image[kept][:, 0], out_label[kept] * GREY_STEP)
        # the whole image survives: every class count is unchanged
        np.testing.assert_array_equal(np.bincount(out_label[kept], minlength=10),
                                      np.bincount(label.ravel(), minlength=10))


def test_random_crop_position_varies_with_the_generator():
    image, label = coded_sample(60, 80)
    crops = {random_crop(image, label, rng(seed), (16, 16))[1].tobytes() for seed in range(8)}
    assert len(crops) > 1


def test_hflip_mirrors_image_and_label_together():
    image, label = coded_sample(6, 9)
    flipped_image, flipped_label = hflip(image, label)
    np.testing.assert_array_equal(flipped_label, label[:, ::-1])
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])


def test_random_scale_respects_base_size_and_range():
    image, label = coded_sample(60, 80)
    for seed in range(10):
        scaled_image, scaled_label = random_scale(image, label, rng(seed), (30, 40), (0.5, 2.0))
        height, width = scaled_label.shape
        assert scaled_image.shape[:2] == (height, width)
        assert 15 <= height <= 60 and 20 <= width <= 80
        assert abs(height / width - 0.75) < 0.05
        assert set(np.unique(scaled_label)) <= set(np.unique(label))  # nearest neighbour invents no class


def test_train_transform_output_types_and_sizes():
    image, label = coded_sample(36, 48)
    transform = TrainTransform((24, 32), base_size=(18, 24), scale_range=(0.5, 2.0), jitter=0.3)
    for seed in range(4):
        out_image, out_label = transform(image, label, rng(seed))
        assert out_image.shape == (3, 24, 32) and out_image.dtype == np.float32
        assert out_label.shape == (24, 32) and out_label.dtype == np.uint8


def test_train_transform_keeps_image_and_label_aligned_through_crop_and_flip():
    image, label = coded_sample(30, 40)
    transform = TrainTransform((24, 48), scale_range=(1.0, 1.0), flip=True)
    orientations = set()
    for seed in range(12):
        out_image, out_label = transform(image, label, rng(seed))
        pixels = denormalize(out_image)
        kept = out_label != IGNORE_INDEX
        np.testing.assert_array_equal(pixels[kept][:, 1], out_label[kept].astype(np.int32) * GREY_STEP)
        # padded columns (crop wider than the image) carry the mean colour
        mean_colour = np.rint(np.asarray(IMAGENET_MEAN) * 255).astype(np.int32)
        assert (pixels[~kept] == mean_colour).all()
        assert (~kept).sum() == 24 * (48 - 40)
        rows = range(30 - 24 + 1)
        window = out_label[:, kept.any(axis=0)]
        matches_plain = any(np.array_equal(window, label[r:r + 24]) for r in rows)
        matches_mirror = any(np.array_equal(window, label[r:r + 24, ::-1]) for r in rows)
        assert matches_plain or matches_mirror
        orientations.add("mirrored" if matches_mirror else "plain")
    assert orientations == {"plain", "mirrored"}


def test_train_transform_base_size_trains_at_reduced_resolution():
    image, label = coded_sample(36, 48)
    transform = TrainTransform((18, 24), base_size=(18, 24), scale_range=(1.0, 1.0), flip=False)
    out_image, out_label = transform(image, label, rng())
    np.testing.assert_allclose(out_image, normalize(resize_image(image, (18, 24)), IMAGENET_MEAN, IMAGENET_STD),
                               atol=1e-5)
    assert (out_label != IGNORE_INDEX).all()


def test_same_seed_same_sample_and_different_seed_different_sample():
    image, label = coded_sample(40, 60)
    image = np.random.default_rng(9).integers(0, 256, image.shape, dtype=np.uint8)  # texture for the jitter
    transform = TrainTransform((24, 24), scale_range=(0.5, 2.0), jitter=0.4)
    first = transform(image, label, rng(1))
    again = transform(image, label, rng(1))
    other = transform(image, label, rng(2))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


# ------------------------------------------------------------------------------------------------ photometry

def test_color_jitter_changes_pixels_but_never_the_label():
    image = np.random.default_rng(0).integers(40, 216, (16, 16, 3), dtype=np.uint8)
    label = np.full((16, 16), 3, dtype=np.uint8)
    transform = TrainTransform((16, 16), scale_range=(1.0, 1.0), flip=False, jitter=0.4)
    plain = TrainTransform((16, 16), scale_range=(1.0, 1.0), flip=False, jitter=None)
    jittered_image, jittered_label = transform(image, label, rng(3))
    plain_image, _ = plain(image, label, rng(3))
    assert not np.allclose(jittered_image, plain_image)
    np.testing.assert_array_equal(jittered_label, label)


def test_zero_jitter_is_identity_and_brightness_stays_in_range():
    image = np.random.default_rng(0).integers(40, 200, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ColorJitter(0, 0, 0, 0)(image, rng()), image)
    brighten = ColorJitter(brightness=0.3, contrast=0, saturation=0, hue=0)
    for seed in range(6):
        ratio = brighten(image, rng(seed)).astype(np.float32).mean() / image.mean()
        assert 0.69 <= ratio <= 1.31


def test_hue_jitter_keeps_grey_pixels_grey():
    grey = np.full((8, 8, 3), 128, dtype=np.uint8)
    hue_only = ColorJitter(brightness=0, contrast=0, saturation=0, hue=0.5)
    np.testing.assert_array_equal(hue_only(grey, rng(4)), grey)


def test_jitter_options_are_validated():
    with pytest.raises(ValueError):
        ColorJitter(brightness=1.5)
    with pytest.raises(ValueError):
        TrainTransform((8, 8), scale_range=(2.0, 1.0))


# ------------------------------------------------------------------------------------------------ evaluation

def test_eval_transform_matches_runtime_preprocessing_and_keeps_label():
    image, label = coded_sample(36, 48)
    transform = EvalTransform((18, 24))
    out_image, out_label = transform(image, label)
    np.testing.assert_array_equal(out_image, normalize(resize_image(image, (18, 24)), IMAGENET_MEAN, IMAGENET_STD))
    assert out_label is label
    assert EvalTransform(None).image(image).shape == (3, 36, 48)


# ------------------------------------------------------------------------------------- torch dataset, loader

def test_torch_dataset_seeds_per_sample_and_epoch():
    seg = open_dataset("camvid", "val")
    transform = TrainTransform((32, 48), base_size=(45, 60), jitter=0.2)
    first = SegmentationTorchDataset(seg, transform, seed=5)
    image, label = first[2]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 48)
    assert label.dtype == torch.int64 and label.shape == (32, 48)
    twin = SegmentationTorchDataset(seg, transform, seed=5)
    assert torch.equal(twin[2][0], image) and torch.equal(twin[2][1], label)
    assert not torch.equal(SegmentationTorchDataset(seg, transform, seed=6)[2][0], image)
    twin.set_epoch(1)
    assert not torch.equal(twin[2][0], image)


def test_collate_stacks_equal_shapes_and_lists_different_ones():
    same = [(torch.zeros(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64))] * 2
    images, labels = collate_samples(same)
    assert images.shape == (2, 3, 4, 5) and labels.shape == (2, 4, 5)
    mixed = [(torch.zeros(3, 4, 5), torch.zeros(4, 5)), (torch.zeros(3, 6, 5), torch.zeros(6, 5))]
    images, labels = collate_samples(mixed)
    assert isinstance(images, list) and [t.shape[1] for t in images] == [4, 6]
    assert isinstance(labels, list) and [t.shape[0] for t in labels] == [4, 6]


def first_batches(loader, epochs):
    batches = []
    for epoch in epochs:
        set_loader_epoch(loader, epoch)
        batches.append(next(iter(loader)))
    return batches


@pytest.mark.slow
def test_loader_is_reproducible_across_worker_counts_and_epochs():
    transform = TrainTransform((24, 32), base_size=(45, 60), jitter=0.2)
    kwargs = dict(spec="camvid", split="val", transform=transform, batch_size=3, seed=1, shuffle=True,
                  drop_last=True)
    in_process = first_batches(build_loader(workers=0, **kwargs), epochs=[0, 1])
    with_workers = first_batches(build_loader(workers=2, **kwargs), epochs=[0, 1])  # persistent workers
    images, labels = in_process[0]
    assert images.shape == (3, 3, 24, 32) and labels.shape == (3, 24, 32) and labels.dtype == torch.int64
    for (a_images, a_labels), (b_images, b_labels) in zip(in_process, with_workers):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    assert not torch.equal(in_process[0][0], in_process[1][0])  # a new epoch reshuffles and re-augments


def test_eval_loader_keeps_order_and_full_resolution_labels():
    loader = build_loader("camvid", "val", EvalTransform((90, 120)), batch_size=4, workers=0, seed=0,
                          shuffle=False, drop_last=False)
    batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == 26
    images, labels = batches[0]
    assert images.shape == (4, 3, 90, 120) and labels.shape == (4, 180, 240)
    np.testing.assert_array_equal(labels[1].numpy(), open_dataset("camvid", "val").read_label(1))


def test_loader_refuses_a_batch_larger_than_the_split():
    with pytest.raises(ConfigError, match="batch size 64"):
        build_loader("camvid", "val", EvalTransform(), batch_size=64, workers=0, seed=0, shuffle=True,
                     drop_last=True)
