"""Load test of ``edgeseg serve``: throughput and latency without and with dynamic batching.

The script starts one ``edgeseg serve`` per configuration (``--compare batching``, the default: ``--max-batch 1``
and ``--max-batch 8 --max-wait-ms 5``; ``--compare spinning``: batching on, ONNX Runtime's thread spinning off and
on, issue 17) on 127.0.0.1 with OS-chosen ports, then sends each a bounded number of ``POST /v1/segment``
requests with a fixed number in flight (asyncio + httpx), alternating between them over ``--rounds`` so that a slow
spell of a shared machine does not land on one configuration only, and stops the servers at the end. Every request
asks for the PNG class map of the same 360x480 CamVid JPEG; throughput counts completed requests per wall-clock
second, latency is measured by the client from sending to the last byte, and the server's CPU time per request is
read from /proc (unlike throughput, it hardly depends on what else the machine is running). Results go to
``benchmarks/results/serve_load.{md,json}`` (``--results`` names another stem).

Batching can only save network time. ``--send-size`` and ``--answer`` move the balance: a 360x480 JPEG answered with
a PNG class map (the defaults) spends most of a request on decoding, resizing and encoding, which batching cannot
share; an image already at the network's size answered with JSON class shares leaves the network as the main cost.

The model: ``--model PATH`` serves that file. Without it the script builds a real student (``--student``, default
Fast-SCNN, freshly initialised: speed does not depend on the weights), saves an edgeseg checkpoint and exports it with
``edgeseg export --dynamic batch --fuse all`` at ``--size``, which needs the train and export extras (torch).

All traffic goes to 127.0.0.1, the request count and each run's time are bounded, and the script stops by itself.

Usage: ``python benchmarks/serve_load.py [--model M.onnx] [--requests 400] [--concurrency 16] [--rounds 2]
[--send-size HxW] [--answer png|json]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from edgeseg.runtime.arguments import size_argument
from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic
from edgeseg.runtime.sysinfo import describe_machine, format_machine

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load"
# The full CamVid val under $EDGESEG_DATA where it is set, else the embedded sample.
SAMPLE_VAL = Path(__file__).resolve().parents[1] / "edgeseg" / "assets" / "camvid_mini" / "images" / "val"
DEFAULT_IMAGE_DIRS = tuple(Path(root) / "camvid" / "images" / "val" for root in [os.environ.get("EDGESEG_DATA")]
                           if root) + (SAMPLE_VAL,)
ANSWERS = {"png": "PNG class map", "json": "JSON class share"}
BATCHING = ("--max-batch", "8", "--max-wait-ms", "5")
COMPARISONS = {
    "batching": {"no batching": ("--max-batch", "1"), "dynamic batching": BATCHING},
    "spinning": {"spinning off": (*BATCHING, "--ort-spinning", "off"),
                 "spinning on": (*BATCHING, "--ort-spinning", "on")},
}
"""Two server configurations per comparison: the first is the baseline that the second is divided by."""
START_TIMEOUT_S = 120


def build_student(name: str, size: tuple[int, int], folder: Path) -> Path:
    """A freshly initialised student, saved as a checkpoint and exported with a dynamic batch axis (needs torch)."""
    import torch

    from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
    from edgeseg.training.checkpoint import model_card, save_checkpoint
    from edgeseg.training.models import create_model

    onnx_path = folder / f"{name}_{size[0]}x{size[1]}_dynbatch_fused.onnx"
    if onnx_path.exists():
        return onnx_path
    torch.manual_seed(0)
    model = create_model(name, num_classes=CAMVID.num_classes)
    card = model_card(model_name=name, model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      input_size=list(size), config={})
    checkpoint = save_checkpoint(folder / f"{name}.pt", card, model.state_dict())
    subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", str(checkpoint), "--size", f"{size[0]}x{size[1]}",
                    "--dynamic", "batch", "--fuse", "all", "--out", str(onnx_path)], check=True)
    return onnx_path


def model_only(model: Path, image_bgr: np.ndarray, images_per_size: int = 24, repeats: int = 3) -> dict:
    """The network alone (``Segmenter.run`` on a prepared batch) at batch 1 and 8: wall and CPU ms per image.

    This is where batching can save work at all; everything else a request costs is per image anyway.
    """
    import cv2

    from edgeseg.runtime import Segmenter

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    samples: dict[int, list[tuple[float, float]]] = {1: [], 8: []}
    with Segmenter.load(model) as segmenter:
        batches = {size: segmenter.prepare([rgb] * size) for size in samples}
        for _ in range(repeats):  # batch sizes alternate, so both see the same spells of a shared machine
            for size, batch in batches.items():
                segmenter.run(batch)
                wall, cpu = time.perf_counter(), cpu_seconds()
                for _ in range(images_per_size // size):
                    segmenter.run(batch)
                samples[size].append(((time.perf_counter() - wall) * 1000.0 / images_per_size,
                                      (cpu_seconds() - cpu) * 1000.0 / images_per_size))
    return {f"batch {size}": {"wall_ms_per_image": round(statistics.median(w for w, _ in runs), 2),
                              "cpu_ms_per_image": round(statistics.median(c for _, c in runs), 2)}
            for size, runs in samples.items()}


def request_image(size: tuple[int, int]) -> tuple[Path, np.ndarray, bytes]:
    for folder in DEFAULT_IMAGE_DIRS:
        images = sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg"))
        if images:
            import cv2

            image = cv2.imread(str(images[0]), cv2.IMREAD_COLOR)
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            return images[0], image, data.tobytes()
    raise SystemExit("no CamVid image found to send")


class Server:
    """``edgeseg serve`` in a child process on a free loopback port."""

    def __init__(self, model: Path, extra_args: tuple[str, ...]) -> None:
        command = [sys.executable, "-m", "edgeseg.cli", "serve", str(model), "--host", "127.0.0.1", "--port", "0",
                   *extra_args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        self.url = None
        while self.url is None:
            line = self.process.stderr.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"edgeseg serve did not start: {line}")
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", line)
            self.url = match.group(1) if match else None

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used so far, from /proc."""
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def load(server: Server, body: bytes, answer: str, requests: int, concurrency: int,
               time_limit_s: float) -> dict:
    """Send ``requests`` POSTs with at most ``concurrency`` in flight; stop early at ``time_limit_s``."""
    latencies: list[float] = []
    errors: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
        async def one() -> None:
            async with semaphore:
                started = time.perf_counter()
                try:
                    response = await client.post(f"/v1/segment?format={answer}", content=body,
                                                 headers={"Content-Type": "image/jpeg"})
                    if response.status_code != 200:
                        errors.append(f"HTTP {response.status_code}: {response.text[:120]}")
                        return
                except httpx.HTTPError as err:
                    errors.append(f"{type(err).__name__}: {err}")
                    return
                latencies.append((time.perf_counter() - started) * 1000.0)

        for _ in range(concurrency):  # warm-up: connections open, sessions and thread pools started
            await one()
        latencies.clear()
        errors.clear()
        before = (await client.get("/v1/stats")).json()["batching"]
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        tasks = [asyncio.create_task(one()) for _ in range(requests)]
        _, pending = await asyncio.wait(tasks, timeout=time_limit_s)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - started
        server_cpu = server.cpu_seconds() - cpu_before
        stats = (await client.get("/v1/stats")).json()["batching"]
    return run_row(requests, pending, latencies, errors, wall, server_cpu,
                   stats["images"] - before["images"], stats["batches"] - before["batches"])


