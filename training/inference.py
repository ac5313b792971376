"""Run edgeseg checkpoints (.pt) through the runtime's Segmenter, as PyTorch eager models.

Importing this module registers the ``.pt`` backend with ``edgeseg.runtime``; the runtime itself never imports
torch. Scoring a checkpoint this way uses exactly the pre/post-processing of the deployed ONNX model, which is what
makes "checkpoint mIoU == exported mIoU" a meaningful check.
"""

from __future__ import annotations

import numpy as np
import torch

from edgeseg.runtime.backends import register_backend
from edgeseg.runtime.backends.base import Backend, parse_device
from edgeseg.runtime.errors import BackendUnavailable

from .checkpoint import build_model_from_card, card_to_meta, load_checkpoint


class TorchBackend(Backend):
    """A checkpoint's network in eval mode; float NCHW normalised batches in, NCHW logits out."""

    name = "torch"

    def __init__(self, path: str, device: str = "auto") -> None:
        kind, index = parse_device(device)
        if kind == "tensorrt":
            raise BackendUnavailable(f"{path}: the torch backend runs on cpu or cuda; export the checkpoint to "
                                     "ONNX/TensorRT for device tensorrt")
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"{path}: device {device!r} asked for, but torch sees no CUDA GPU")
        use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
        self.torch_device = torch.device(f"cuda:{index}" if use_cuda else "cpu")
        card = load_checkpoint(path)
        self.meta = card_to_meta(card, batch=None, extra={"source": str(path)})
        self.model = build_model_from_card(card).to(self.torch_device).eval()
        self.device = str(self.torch_device)
        self.providers = [f"torch-{self.device}"]

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.torch_device)
        logits = self.model(tensor)
        return logits.float().cpu().numpy()


def _open_checkpoint(path: str, device: str) -> Backend:
    return TorchBackend(path, device=device)


register_backend(".pt", _open_checkpoint)
