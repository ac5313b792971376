"""The interface every inference backend implements, so that the Segmenter never cares what runs the network.

A backend owns the model file (or server connection) and does nothing but inference: pre- and post-processing live in
:class:`~edgeseg.runtime.segmenter.Segmenter`, once for all backends, so that a checkpoint, its ONNX export and its
TensorRT engine see identical pixels and are scored identically.
"""

from __future__ import annotations

import abc
import os
from typing import Sequence

import numpy as np

from ..errors import BackendUnavailable, MetadataError, ModelFormatError
from ..metadata import ModelMeta
from ..sysinfo import usable_cores

DEVICE_KINDS = ("auto", "cpu", "cuda", "tensorrt")

THREADS_ENV = "EDGESEG_ORT_THREADS"
"""Environment variable that overrides the CPU inference thread count of the ONNX Runtime and OpenVINO backends
(e.g. to leave cores to a video decoder; ``edgeseg serve --workers N`` sets it to each worker's share)."""


def default_threads() -> int:
    """CPU inference threads: the cores this process may use (cgroup/taskset aware), or the value of ``THREADS_ENV``."""
    override = os.environ.get(THREADS_ENV)
    if override:
        try:
            return max(1, int(override))
        except ValueError:
            raise BackendUnavailable(f"{THREADS_ENV} must be an integer, got {override!r}") from None
    return usable_cores()


def parse_device(device: str) -> tuple[str, int]:
    """Split a device string into ``(kind, gpu_index)``: ``"cuda:1"`` -> ``("cuda", 1)``, ``"cpu"`` -> ``("cpu", 0)``.

    ``"gpu"`` is accepted for ``"cuda"`` and ``"trt"`` for ``"tensorrt"`` because users type both.
    """
    kind, _, index = str(device).strip().lower().partition(":")
    kind = {"gpu": "cuda", "trt": "tensorrt"}.get(kind, kind)
    if kind not in DEVICE_KINDS or (index and (not index.isdigit() or kind in ("auto", "cpu"))):
        raise BackendUnavailable(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N, tensorrt or tensorrt:N")
    return kind, int(index or 0)


def adopt_input_size(meta: ModelMeta, shape: Sequence, source: str, card: str, network: str) -> None:
    """Check the network's image input against the model card, then take its static height/width into the card.

    The network is authoritative: a card that states another static size is an error rather than a resize the
    runtime would silently get wrong. A dimension that is not a positive integer (ONNX's None or symbolic names,
    TensorRT's -1) is dynamic.

    Args:
        meta: The model card; its ``input_size`` is updated in place.
        shape: The input's declared shape, batch first, laid out as ``meta.input_layout`` says.
        source: The model file, named in errors.
        card: Where the card came from (``"metadata"``, ``"sidecar"``), named in errors.
        network: What declares ``shape`` (``"graph"``, ``"engine"``), named in errors.
    """
    if len(shape) != 4:
        raise ModelFormatError(f"{source}: expected a 4-D image input, the {network} takes shape {list(shape)}")
    spatial = shape[1:3] if meta.input_layout == "NHWC" else shape[2:4]
    size = [int(d) if isinstance(d, (int, np.integer)) and d > 0 else None for d in spatial]
    if size != [None, None]:
        declared = [int(d) if d else None for d in meta.input_size]
        if declared != [None, None] and declared != size:
            raise MetadataError(f"{source}: {card} says input size {declared}, the {network} takes {size}")
        meta.input_size = size


class Backend(abc.ABC):
    """A loaded network that maps a prepared batch to raw outputs.

    Attributes:
        name: One of ``"onnxruntime"``, ``"openvino"``, ``"tensorrt"``, ``"torch"``, ``"triton"``; reported by
            bench and eval.
        meta: The model card read from the artefact; the Segmenter trusts it for sizes, normalisation and classes.
        providers: What really executes the graph (for ONNX Runtime the providers of the created session, otherwise
            e.g. ``["cuda:0"]``), so a report can never claim a GPU run that fell back to the CPU.
        device: Short form of where it runs (``"cpu"``, ``"cuda:0"``, ``"tensorrt:0"``, a server address).
        compute_precision: The precision the engine really computes in, read back from the compiled model where the
            engine may choose one other than the graph's (OpenVINO: ``"bf16"``, ``"int8 (3/5 conv) + fp32"``);
            ``None`` where the graph's own precision (``meta.precision``) is what runs.
        max_batch: Largest batch one :meth:`run` call accepts (``None``: no limit). Static-batch models say 1 here
            and the Segmenter splits bigger batches.
    """

    name: str = ""
    meta: ModelMeta
    providers: list[str]
    device: str = "cpu"
    compute_precision: str | None = None
    max_batch: int | None = None

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a batch laid out as ``meta`` describes; return the output as a host numpy array.

        The call returns only when the result is on the host, so timing it measures the whole inference including
        the device round trip (no asynchronous work is left pending). It may be called from several threads at
        once (the HTTP server does); a backend with per-call state makes the callers take turns.
        """

    def close(self) -> None:
        """Release sessions, device buffers or connections; the default has nothing to release."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.meta.model!r}, device={self.device!r}, providers={self.providers})"
