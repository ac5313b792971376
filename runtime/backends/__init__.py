"""Backend registry: picks the inference engine from the model's file suffix or URI scheme.

Built-in entries import their heavy dependency (onnxruntime, tensorrt, tritonclient) only when a model of that kind
is opened, so importing the runtime stays cheap and torch-free. The training stage adds ``.pt`` by calling
:func:`register_backend` when ``edgeseg.training.inference`` is imported.

A factory is called as ``factory(path_or_uri, device)`` and returns a :class:`~.base.Backend`; ``device`` is the
user's string (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"tensorrt"``), which the factory interprets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import BackendUnavailable, ModelFormatError
from .base import Backend

BackendFactory = Callable[[str, str], Backend]

BACKEND_KEYS: dict[str, tuple[str, ...]] = {
    "onnxruntime": (".onnx",),
    "tensorrt": (".engine", ".plan"),
    "torch": (".pt",),
    "triton": ("triton://",),
}
"""Which suffixes or schemes each backend name serves; ``backend=`` must agree with the model's kind."""

BACKEND_NAMES = ("auto", *BACKEND_KEYS)

_FACTORIES: dict[str, BackendFactory] = {}


def register_backend(key: str, factory: BackendFactory) -> None:
    """Make models whose suffix (``".pt"``) or scheme (``"triton://"``) is ``key`` open with ``factory``.

    Registering a key again replaces the earlier factory, so a plugin can override a built-in backend.
    """
    if not (key.startswith(".") or key.endswith("://")):
        raise ValueError(f"backend key must be a suffix like '.onnx' or a scheme like 'triton://', got {key!r}")
    _FACTORIES[key.lower()] = factory


def registered_keys() -> list[str]:
    return sorted(_FACTORIES)


def model_key(path: str) -> str:
    """The registry key of a model path or URI: its scheme (``"triton://"``) or its lower-case suffix."""
    if "://" in path:
        return path.split("://", 1)[0].lower() + "://"
    return Path(path).suffix.lower()


def open_backend(path: str | Path, backend: str = "auto", device: str = "auto") -> Backend:
    """Open ``path`` with the backend its suffix or scheme calls for.

    Raises:
        ModelFormatError: the file does not exist, its kind is unknown, or ``backend`` cannot run this kind.
        BackendUnavailable: the backend's package is missing (``.pt`` without the training stage, TensorRT, ...).
    """
    path = str(path)
    key = model_key(path)
    if backend not in BACKEND_NAMES:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if backend != "auto" and key not in BACKEND_KEYS[backend]:
        hint = (" To run an ONNX model through TensorRT without building an engine, use backend 'onnxruntime' with "
                "device 'tensorrt' (ONNX Runtime's TensorRT provider)." if backend == "tensorrt" and key == ".onnx"
                else "")
        kinds = " / ".join(BACKEND_KEYS[backend])
        raise ModelFormatError(f"backend {backend!r} runs {kinds} models, not {path}.{hint}")
    if not key.endswith("://") and not Path(path).is_file():
        raise ModelFormatError(f"model file not found: {path}")
    factory = _FACTORIES.get(key)
    if factory is None:
        if key == ".pt":
            raise BackendUnavailable(
                f"{path} is a PyTorch checkpoint, which the torch-free runtime cannot run by itself: install the "
                "training stage (pip install 'edgeseg[train]') and import edgeseg.training.inference, which "
                "registers the .pt backend (the edgeseg CLI does this for you), or run the exported .onnx instead")
        known = ", ".join([*registered_keys(), ".pt"])
        raise ModelFormatError(f"cannot tell how to run {path}: unknown model type {key or '(no suffix)'!r}; "
                               f"expected one of {known} (e.g. triton://localhost:8001/model)")
    return factory(path, device)


def _open_onnxruntime(path: str, device: str) -> Backend:
    from .onnx_runtime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, device=device)


def _open_tensorrt(path: str, device: str) -> Backend:
    from .tensorrt_engine import TensorRTBackend

    return TensorRTBackend(path, device=device)


def _open_triton(uri: str, device: str) -> Backend:
    from .triton_client import TritonBackend

    return TritonBackend(uri, device=device)


register_backend(".onnx", _open_onnxruntime)
register_backend(".engine", _open_tensorrt)
register_backend(".plan", _open_tensorrt)
register_backend("triton://", _open_triton)

__all__ = ["BACKEND_KEYS", "BACKEND_NAMES", "Backend", "BackendFactory", "model_key", "open_backend",
           "register_backend", "registered_keys"]
