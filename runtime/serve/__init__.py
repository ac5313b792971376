"""``edgeseg serve``: an HTTP segmentation service with dynamic batching, Prometheus metrics and a live video page.

Torch-free like the rest of the runtime (Starlette and uvicorn from the ``serve`` extra)::

    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.serve import ServeConfig, create_app
    app = create_app(Segmenter.load("model.onnx"), ServeConfig(max_batch=8, max_wait_ms=5))
"""

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
