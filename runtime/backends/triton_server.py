"""A real Triton Inference Server on loopback without containers: the ``tritonserver`` of the ``nvidia-pytriton`` wheel.

The wheel (``pip install --no-deps nvidia-pytriton==0.7.0``; see README) ships a CPU-capable ``tritonserver`` with
Triton's Python backend and no other backend, so it serves repositories written by ``edgeseg export --format triton
--triton-backend python``. Tests and benchmarks use it; so can a user who wants a local Triton::

    with TritonServer("model_repository") as server:
        segmenter = Segmenter.load(server.uri("fastscnn"))

How the Python backend is made to work from the wheel: each ``model.py`` runs in a stub process that embeds a
libpython of one minor version (the wheel has one stub per version). The stub must sit beside the backend library,
so the backend folder is assembled in a temporary workspace with the stub of *this* Python, and this Python's
libpython goes first on ``LD_LIBRARY_PATH``. The embedded interpreter ignores ``PYTHONPATH`` but finds its prefix by
searching ``PATH`` for ``python3``; a throw-away virtual environment first on ``PATH`` therefore decides what the stub
imports: :data:`STUB_SITE`, then this environment's site-packages (onnxruntime). The stub's pybind11 predates numpy 2:
under numpy 2 its ``as_numpy`` reads the wrong bytes and its output tensors come back empty (tried), so
:data:`STUB_SITE` holds numpy<2 (``make setup`` installs it; ONNX Runtime runs on numpy 1.x as well).
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import os
import re
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

from ..errors import BackendUnavailable

READY_TIMEOUT_S = 60.0
"""How long a start may take until ``/v2/health/ready`` answers 200 (loading models included)."""
STOP_TIMEOUT_S = 30.0
_SHM_BYTES = 4 * 1024 * 1024
"""Initial and growth size of each model instance's shared-memory region (Docker's /dev/shm is 64 MiB)."""
STUB_SITE = Path(sys.prefix) / "triton-python"
"""Default folder with numpy<2 for the Python backend stub: ``pip install --target .venv/triton-python 'numpy<2'``."""
_ERROR_LINE = re.compile(r'^E\d{4} [^\]]*\] "?(.*?)"?$')


class TritonServerError(BackendUnavailable):
    """The bundled tritonserver is missing, cannot run here, or did not become ready."""


def bundled_server() -> tuple[Path, Path]:
    """Paths of the wheel's ``tritonserver`` folder and of its shared libraries (``nvidia_pytriton.libs``)."""
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it (and its pinned deps)
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("no bundled tritonserver: pip install --no-deps nvidia-pytriton==0.7.0 (or make setup)")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonServerError(f"{package} holds no tritonserver binary; reinstall nvidia-pytriton")
    return root, package.parent / "nvidia_pytriton.libs"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _check_stub_numpy(python_path: list[str]) -> None:
    """Refuse a numpy the stub would misread (see the module docstring) before any model loads with it."""
    found = next(iter(importlib.metadata.distributions(name="numpy", path=python_path + sys.path)), None)
    if found is None or int(found.version.split(".")[0]) >= 2:
        version = f"numpy {found.version}" if found else "no numpy"
        raise TritonServerError(f"the bundled Python backend would run with {version} but needs numpy<2 (its pybind11 "
                                f"predates numpy 2): pip install --target {STUB_SITE} 'numpy<2' (make setup does), "
                                "or pass python_path")


def _python_environment(root: Path, workspace: Path, libs: Path, python_path: list[str]) -> dict[str, str]:
    """Backend folder with this Python's stub in ``workspace``; the environment that lets the stub embed it."""
    _check_stub_numpy(python_path)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        shipped = sorted(p.name for p in (root / "python_backend_stubs").iterdir())
        raise TritonServerError(f"nvidia-pytriton has Python backend stubs for {', '.join(shipped)}, not {version}")
    library_paths = [str(libs)]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        library_paths.insert(0, sysconfig.get_config_var("LIBDIR"))
    elif ctypes.util.find_library(f"python{version}") is None:
        raise TritonServerError(f"Triton's Python backend stub needs libpython{version}.so, which {sys.executable} "
                                "lacks (a Python built with --enable-shared has it)")
    stub_python = workspace / "python"
    venv.EnvBuilder(symlinks=True).create(stub_python)
    site_packages = next((stub_python / "lib").glob("python*/site-packages"))
    lines = python_path + [f"import site; site.addsitedir({folder!r})" for folder in site.getsitepackages()]
    (site_packages / "edgeseg_stub.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")
    backend = workspace / "backends" / "python"
    shutil.copytree(root / "backends" / "python", backend)
    shutil.copy2(stub, backend / stub.name)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(stub_python / "bin"), env.get("PATH", "")])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_paths + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