def run_row(requests: int, pending, latencies: list[float], errors: list[str], wall: float, server_cpu: float,
            images: int, batches: int) -> dict:
    """One load run's row (also triton_load.py's): counts, throughput, latency percentiles, server CPU, batching."""
    return {
        "sent": requests - len(pending),
        "completed": len(latencies),
        "errors": len(errors) + len(pending),
        "error_samples": errors[:5],
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "mean_ms": round(float(np.mean(latencies)), 1) if latencies else None,
        "server_cpu_ms_per_request": round(server_cpu * 1000.0 / max(1, len(latencies)), 2),
        "server_batches": batches,
        "server_images": images,
    }


def summarise(runs: list[dict], configs: dict) -> dict:
    """Per configuration, the median of its runs (errors summed, batch size over all of them)."""
    summary = {}
    for name in configs:
        mine = [run for run in runs if run["config"] == name]
        summary[name] = {
            "throughput_rps": round(statistics.median(run["throughput_rps"] for run in mine), 2),
            "p50_ms": round(statistics.median(run["p50_ms"] or 0 for run in mine), 1),
            "p99_ms": round(statistics.median(run["p99_ms"] or 0 for run in mine), 1),
            "server_cpu_ms_per_request": round(statistics.median(run["server_cpu_ms_per_request"] for run in mine), 2),
            "errors": sum(run["errors"] for run in mine),
            "mean_batch_size": round(sum(run["server_images"] for run in mine)
                                     / max(1, sum(run["server_batches"] for run in mine)), 2),
        }
    return summary


