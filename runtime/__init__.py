"""edgeseg's torch-free runtime: load a deployed model and segment images, datasets and video with it.

Everything here runs on numpy, OpenCV and onnxruntime alone (TensorRT and Triton clients are imported only when such
a model is opened), so a Jetson image or a slim server container needs no torch::

    from edgeseg.runtime import Segmenter
    seg = Segmenter.load("model.onnx")
    class_map = seg.segment(rgb_image)
"""

import importlib

# The public names load on first use, so that ``from edgeseg.runtime.errors import ...`` (training and export
# import the runtime's leaf modules) costs no OpenCV or ONNX Runtime import.
_EXPORTS = {"ClassSpec": ".classes", "ConfusionMatrix": ".metrics", "ModelMeta": ".metadata",
            "Segmenter": ".segmenter", "open_dataset": ".datasets"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
