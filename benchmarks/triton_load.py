"""Load test of Triton Inference Server beside ``edgeseg serve``: one model, one machine, with and without batching.

Four configurations serve the same exported model (``--model``, or a freshly initialised ``--student`` exported as
``serve_load.py`` does: batch-dynamic, pre- and post-processing fused, at ``--size``):

- Triton, no batching / dynamic batching: the ``tritonserver`` of the nvidia-pytriton wheel (started by
  ``edgeseg.runtime.backends.triton_server.TritonServer`` on 127.0.0.1) serving the repository ``edgeseg export
  --triton-backend python`` writes (ONNX Runtime in Triton's Python backend, one CPU instance), once with the dynamic
  batcher off and once with ``max_batch_size 8``, preferred batch 4 and a 5 ms queue delay;
- ``edgeseg serve --max-batch 1`` and ``--max-batch 8 --max-wait-ms 5``.

What a request carries differs, as it does for users. A Triton request is what a ``triton://`` client sends: the
prepared uint8 NHWC tensor at the network size (``Segmenter.prepare``; not timed), answered with the class-id map, over
gRPC (``--protocol``) with ``tritonclient``'s asyncio client. An ``edgeseg serve`` request is the same image as a JPEG
at the network size, answered with JSON class shares, the lightest answer serve has (``serve_load.py`` holds the other
answer forms); serve decodes and prepares the image itself. Each run sends ``--requests`` requests with
``--concurrency`` in flight; runs alternate between the configurations over ``--rounds`` so that a slow spell of a
shared machine does not land on one of them only, and the summary takes the median. Latency is measured by the client
from sending to the last byte; server CPU per request is read from /proc (for Triton: the server and its Python stubs).
Results go to ``benchmarks/results/triton_load.{md,json}`` (``--results`` names another stem).

Needs the triton extra and the bundled server (``make setup``), and torch when no ``--model`` is given.

Usage: ``python benchmarks/triton_load.py [--model M.onnx] [--requests 400] [--concurrency 16] [--rounds 2]
[--protocol grpc|http]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import header_lines, provenance  # noqa: E402  (sibling scripts, imported after the path is set)
from serve_load import (Server, add_load_arguments, build_student, load, request_image, run_row,  # noqa: E402
                        summarise)

from edgeseg.export.onnx_graph import graph_io, load_onnx, read_metadata  # noqa: E402
from edgeseg.export.triton import TritonOptions, write_triton_repository  # noqa: E402
from edgeseg.runtime import Segmenter  # noqa: E402
from edgeseg.runtime.backends.triton_client import TRITON_DTYPES  # noqa: E402
from edgeseg.runtime.backends.triton_server import TritonServer  # noqa: E402
from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "triton_load"
TRITON_CONFIGS = {  # configuration -> (model name in the repository, TritonOptions settings)
    "triton, no batching": ("no_batching", dict(dynamic_batching=False)),
    "triton, dynamic batching": ("dynamic_batching", dict(max_batch=8, preferred_batch=4, max_queue_delay_us=5000)),
}
SERVE_CONFIGS = {"serve, no batching": ("--max-batch", "1"),
                 "serve, dynamic batching": ("--max-batch", "8", "--max-wait-ms", "5")}
CONFIG_TEXT = {
    "triton, no batching": "`--triton-backend python`, dynamic batcher off",
    "triton, dynamic batching": "`--max-batch 8 --preferred-batch 4 --max-queue-delay-us 5000`",
    **{name: f"`edgeseg serve {' '.join(flags)}`" for name, flags in SERVE_CONFIGS.items()},
}


def session_cpu_seconds(session: int) -> float:
    """CPU time (user + system) of every live process in a session: the Triton server and its Python stubs."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[3]) == session:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def triton_load(server: TritonServer, model: str, protocol: str, tensor: np.ndarray, input_name: str,
                      output_name: str, requests: int, concurrency: int, time_limit_s: float) -> dict:
    """Send ``requests`` inferences with at most ``concurrency`` in flight; stop early at ``time_limit_s``."""
    module = importlib.import_module(f"tritonclient.{protocol}.aio")
    client = module.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    latencies: list[float] = []
    errors: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)
    datatype = TRITON_DTYPES[tensor.dtype]

    async def one() -> None:
        async with semaphore:
            request = module.InferInput(input_name, list(tensor.shape), datatype)
            request.set_data_from_numpy(tensor)
            started = time.perf_counter()
            try:
                result = await client.infer(model, [request], outputs=[module.InferRequestedOutput(output_name)])
                result.as_numpy(output_name)
            except Exception as err:  # any failure counts as an error of this run
                errors.append(" ".join(str(err).split())[:160])
                return
            latencies.append((time.perf_counter() - started) * 1000.0)

    def counts(stats: dict) -> tuple[int, int]:
        model_stats = stats["model_stats"][0]
        return int(model_stats.get("inference_count", 0)), int(model_stats.get("execution_count", 0))

    try:
        for _ in range(concurrency):  # warm-up: connections open, the model instance has run
            await one()
        latencies.clear()
        errors.clear()
        stats_kwargs = {"as_json": True} if protocol == "grpc" else {}
        before = counts(await client.get_inference_statistics(model, **stats_kwargs))
        cpu_before = session_cpu_seconds(server.process.pid)
        started = time.perf_counter()
        tasks = [asyncio.create_task(one()) for _ in range(requests)]
        _, pending = await asyncio.wait(tasks, timeout=time_limit_s)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - started
        server_cpu = session_cpu_seconds(server.process.pid) - cpu_before
        after = counts(await client.get_inference_statistics(model, **stats_kwargs))
    finally:
        await client.close()
    return run_row(requests, pending, latencies, errors, wall, server_cpu, after[0] - before[0], after[1] - before[1])


