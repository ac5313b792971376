"""edgeseg's torch-free runtime: load a deployed model and segment images, datasets and video with it.

Everything here runs on numpy, OpenCV and onnxruntime alone (TensorRT and Triton clients are imported only when such
a model is opened), so a Jetson image or a slim server container needs no torch::

    from edgeseg.runtime import Segmenter
    seg = Segmenter.load("model.onnx")
    class_map = seg.segment(rgb_image)
"""

from .classes import ClassSpec
from .metadata import ModelMeta
from .metrics import ConfusionMatrix
from .segmenter import Segmenter


def __getattr__(name: str):
    # The dataset readers are loaded on first use: most runtime users (video, serve) never read a dataset.
    if name == "open_dataset":
        from .datasets import open_dataset

        return open_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClassSpec", "ConfusionMatrix", "ModelMeta", "Segmenter", "open_dataset"]
