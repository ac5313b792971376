"""Parity of an exported ONNX graph with the PyTorch network it came from, on real images.

The ONNX side runs through the runtime's own :class:`~edgeseg.runtime.segmenter.Segmenter` (ONNX Runtime, CPU), so
the check covers what a deployment really executes: the metadata, the fused pre/post-processing and the runtime's
input preparation. The PyTorch side is the checkpoint's network fed the same resized pixels, normalised with the
checkpoint's own mean/std; a wrong normalisation, layout or channel order in the export therefore shows up as
disagreement rather than cancelling out.

Reported per size: the maximum absolute logit difference (graphs that output logits) and the argmax agreement, the
fraction of pixels whose class is the same on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeseg.runtime.errors import ConfigError
from edgeseg.runtime.preprocess import normalize, resize_image

DEFAULT_MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "int8": 0.95}
"""Argmax agreement an export must reach by precision. FP32 differs from PyTorch only by summation order; FP16 and
INT8 change the arithmetic, so a few pixels near class boundaries (where two logits almost tie) may flip."""

SIZE_STEP = 32


@dataclass
class ParityResult:
    """Parity at one input size over all checked images."""

    size: tuple[int, int]
    batch: int
    images: int
    agreement: float
    max_abs_error: float | None
    min_agreement: float
    max_abs_error_limit: float | None = None

    @property
    def passed(self) -> bool:
        within_error = (self.max_abs_error_limit is None or self.max_abs_error is None
                        or self.max_abs_error <= self.max_abs_error_limit)
        return self.agreement >= self.min_agreement and within_error

    def describe(self) -> str:
        error = "n/a (class-id output)" if self.max_abs_error is None else f"{self.max_abs_error:.3g}"
        verdict = "ok" if self.passed else "FAILED"
        limit = "" if self.max_abs_error_limit is None else f" (limit {self.max_abs_error_limit:g})"
        return (f"{self.size[0]}x{self.size[1]} batch {self.batch}, {self.images} images: argmax agreement "
                f"{100 * self.agreement:.3f}% (need >= {100 * self.min_agreement:.1f}%), max |logit diff| "
                f"{error}{limit}: {verdict}")


def randomize_for_parity(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give an untrained network decisive logits for parity checks: He-normal convolutions, random norm layers.

    The zoo initialises norm layers at identity, some residual branches at zero gamma and classifiers small, so a
    freshly built MobileNet student outputs logits whose top two classes differ by ~1e-6, and often one class
    everywhere. An argmax on such logits is decided by rounding noise (or agrees trivially), so a parity check on
    it measures nothing. Redrawing every convolution with fan-in He-normal weights and giving batch-norm layers
    random statistics and affine parameters yields logits that vary over the image with clear margins, like a
    trained network's. In place; for checks of untrained networks only (tests, the zoo parity loop).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                channels = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
                if module.affine:
                    module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
                    module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
    return model


def second_size(size: tuple[int, int]) -> tuple[int, int]:
    """Another size to check a height/width-dynamic graph at: about 1.25x, rounded up to the encoders' stride."""
    return tuple(int(-(-round(v * 1.25) // SIZE_STEP) * SIZE_STEP) for v in size)  # type: ignore[return-value]


def check_sizes(meta_size: list[int | None], export_size: tuple[int, int]) -> list[tuple[int, int]]:
    if meta_size[0] and meta_size[1]:
        return [export_size]
    return [export_size, second_size(export_size)]


def torch_logits(model: nn.Module, pixels: np.ndarray, mean, std) -> np.ndarray:
    """Reference logits of the PyTorch network for resized uint8 NHWC pixels."""
    batch = torch.from_numpy(normalize(pixels, mean, std))
    with torch.no_grad():
        return model(batch).float().numpy()


def check_parity(model: nn.Module, onnx_path, card: dict, images: list[np.ndarray], export_size: tuple[int, int],
                 min_agreement: float, max_abs_error: float | None = None,
                 dynamic_batch: int = 2) -> list[ParityResult]:
    """Compare the exported graph with ``model`` on ``images`` at the export size (and a second size if dynamic).

    Args:
        model: The PyTorch network in eval mode (unwrapped: no fused steps, takes normalised NCHW).
        onnx_path: The exported file.
        card: The checkpoint card; its normalisation prepares the PyTorch input.
        images: RGB uint8 images of any size; each is resized to the checked size as the runtime does.
        export_size: ``(height, width)`` the graph was exported at.
        min_agreement: Fraction of equal argmax pixels required.
        max_abs_error: Optional limit on the logit difference (only for graphs that output logits).
        dynamic_batch: Batch to run a batch-dynamic graph with, so the batch axis is exercised.
    """
    from edgeseg.runtime.segmenter import Segmenter

    if not images:
        raise ConfigError("no images to check parity on")
    mean, std = card["normalization"]["mean"], card["normalization"]["std"]
    results = []
    with Segmenter.load(str(onnx_path), backend="onnxruntime", device="cpu") as probe:
        meta = probe.meta
        graph_batch = probe.backend.max_batch
    step = graph_batch or dynamic_batch
    if graph_batch and graph_batch > 1:  # a fixed batch takes only full batches
        images = images[: len(images) - len(images) % graph_batch]
        if not images:
            raise ConfigError(f"the graph has a fixed batch of {graph_batch}: check it with at least that many "
                              "images (--check-images)")
    for size in check_sizes(meta.input_size, export_size):
        with Segmenter.load(str(onnx_path), backend="onnxruntime", device="cpu",
                            size=None if meta.static_size else size) as segmenter:
            equal = total = 0
            worst = 0.0
            for start in range(0, len(images), step):
                chunk = images[start:start + step]
                pixels = np.stack([resize_image(image, size) for image in chunk])
                reference = torch_logits(model, pixels, mean, std)
                raw = segmenter.run(segmenter.prepare(chunk))
                ids = segmenter.class_ids(raw)
                expected = reference.argmax(axis=1)
                equal += int((ids == expected).sum())
                total += expected.size
                if not meta.fused_post:
                    worst = max(worst, float(np.abs(raw.astype(np.float32) - reference).max()))
            results.append(ParityResult(size, min(step, len(images)), len(images), equal / total,
                                        None if meta.fused_post else worst, min_agreement, max_abs_error))
    return results


# Below this share of equal pixels against the checkpoint at its trained size, ``--check`` warns that the export
# size itself costs accuracy (parity at the export size cannot show it: both sides run at the same size).
TRAINED_SIZE_WARNING = 0.9


def trained_size_agreement(model: nn.Module, onnx_path, card: dict, images: list[np.ndarray],
                           export_size: tuple[int, int]) -> float | None:
    """Share of pixels on which the export, at its own size, agrees with the checkpoint at its trained size.

    Both class maps are compared on each image's own grid, as the runtime delivers them. None when the export
    size is the trained size (the parity check already covers that case).
    """
    from edgeseg.runtime.preprocess import resize_labels
    from edgeseg.runtime.segmenter import Segmenter

    trained = tuple(card["input_size"])
    if tuple(export_size) == trained or not images:
        return None
    mean, std = card["normalization"]["mean"], card["normalization"]["std"]
    equal = total = 0
    with Segmenter.load(str(onnx_path), backend="onnxruntime", device="cpu") as segmenter:
        for image in images:
            exported = segmenter.segment(image)
            logits = torch_logits(model, resize_image(image, trained)[None], mean, std)
            reference = resize_labels(logits[0].argmax(axis=0).astype(np.uint8), image.shape[:2])
            equal += int((exported == reference).sum())
            total += reference.size
    return equal / total
