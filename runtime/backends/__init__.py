"""Backend registry: picks the inference engine from the model's file suffix or URI scheme.

Built-in entries import their heavy dependency (onnxruntime, tensorrt, tritonclient) only when a model of that kind
is opened, so importing the runtime stays cheap and torch-free. The training stage adds ``.pt`` by calling
:func:`register_backend` when ``edgeseg.training.inference`` is imported.

A factory is called as ``factory(path_or_uri, device, **options)`` and returns a :class:`~.base.Backend`; ``device``
is the user's string (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"tensorrt"``), which the factory interprets,
and ``options`` are the backend's own settings listed in :data:`BACKEND_OPTIONS` (none for most). OpenVINO also runs
``.onnx`` files, so it is chosen by name only: ``auto`` keeps ONNX Runtime for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import BackendUnavailable, ModelFormatError
from .base import Backend

BackendFactory = Callable[..., Backend]

BACKEND_KEYS: dict[str, tuple[str, ...]] = {
    "onnxruntime": (".onnx",),
    "openvino": (".onnx",),
    "tensorrt": (".engine", ".plan"),
    "torch": (".pt",),
    "triton": ("triton://",),
}
"""Which suffixes or schemes each backend name serves; ``backend=`` must agree with the model's kind."""

BACKEND_NAMES = ("auto", *BACKEND_KEYS)

BACKEND_OPTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("threads", "spinning"),
    "openvino": ("threads", "precision"),
}
"""The keyword options each backend's factory takes; any other is refused with the backends that do take it."""

_FACTORIES: dict[str, BackendFactory] = {}
_NAMED_FACTORIES: dict[str, BackendFactory] = {}
"""Backends for a kind that another backend serves by default, opened only when asked for by name."""


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


def backend_name(path: str | Path, backend: str = "auto") -> str | None:
    """The backend that opens ``path``: ``backend`` itself, or for ``auto`` the first of :data:`BACKEND_KEYS` that
    serves its suffix or scheme (``None`` for a kind only a plugin knows)."""
    if backend != "auto":
        return backend
    key = model_key(str(path))
    return next((name for name, keys in BACKEND_KEYS.items() if key in keys), None)


def open_backend(path: str | Path, backend: str = "auto", device: str = "auto", **options) -> Backend:
    """Open ``path`` with the backend its suffix or scheme calls for (or ``backend``, which must run that kind).

    ``options`` are backend settings such as ``precision="bf16"`` for OpenVINO (see :data:`BACKEND_OPTIONS`); one
    set to ``None`` counts as not given, so callers can pass through unset command-line flags.

    Raises:
        ModelFormatError: the file does not exist, its kind is unknown, or ``backend`` cannot run this kind.
        BackendUnavailable: the backend's package is missing (``.pt`` without the training stage, TensorRT, ...), or
            it takes no such option.
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
    options = {name: value for name, value in options.items() if value is not None}
    chosen = backend_name(path, backend)
    for option in sorted(set(options) - set(BACKEND_OPTIONS.get(chosen or "", ()))):
        takers = [name for name, names in BACKEND_OPTIONS.items() if option in names]
        raise BackendUnavailable(f"backend {chosen or key!r} takes no option {option!r}"
                                 + (f" (it is an option of {', '.join(takers)})" if takers else ""))
    factory = _NAMED_FACTORIES.get(backend) or _FACTORIES.get(key)
    if factory is None:
        if key == ".pt":
            raise BackendUnavailable(
                f"{path} is a PyTorch checkpoint, which the torch-free runtime cannot run by itself: install the "
                "training stage (pip install 'edgeseg[train]') and import edgeseg.training.inference, which "
                "registers the .pt backend (the edgeseg CLI does this for you), or run the exported .onnx instead")
        known = ", ".join([*registered_keys(), ".pt"])
        raise ModelFormatError(f"cannot tell how to run {path}: unknown model type {key or '(no suffix)'!r}; "
                               f"expected one of {known} (e.g. triton://localhost:8001/model)")
    return factory(path, device, **options)


def _open_onnxruntime(path: str, device: str, **options) -> Backend:
    from .onnx_runtime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, device=device, **options)


def _open_openvino(path: str, device: str, **options) -> Backend:
    try:
        from .openvino_runtime import OpenVinoBackend
    except ImportError as err:
        raise BackendUnavailable(f"backend 'openvino' needs OpenVINO (pip install 'edgeseg[openvino]'): "
                                 f"{err}") from None
    return OpenVinoBackend(path, device=device, **options)


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
_NAMED_FACTORIES["openvino"] = _open_openvino

__all__ = ["BACKEND_KEYS", "BACKEND_NAMES", "BACKEND_OPTIONS", "Backend", "BackendFactory", "backend_name",
           "model_key", "open_backend", "register_backend", "registered_keys"]