def write_report(result: dict, stem: Path) -> None:
    write_json_atomic(stem.with_suffix(".json"), result)
    summary, configs = result["summary"], result["configs"]
    (base_name, baseline), (other_name, other) = ((name, summary[name]) for name in configs)
    lines = [
        "# edgeseg serve under load",
        "",
        f"{result['requests']} `POST /v1/segment` requests per run, {result['concurrency']} in flight (asyncio + "
        f"httpx on the same machine), {ANSWERS[result['answer']]} answers; image: {result['image']} as a "
        f"{result['send_size']} JPEG "
        f"({result['image_bytes']} bytes). Model: {result['model']['description']} "
        f"(`{result['model']['file']}`, input {result['model']['input']}). Runs alternate between the two "
        f"configurations, {result['rounds']} round(s) each; the summary takes the median. "
        f"Generated by `{result['command']}` on {result['date']}.",
        "",
        "| configuration | server flags | throughput (req/s) | p50 (ms) | p99 (ms) | server CPU ms / request "
        "| errors | mean batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, flags in configs.items():
        row = summary[name]
        lines.append(f"| {name} | `{' '.join(flags)}` | {row['throughput_rps']} | {row['p50_ms']} | {row['p99_ms']} "
                     f"| {row['server_cpu_ms_per_request']} | {row['errors']} | {row['mean_batch_size']} |")
    lines += [
        "",
        f"{other_name[0].upper()}{other_name[1:]} / {base_name}: throughput "
        f"**{other['throughput_rps'] / baseline['throughput_rps']:.2f}x**, server CPU per request "
        f"**{other['server_cpu_ms_per_request'] / baseline['server_cpu_ms_per_request']:.2f}x**.",
        "",
        "The network alone (`Segmenter.run` on a prepared batch, median of 3 alternating repeats, in the benchmark "
        "process before the servers start): "
        + "; ".join(f"{name}: {row['wall_ms_per_image']} ms wall, {row['cpu_ms_per_image']} ms CPU per image"
                    for name, row in result["model_only"].items()) + ".",
        "",
        "Every run:",
        "",
        "| round | configuration | throughput (req/s) | p50 (ms) | p99 (ms) | server CPU ms / request | errors "
        "| wall (s) | mean batch |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        lines.append(f"| {run['round']} | {run['config']} | {run['throughput_rps']} | {run['p50_ms']} | "
                     f"{run['p99_ms']} | {run['server_cpu_ms_per_request']} | {run['errors']} | {run['wall_s']} | "
                     f"{run['server_images'] / max(1, run['server_batches']):.2f} |")
    lines += ["", "Machine:", "", "```", format_machine(result["machine"]), "```", ""]
    if result.get("load_average"):
        lines.insert(-4, f"Load average (1 min) before the runs: {result['load_average']} "
                         "(the machine is shared with other jobs).")
        lines.insert(-4, "")
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines))