def _end_group(group: int, timeout_s: float = 5.0) -> None:
    """Kill what is left of the server's session (the stubs of a crashed server) and wait until it is gone."""
    deadline = time.monotonic() + timeout_s
    try:
        os.killpg(group, signal.SIGKILL)
        while time.monotonic() < deadline:  # killed stubs count until their new parent has reaped them
            time.sleep(0.05)
            os.killpg(group, 0)
    except ProcessLookupError:
        pass


class TritonServer:
    """The bundled ``tritonserver`` serving ``repository`` on ``host`` (loopback by default); a context manager.

    Ports default to free ones chosen at start; ``python_path`` folders come first on the Python backend's
    ``sys.path`` (default: :data:`STUB_SITE` where it exists). :meth:`start` returns once ``/v2/health/ready`` says
    200, i.e. every model in the repository has loaded; a server that exits or stays unready raises
    :class:`TritonServerError` with the server's own error lines. :meth:`stop` ends it with SIGINT (SIGKILL after
    ``STOP_TIMEOUT_S``) and removes its
    stub processes, shared-memory regions and workspace, also after a crash.
    """

    def __init__(self, repository: str | Path, *, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 python_path: list[str | Path] | None = None, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.repository = Path(repository).resolve()
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        if python_path is None:
            python_path = [STUB_SITE] if STUB_SITE.is_dir() else []
        self.python_path = [str(Path(folder).resolve()) for folder in python_path]
        self.ready_timeout_s = ready_timeout_s
        self.shm_prefix = f"edgeseg-triton-{os.getpid()}-{secrets.token_hex(4)}-"
        self.process: subprocess.Popen | None = None
        self._workspace: Path | None = None
        self._log_text = ""

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports['grpc']}"

    def uri(self, model: str, protocol: str = "grpc") -> str:
        """The ``triton://`` URI of ``model`` on this server, for :meth:`Segmenter.load`."""
        return f"triton://{self.host}:{self.ports[protocol]}/{model}?protocol={protocol}"

    @property
    def log(self) -> str:
        """Everything the server printed so far (kept after :meth:`stop`)."""
        if self._workspace is not None and (self._workspace / "server.log").exists():
            self._log_text = (self._workspace / "server.log").read_text(encoding="utf-8", errors="replace")
        return self._log_text

    def errors(self) -> list[str]:
        """The server's error lines, without the CUDA notices every GPU-less host prints."""
        found = (_ERROR_LINE.match(line) for line in self.log.splitlines())
        return [m.group(1) for m in found if m and "cuda" not in m.group(1).lower()]

    def start(self) -> "TritonServer":
        if self.process is not None:
            raise TritonServerError("this TritonServer is already started")
        if not (self.repository.is_dir() and any(self.repository.glob("*/config.pbtxt"))):
            raise TritonServerError(f"{self.repository} is no Triton model repository (no <model>/config.pbtxt)")
        root, libs = bundled_server()
        self._workspace = Path(tempfile.mkdtemp(prefix="edgeseg-tritonserver-"))
        try:
            env = _python_environment(root, self._workspace, libs, self.python_path)
            for kind, port in self.ports.items():
                self.ports[kind] = port or free_port(self.host)
            command = [
                str(root / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={self._workspace / 'backends'}",
                f"--http-address={self.host}", f"--http-port={self.ports['http']}",
                f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                f"--backend-config=python,shm-default-byte-size={_SHM_BYTES}",
                f"--backend-config=python,shm-growth-byte-size={_SHM_BYTES}",
                "--exit-timeout-secs=5",
            ]
            with open(self._workspace / "server.log", "wb") as log:
                # A session of its own, so that stop() can also end the Python stubs of a server that crashed.
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while True:
            code = self.process.poll()
            if code is not None:
                reasons = "; ".join(self.errors()) or "no error line; see TritonServer.log"
                raise TritonServerError(f"tritonserver for {self.repository} exited with code {code} before it was "
                                        f"ready: {reasons}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):  # not listening yet, or 400 while models load
                pass
            if time.monotonic() > deadline:
                raise TritonServerError(f"tritonserver for {self.repository} was not ready after "
                                        f"{self.ready_timeout_s:.0f} s: {'; '.join(self.errors()) or 'no error yet'}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        """Stop the server and clean up after it; returns its exit code (None if it never started)."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            code = self.process.wait()
            _end_group(self.process.pid)
            self.process = None
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
        if self._workspace is not None:
            self._log_text = self.log  # kept once the workspace is gone
            shutil.rmtree(self._workspace, ignore_errors=True)
            self._workspace = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
