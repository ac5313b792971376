"""Triton backend: sends prepared batches to a model served by Triton Inference Server.

URI form: ``triton://host[:port]/model[/version][?protocol=grpc|http]``. Without ``protocol`` the port decides:
8000 (Triton's HTTP default) means HTTP, anything else gRPC; the default port is 8001 (gRPC). The model card comes
from the ``edgeseg`` parameter of the model's config (``config.pbtxt``), which ``edgeseg export`` writes for a
Triton model repository; pre- and post-processing stay on this side, identical to every other backend.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..errors import BackendUnavailable, MetadataError, ModelFormatError
from ..metadata import METADATA_KEY, ModelMeta
from .base import Backend, parse_device

HTTP_PORT = 8000
GRPC_PORT = 8001
CONNECT_TIMEOUT_S = 5.0
"""How long to wait for a Triton server to answer the first health probe before saying it is unreachable."""
INFER_TIMEOUT_S = 60.0

TRITON_DTYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
}


@dataclass(frozen=True)
class TritonAddress:
    """Where a Triton model lives and how to talk to it."""

    host: str
    port: int
    model: str
    version: str = ""
    protocol: str = "grpc"

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        version = f"/{self.version}" if self.version else ""
        return f"triton://{self.url}/{self.model}{version} ({self.protocol})"


def parse_triton_uri(uri: str) -> TritonAddress:
    """``triton://host[:port]/model[/version][?protocol=grpc|http]`` -> :class:`TritonAddress`."""
    form = "triton://host[:port]/model[/version][?protocol=grpc|http]"
    parts = urlsplit(uri)
    if parts.scheme.lower() != "triton":
        raise ModelFormatError(f"{uri!r} is not a Triton URI; expected {form}")
    try:
        port = parts.port
    except ValueError:
        raise ModelFormatError(f"{uri!r}: the port must be a number; expected {form}") from None
    segments = [s for s in parts.path.split("/") if s]
    if not parts.hostname or not segments or len(segments) > 2:
        raise ModelFormatError(f"{uri!r} names no host and model; expected {form}, e.g. triton://localhost:8001/"
                               "bisenet")
    protocols = parse_qs(parts.query).get("protocol", [])
    if protocols:
        protocol = protocols[-1].lower()
        if protocol not in ("grpc", "http"):
            raise ModelFormatError(f"{uri!r}: protocol must be grpc or http, got {protocol!r}")
    else:
        protocol = "http" if port == HTTP_PORT else "grpc"
    if port is None:
        port = HTTP_PORT if protocol == "http" else GRPC_PORT
    version = segments[1] if len(segments) == 2 else ""
    return TritonAddress(parts.hostname, port, segments[0], version, protocol)


def meta_from_config(config: dict, address: TritonAddress) -> ModelMeta:
    """The model card stored as the ``edgeseg`` string parameter of a Triton model config (JSON form)."""
    parameter = (config.get("parameters") or {}).get(METADATA_KEY)
    text = parameter.get("string_value") if isinstance(parameter, dict) else None
    if not text:
        raise MetadataError(f"{address}: the model config has no '{METADATA_KEY}' parameter, so the runtime cannot "
                            "know its classes, palette or normalisation; deploy the model repository written by "
                            "'edgeseg export' for Triton, which adds it to config.pbtxt")
    return ModelMeta.from_json(text, source=str(address))


def _one_line(err: Exception) -> str:
    """A client error as one line (gRPC and greenlet errors span several), or its type when it says nothing."""
    return " ".join(str(err).split()) or type(err).__name__


class TritonBackend(Backend):
    """A model on a Triton server; the server's config decides which GPU (instance_group), so ``device`` is auto."""

    name = "triton"

    def __init__(self, uri: str, device: str = "auto") -> None:
        self.address = parse_triton_uri(uri)
        if parse_device(device)[0] != "auto":
            raise BackendUnavailable(f"{self.address}: the server's model config places the model on its devices; "
                                     f"leave device as auto instead of {device!r}")
        try:
            self._client_module = importlib.import_module(f"tritonclient.{self.address.protocol}")
        except ImportError as err:
            raise BackendUnavailable(f"{uri} needs the Triton client: pip install 'edgeseg[triton]' ({err})") from err
        self._grpc = self.address.protocol == "grpc"
        # The gRPC client serves concurrent calls from any thread. The HTTP client (geventhttpclient) holds one
        # connection and works only in the thread that created it (elsewhere, e.g. in the video pipeline's inference
        # thread, it fails with "Cannot switch to a different thread"), so every HTTP call, its creation and close
        # included, runs in turn on one thread of its own.
        self._http_thread = None if self._grpc else ThreadPoolExecutor(1, thread_name_prefix="edgeseg-triton-http")
        try:
            self.client = self._call(self._connect)
            config = self._call(self._model_config)
        except BaseException:
            self.close()
            raise
        self.meta = meta_from_config(config, self.address)
        self.max_batch = int(config.get("max_batch_size") or 0) or self.meta.batch
        self.device = self.address.url
        self.providers = [f"triton-{self.address.protocol}:{self.address.url}"]

    def _call(self, function):
        return function() if self._http_thread is None else self._http_thread.submit(function).result()

    def _connect(self):
        module = self._client_module
        try:
            if self._grpc:
                client = module.InferenceServerClient(url=self.address.url)
                live = client.is_server_live(client_timeout=CONNECT_TIMEOUT_S)
            else:
                client = module.InferenceServerClient(url=self.address.url, connection_timeout=CONNECT_TIMEOUT_S,
                                                      network_timeout=INFER_TIMEOUT_S)
                live = client.is_server_live()
        except Exception as err:  # socket, gRPC and client errors all mean the same thing to the user here
            raise BackendUnavailable(f"cannot reach a Triton server at {self.address}: {_one_line(err)}") from err
        if not live:
            raise BackendUnavailable(f"the Triton server at {self.address} answers but is not live")
        return client

    def _model_config(self) -> dict:
        try:
            if self._grpc:
                config = self.client.get_model_config(self.address.model, self.address.version, as_json=True,
                                                      client_timeout=CONNECT_TIMEOUT_S)
            else:
                config = self.client.get_model_config(self.address.model, self.address.version)
        except Exception as err:
            raise ModelFormatError(f"{self.address}: the server does not serve this model ({_one_line(err)})") from err
        return config.get("config", config)  # gRPC's JSON wraps the config, HTTP returns it bare

    def run(self, batch: np.ndarray) -> np.ndarray:
        module = self._client_module
        datatype = TRITON_DTYPES.get(batch.dtype)
        if datatype is None:
            raise ModelFormatError(f"{self.address}: cannot send {batch.dtype} tensors to Triton")
        request = module.InferInput(self.meta.input_name, list(batch.shape), datatype)
        request.set_data_from_numpy(np.ascontiguousarray(batch))
        wanted = [module.InferRequestedOutput(self.meta.output_name)]
        timeout = {"client_timeout": INFER_TIMEOUT_S} if self._grpc else {}

        def infer() -> np.ndarray:
            result = self.client.infer(self.address.model, [request], model_version=self.address.version,
                                       outputs=wanted, **timeout)
            return result.as_numpy(self.meta.output_name)

        try:
            return self._call(infer)
        except Exception as err:
            raise BackendUnavailable(f"{self.address}: inference request failed ({_one_line(err)})") from err

    def close(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            self._call(client.close)
        if self._http_thread is not None:
            self._http_thread.shutdown()