def add_load_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """The model and load settings this script and triton_load.py share."""
    parser.add_argument("--model", type=Path, help=model_help)
    parser.add_argument("--student", default="fastscnn", help="registered student to export when --model is absent")
    parser.add_argument("--size", type=size_argument, default=(96, 128), metavar="HxW",
                        help="network input size of the exported student (default 96x128)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=240.0, help="seconds one run may take")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_load_arguments(parser, "model to serve (default: export --student at --size)")
    parser.add_argument("--send-size", type=size_argument, default=(360, 480), metavar="HxW",
                        help="size of the JPEG each request sends (default 360x480)")
    parser.add_argument("--answer", choices=sorted(ANSWERS), default="png",
                        help="what the server answers: the class map as PNG (default) or class shares as JSON")
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="batching",
                        help="the two server configurations: without and with dynamic batching (default), or ONNX "
                             "Runtime's thread spinning off and on (both batching)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output path without suffix")
    args = parser.parse_args()
    configs = COMPARISONS[args.compare]
    if not 1 <= args.requests <= 5000 or not 1 <= args.concurrency <= 256:
        parser.error("keep --requests in 1..5000 and --concurrency in 1..256")

    size = args.size
    with tempfile.TemporaryDirectory(prefix="serve_load_") as scratch:
        if args.model is not None:
            model, description = args.model, "given with --model"
        else:
            model = build_student(args.student, size, Path(scratch))
            description = (f"{args.student} student, freshly initialised, exported by `edgeseg export --dynamic "
                           "batch --fuse all` (uint8 NHWC in, class ids out)")
        from edgeseg.runtime import Segmenter

        with Segmenter.load(model) as probe:
            input_desc = (f"{probe.input_size[0]}x{probe.input_size[1]}" if probe.input_size else "dynamic") + (
                ", dynamic batch" if probe.meta.batch is None else f", fixed batch {probe.meta.batch}")
            model_name = probe.meta.model
        image_path, image, body = request_image(args.send_size)
        network = model_only(model, image)
        print("model only, ms per image (wall / CPU): " + ", ".join(
            f"{name} {row['wall_ms_per_image']} / {row['cpu_ms_per_image']}" for name, row in network.items()))
        with open("/proc/loadavg") as handle:
            load_average = handle.read().split()[0]
        runs = []
        # Both servers stay up for the whole benchmark (an idle one sleeps), so that the runs of the two
        # configurations alternate closely in time and share the machine's good and bad spells alike.
        servers = {}
        try:
            for name, flags in configs.items():
                servers[name] = Server(model, flags)
            for round_index in range(1, args.rounds + 1):
                for name in configs:
                    run = asyncio.run(load(servers[name], body, args.answer, args.requests, args.concurrency,
                                           args.time_limit))
                    run.update(config=name, round=round_index)
                    runs.append(run)
                    print(f"round {round_index} {name:>16}: {run['throughput_rps']:7.2f} req/s, p50 {run['p50_ms']} "
                          f"ms, p99 {run['p99_ms']} ms, server CPU {run['server_cpu_ms_per_request']} ms/req, "
                          f"errors {run['errors']}, "
                          f"mean batch {run['server_images'] / max(1, run['server_batches']):.2f}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
            "requests": args.requests,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "image": str(image_path),
            "image_bytes": len(body),
            "send_size": f"{args.send_size[0]}x{args.send_size[1]}",
            "answer": args.answer,
            "model": {"file": Path(model).name, "name": model_name, "input": input_desc, "description": description},
            "configs": {name: list(flags) for name, flags in configs.items()},
            "load_average": load_average,
            "model_only": network,
            "runs": runs,
            "summary": summarise(runs, configs),
            "machine": describe_machine(),
        }
    write_report(result, args.results)
    summary = result["summary"]
    base_name, other_name = configs
    ratio = summary[other_name]["throughput_rps"] / summary[base_name]["throughput_rps"]
    print(f"{other_name} / {base_name} throughput: {ratio:.2f}x; wrote {args.results}.md/.json")
    return 0 if all(row["errors"] == 0 for row in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
