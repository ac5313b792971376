"""Screenshot of the ``edgeseg serve`` page with a live video stream, taken by headless Chromium.

Starts ``edgeseg serve MODEL --source VIDEO`` on 127.0.0.1 (free port), waits until the stream pipeline has produced
frames, opens ``/`` in headless Chromium (``apt-get install -y chromium``), lets the page run for a few seconds of
virtual time so the MJPEG image and the polled FPS/latency figures fill in, and saves
``benchmarks/results/serve_page.png``. The server is stopped afterwards; all traffic stays on 127.0.0.1.

The model: ``--model PATH``, else the newest ``.onnx`` under ``runs/``, else a freshly initialised Fast-SCNN student
exported as in ``serve_load.py`` (its overlay is then noise: the page, stream and figures are what this checks).

Usage: ``python benchmarks/serve_screenshot.py [--model M.onnx] [--source VIDEO] [--out PNG]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from edgeseg.runtime.datasets import data_path
from edgeseg.runtime.atomic_files import write_bytes_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import Server, build_student  # a sibling script, imported after the path is set

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "serve_page.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Everything that would make Chromium reach beyond this machine is switched off.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def find_model(scratch: Path) -> tuple[Path, str]:
    runs = sorted((ROOT / "runs").glob("**/*.onnx"), key=lambda p: p.stat().st_mtime) if (ROOT / "runs").is_dir() \
        else []
    if runs:
        return runs[-1], "newest ONNX model under runs/"
    return build_student("fastscnn", (256, 320), scratch), "fastscnn student, freshly initialised (random weights)"


def wait_for_frames(url: str, timeout_s: float = 60.0) -> dict:
    """Open the stream once (the pipeline starts with its first viewer) and wait until it reports an FPS."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as client, client.stream("GET", "/v1/stream") as response:
        response.raise_for_status()
        for _ in response.iter_bytes():
            stats = client.get("/v1/stats").json()["stream"]
            if stats["frames"] >= 10 and stats["fps"] > 0:
                return stats
            if time.monotonic() > deadline:
                raise SystemExit(f"the stream produced no frames in {timeout_s:.0f} s: {stats}")
    raise SystemExit("the stream ended")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--source", help="video URI or file (default $EDGESEG_DATA/video/solidWhiteRight.mp4)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--window", default="1280,800", help="browser window size WIDTH,HEIGHT")
    parser.add_argument("--budget-ms", type=int, default=4000, help="virtual time the page runs before the shot")
    args = parser.parse_args()

    chromium = next((shutil.which(name) for name in CHROMIUM_NAMES if shutil.which(name)), None)
    if chromium is None:
        raise SystemExit("no Chromium found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="serve_screenshot_") as scratch:
        model, description = (args.model, "given with --model") if args.model else find_model(Path(scratch))
        source = args.source or str(data_path("video/solidWhiteRight.mp4"))
        server = Server(model, ("--source", source))
        try:
            stats = wait_for_frames(server.url)
            print(f"stream running: {stats['fps']:.1f} FPS, {stats['frame_ms']:.0f} ms per frame")
            shot = Path(scratch) / "page.png"
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={Path(scratch) / 'profile'}",
                            f"--window-size={args.window}", f"--virtual-time-budget={args.budget_ms}",
                            f"--screenshot={shot}", server.url + "/"],
                           check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            write_bytes_atomic(args.out, shot.read_bytes())
        finally:
            server.stop()
    print(f"model: {model.name} ({description}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