def write_report(result: dict, stem: Path) -> None:
    write_json_atomic(stem.with_suffix(".json"), result)
    lines = [
        "# Triton Inference Server and edgeseg serve under load", "", *header_lines(result), "",
        f"{result['requests']} requests per run, {result['concurrency']} in flight, {result['rounds']} round(s) per "
        f"configuration, alternating; the summary takes the median. Model: {result['model']['description']} "
        f"(`{result['model']['file']}`, input {result['model']['input']}). Triton requests ({result['protocol']}) "
        "carry the prepared uint8 tensor and get the class-id map back; `edgeseg serve` requests carry the same "
        f"image as a {result['image_bytes']}-byte JPEG and get JSON class shares back, decoding in the server. Load "
        f"average (1 min) before the runs: {result['load_average']}.",
        "",
        "| configuration | settings | throughput (req/s) | p50 (ms) | p99 (ms) | server CPU ms / request | errors "
        "| mean batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["summary"].items():
        lines.append(f"| {name} | {CONFIG_TEXT[name]} | {row['throughput_rps']} | {row['p50_ms']} | {row['p99_ms']} "
                     f"| {row['server_cpu_ms_per_request']} | {row['errors']} | {row['mean_batch_size']} |")
    lines += ["", "Every run:", "", "| round | configuration | throughput (req/s) | p50 (ms) | p99 (ms) "
              "| server CPU ms / request | errors | wall (s) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for run in result["runs"]:
        lines.append(f"| {run['round']} | {run['config']} | {run['throughput_rps']} | {run['p50_ms']} | "
                     f"{run['p99_ms']} | {run['server_cpu_ms_per_request']} | {run['errors']} | {run['wall_s']} |")
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_load_arguments(parser, "batch-dynamic .onnx to serve (default: export --student)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="Triton client protocol")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output path without suffix")
    args = parser.parse_args()
    if not 1 <= args.requests <= 5000 or not 1 <= args.concurrency <= 256:
        parser.error("keep --requests in 1..5000 and --concurrency in 1..256")

    with tempfile.TemporaryDirectory(prefix="triton_load_") as scratch:
        if args.model is not None:
            model, description = args.model, "given with --model"
        else:
            model = build_student(args.student, args.size, Path(scratch))
            description = (f"{args.student} student, freshly initialised, exported by `edgeseg export --dynamic "
                           "batch --fuse all` (uint8 NHWC in, class ids out)")
        meta, io = read_metadata(model), graph_io(load_onnx(model))
        if not io[0].shape or io[0].shape[0] is not None:
            raise SystemExit(f"{model} has a fixed batch; export it with --dynamic batch")
        repo = Path(scratch) / "repository"
        for model_name, settings in TRITON_CONFIGS.values():
            write_triton_repository(model, repo, meta, io, TritonOptions(name=model_name, backend="python",
                                                                         instance_kind="cpu", **settings))
        _, image, body = request_image(args.size)
        with Segmenter.load(model) as local:
            tensor = local.prepare([image[:, :, ::-1]])
            input_desc = "x".join("?" if d is None else str(d) for d in io[0].shape)
        with open("/proc/loadavg") as handle:
            load_average = handle.read().split()[0]
        runs = []
        servers: dict[str, Server] = {}
        with TritonServer(repo) as triton:
            try:
                for name, flags in SERVE_CONFIGS.items():
                    servers[name] = Server(model, flags)
                for round_index in range(1, args.rounds + 1):
                    for name in CONFIG_TEXT:
                        if name in TRITON_CONFIGS:
                            run = asyncio.run(triton_load(
                                triton, TRITON_CONFIGS[name][0], args.protocol, tensor, meta.input_name,
                                meta.output_name, args.requests, args.concurrency, args.time_limit))
                        else:
                            run = asyncio.run(load(servers[name], body, "json", args.requests, args.concurrency,
                                                   args.time_limit))
                        run.update(config=name, round=round_index)
                        runs.append(run)
                        print(f"round {round_index} {name:>24}: {run['throughput_rps']:7.2f} req/s, p50 "
                              f"{run['p50_ms']} ms, p99 {run['p99_ms']} ms, server CPU "
                              f"{run['server_cpu_ms_per_request']} ms/req, errors {run['errors']}", flush=True)
            finally:
                for server in servers.values():
                    server.stop()
    result = {
        **provenance("benchmarks/triton_load.py"),
        "requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds, "protocol": args.protocol,
        "image_bytes": len(body), "load_average": load_average,
        "model": {"file": Path(model).name, "name": meta.model, "input": input_desc, "description": description},
        "runs": runs, "summary": summarise(runs, CONFIG_TEXT),
    }
    write_report(result, args.results)
    print(f"wrote {args.results}.md/.json")
    return 0 if all(row["errors"] == 0 for row in result["summary"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
