"""``edgeseg serve MODEL``: load the model once per worker and run the HTTP service on uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading

import numpy as np

from ..arguments import add_model_arguments, backend_options, count_argument, fraction_argument, size_argument
from ..errors import EdgesegError

LOOPBACK = "127.0.0.1"
WARM_UP_SIZE = (256, 256)
GRACEFUL_SHUTDOWN_S = 3
"""Open MJPEG streams never end by themselves; on Ctrl-C they are cut after this many seconds."""


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than zero, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must lie in 0..65535, got {text}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default=LOOPBACK,
                        help="address to listen on (default %(default)s: this machine only; the service has no "
                             "authentication, so expose it only behind something that has)")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--source", metavar="URI",
                        help="video for the live stream at /v1/stream and on the page: a file (looped), camera, "
                             "RTSP/HTTP stream or image folder, in any form 'edgeseg video' accepts")
    parser.add_argument("--workers", type=count_argument(1), default=1, metavar="N",
                        help="inference threads, each with its own model session (default %(default)s)")
    parser.add_argument("--max-batch", type=count_argument(1), default=8, metavar="N",
                        help="most images per network call when the model has a dynamic batch axis; 1 turns "
                             "dynamic batching off (default %(default)s)")
    parser.add_argument("--max-wait-ms", type=_non_negative_float, default=5.0, metavar="MS",
                        help="how long a worker waits for more requests to fill a batch (default %(default)s)")
    parser.add_argument("--max-image-mb", type=_positive_float, default=20.0, metavar="MB",
                        help="largest request body in MiB (default %(default)s)")
    parser.add_argument("--max-megapixels-in-flight", type=_positive_float, default=100.0, metavar="MP",
                        help="pixels of all images being decoded or segmented at once; past it requests get 503 "
                             "with Retry-After. Image memory is about 9 bytes per pixel (default %(default)s MP, "
                             "about 900 MB)")
    parser.add_argument("--size", type=size_argument, metavar="HxW",
                        help="network input size for a model exported with dynamic height and width; without it "
                             "each image runs at its own size rounded to 32")
    parser.add_argument("--alpha", type=fraction_argument, default=0.5, metavar="A",
                        help="opacity of the class colours on the stream (default %(default)s)")
    parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default %(default)s)")


# Request line plus headers: past this h11 answers 431/400 instead of buffering (a 64 MB header was accepted).
MAX_HEADER_BYTES = 64 * 1024


def server_config(app, *, log_level: str = "warning", access_log: bool = False):
    """The uvicorn settings of ``edgeseg serve`` (also used by the tests, so they run what users run)."""
    import uvicorn

    return uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                          http=_counting_protocol(app.state.server.metrics),
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


HTTP_LAYER_ENDPOINT = "http"
"""The ``endpoint`` label of requests the HTTP layer refuses before any route sees them."""


def _counting_protocol(metrics):
    """uvicorn's h11 protocol, counting into ``metrics`` the requests it answers 400 by itself.

    A malformed request line, a bad Content-Length or a header block over ``MAX_HEADER_BYTES`` never reaches the
    application, so without this they would be missing from ``/metrics`` (the 400 is uvicorn's single such answer).
    h11 bounds only a header block that is still incomplete when a read ends; one that arrives whole in a single
    read (a 100 KB URL does) is measured here before h11 parses it.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class CountingH11Protocol(H11Protocol):
        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:  # between requests: the next bytes start a header block
                pending = self.conn.trailing_data[0] + data
                end = pending.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
                if end < 0 and len(pending) > MAX_HEADER_BYTES:
                    self.send_400_response("Request line and headers larger than "
                                           f"{MAX_HEADER_BYTES // 1024} KiB.")
                    return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            metrics.requests.inc(endpoint=HTTP_LAYER_ENDPOINT, status="400")
            metrics.errors.inc(endpoint=HTTP_LAYER_ENDPOINT, kind="client")
            super().send_400_response(msg)

    return CountingH11Protocol


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so that a busy port is one clear error instead of a uvicorn traceback."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, IndexError) as err:
        raise EdgesegError(f"cannot resolve --host {host!r}: {err}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise EdgesegError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _interrupt_raises_keyboard_interrupt():
    """Make Ctrl-C end ``edgeseg serve`` as an interrupt (exit code 130), not as a clean exit.

    uvicorn shuts down gracefully on SIGINT and then re-raises the signal to the handler it found. Python's default
    handler would be swapped by asyncio's runner for one that only cancels its task, so the interrupt would be lost;
    an explicit handler survives both and turns the re-raised signal into KeyboardInterrupt for the CLI.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warm_up(segmenter) -> None:
    """One blank image per session before the port opens: the first run allocates buffers and picks kernels, and
    that cost belongs to start-up, not to the first client's latency."""
    height, width = segmenter.input_size or WARM_UP_SIZE
    segmenter.segment(np.zeros((height, width, 3), dtype=np.uint8))


def _check_source(uri: str) -> None:
    """Open the stream source once before loading the model, so a typo or a corrupt file fails at start-up."""
    from ..video.sources import open_source

    open_source(uri).close()


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as err:
        raise EdgesegError(f"edgeseg serve needs the serve extra (pip install 'edgeseg[serve]'): {err}") from None
    from ..backends.base import THREADS_ENV, default_threads
    from ..segmenter import Segmenter
    from .app import ServeConfig, create_app

    if args.source is not None:
        _check_source(args.source)
    if args.workers > 1 and THREADS_ENV not in os.environ:
        # N sessions each spreading over every core would fight over them; give each its share instead.
        os.environ[THREADS_ENV] = str(max(1, default_threads() // args.workers))

    segmenters = []
    try:
        for _ in range(args.workers):
            segmenters.append(Segmenter.load(args.model, backend=args.backend, device=args.device, size=args.size,
                                             **backend_options(args, "serve")))
            _warm_up(segmenters[-1])
        config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_image_bytes=int(args.max_image_mb * 2 ** 20), source=args.source,
                             max_pixels_in_flight=int(args.max_megapixels_in_flight * 1e6),
                             stream_alpha=args.alpha)
        app = create_app(segmenters, config)
        sock = _listen(args.host, args.port)
        host, port = sock.getsockname()[:2]
        seg = segmenters[0]
        batcher = app.state.server.batcher
        url_host = f"[{host}]" if ":" in host else host
        print(f"edgeseg serve: {seg.meta.model} on {seg.backend.name} ({', '.join(seg.providers)}), "
              f"{args.workers} worker(s), max batch {batcher.max_batch}"
              f"{'' if batcher.max_batch == args.max_batch else ' (the model has a fixed batch axis)'}"
              f"{', stream from ' + args.source if args.source else ''}", file=sys.stderr)
        if not _is_loopback(args.host):
            print(f"edgeseg serve: listening on {args.host}, beyond this machine; the service has no "
                  "authentication", file=sys.stderr)
        print(f"edgeseg serve: listening on http://{url_host}:{port}/", file=sys.stderr, flush=True)
        server = uvicorn.Server(server_config(app, log_level=args.log_level, access_log=args.access_log))
        with _interrupt_raises_keyboard_interrupt():
            server.run(sockets=[sock])
        return 0 if server.started else 1
    finally:
        for seg in segmenters:
            seg.close()
