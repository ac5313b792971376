"""Soak test of ``edgeseg serve``: minutes of mixed valid, oversized and malformed traffic at a bounded rate.

One ``edgeseg serve`` on 127.0.0.1 (a freshly initialised Fast-SCNN exported with ``--fuse all``, or ``--model``)
receives ``--rate`` requests per second for ``--minutes``: valid JPEG/PNG images (most of the traffic), bodies over
the size limit, images over the pixel limit, truncated and mutated files, decompression bombs and bad queries, in a
fixed random mix (``--seed``). Before that, ``--burst`` concurrent uploads of the largest image the server accepts
measure its peak memory at its limits. The script reports requests, answers by status class, p50/p99 latency of the
valid requests and the server's resident memory over time, and writes ``benchmarks/results/soak.{md,json,png}``.

All traffic goes to 127.0.0.1; the rate, the duration and each request's time are bounded, and the script stops by
itself.

Usage: ``python benchmarks/soak.py [--minutes 3] [--rate 8] [--burst 8] [--model M.onnx]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import header_lines, provenance  # noqa: E402
from serve_load import Server, build_student  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "soak"
MIX = {"valid_jpeg": 45, "valid_png": 20, "oversized_body": 5, "too_many_pixels": 5, "truncated": 8,
       "mutated": 8, "bomb": 4, "bad_query": 5}


def _png(width: int, height: int, raw: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def bodies(seed: int) -> dict[str, list[tuple[bytes, dict]]]:
    """Request bodies and query parameters of each kind in ``MIX``."""
    rng = random.Random(seed)
    camvid = sorted((REPO / "edgeseg" / "assets" / "camvid_mini" / "images").rglob("*.jpg"))[:4]
    images = [cv2.imread(str(path)) for path in camvid]
    jpegs = [cv2.imencode(".jpg", image)[1].tobytes() for image in images]
    pngs = [cv2.imencode(".png", image)[1].tobytes() for image in images]
    big_header = bytearray(pngs[0])
    big_header[16:24] = (20000).to_bytes(4, "big") * 2
    mutated = []
    for data in jpegs + pngs:
        data = bytearray(data)
        for _ in range(30):
            data[rng.randrange(len(data))] = rng.randrange(256)
        mutated.append(bytes(data))
    return {
        "valid_jpeg": [(data, {}) for data in jpegs],
        "valid_png": [(data, {"format": "json"}) for data in pngs],
        "oversized_body": [(bytes(21 * 2**20), {})],
        "too_many_pixels": [(bytes(big_header), {})],
        "truncated": [(data[:len(data) // 2], {}) for data in jpegs + pngs],
        "mutated": [(data, {}) for data in mutated],
        "bomb": [(_png(10, 10, b"".join(b"\x00" + bytes(30) for _ in range(10)) + bytes(32 * 2**20)), {})],
        "bad_query": [(jpegs[0], {"alpha": "7"}), (jpegs[0], {"format": "xml"}), (jpegs[0], {"nope": "1"})],
    }


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def soak(server: Server, catalogue: dict, minutes: float, rate: float, seed: int) -> dict:
    rng = random.Random(seed + 1)
    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    records: list[dict] = []
    memory: list[tuple[float, float]] = []
    pending: set[asyncio.Task] = set()
    started = time.monotonic()
    end = started + minutes * 60

    async def one(client: httpx.AsyncClient, kind: str, body: bytes, params: dict) -> None:
        sent = time.monotonic()
        try:
            response = await client.post(server.url + "/v1/segment", content=body, params=params)
            status = response.status_code
        except httpx.HTTPError as err:
            status = f"transport:{type(err).__name__}"
        records.append({"kind": kind, "status": status, "latency_ms": (time.monotonic() - sent) * 1000,
                        "t": sent - started})

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
        next_sample, tick = started, 0
        while time.monotonic() < end:
            kind = rng.choices(kinds, weights)[0]
            body, params = rng.choice(catalogue[kind])
            task = asyncio.create_task(one(client, kind, body, params))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if time.monotonic() >= next_sample:
                memory.append((time.monotonic() - started, rss_mb(server.process.pid)))
                next_sample += 5.0
            tick += 1
            await asyncio.sleep(max(0.0, started + tick / rate - time.monotonic()))
        if pending:
            await asyncio.wait(pending, timeout=60)
        health = (await client.get(server.url + "/healthz")).status_code
    memory.append((time.monotonic() - started, rss_mb(server.process.pid)))
    return {"records": records, "memory": memory, "healthz_after": health}


async def burst(server: Server, count: int, side: int) -> dict:
    """``count`` concurrent uploads of a ``side`` x ``side`` PNG (just under the 50-megapixel limit at 7000): the
    server's peak RSS while they are in flight, and how each was answered."""
    image = np.zeros((side, side, 3), np.uint8)
    image[:, : side // 2] = (40, 120, 200)
    body = cv2.imencode(".png", image)[1].tobytes()
    peak = rss_mb(server.process.pid)
    start_rss = peak

    async def watch(stop: asyncio.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(server.process.pid))
            await asyncio.sleep(0.05)

    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=120) as client:
        watcher = asyncio.create_task(watch(stop))
        started = time.monotonic()
        answers = await asyncio.gather(*(client.post(server.url + "/v1/segment", content=body, params={
            "format": "json"}) for _ in range(count)), return_exceptions=True)
        seconds = time.monotonic() - started
        stop.set()
        await watcher
    statuses = [a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers]
    return {"count": count, "side": side, "body_kb": len(body) / 1024, "statuses": statuses,
            "rss_before_mb": start_rss, "rss_peak_mb": peak, "seconds": seconds}


def summarise(run: dict) -> dict:
    records = run["records"]
    by_class: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for record in records:
        status = record["status"]
        label = f"{status // 100}xx" if isinstance(status, int) else status
        label = "503" if status == 503 else label
        by_class[label] = by_class.get(label, 0) + 1
        by_kind.setdefault(record["kind"], {}).setdefault(str(status), 0)
        by_kind[record["kind"]][str(status)] += 1
    valid = sorted(r["latency_ms"] for r in records if r["kind"].startswith("valid") and r["status"] == 200)
    memory = [m for _, m in run["memory"]]
    return {"requests": len(records), "by_class": by_class, "by_kind": by_kind,
            "valid_ok": len(valid),
            "valid_p50_ms": statistics.median(valid) if valid else None,
            "valid_p99_ms": valid[min(len(valid) - 1, int(0.99 * len(valid)))] if valid else None,
            "rss_start_mb": memory[0] if memory else None, "rss_peak_mb": max(memory) if memory else None,
            "rss_end_mb": memory[-1] if memory else None, "healthz_after": run["healthz_after"],
            "memory_series": run["memory"]}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds, megabytes = zip(*summary["memory_series"])
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(seconds, megabytes, marker=".")
    axis.set_xlabel("seconds")
    axis.set_ylabel("server RSS (MB)")
    axis.set_title("edgeseg serve under mixed traffic")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(result: dict, stem: Path) -> None:
    from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic

    s = result["summary"]
    lines = ["# Soak test of `edgeseg serve`", "", *header_lines(result),
             f"- model: {result['model']}; {result['minutes']} min at {result['rate']} requests/s, mix {MIX}", "",
             f"Requests: {s['requests']}; answers by class: {s['by_class']}; `/healthz` afterwards: "
             f"{s['healthz_after']}.", "",
             f"Valid requests answered 200: {s['valid_ok']}, latency p50 {s['valid_p50_ms']:.1f} ms, "
             f"p99 {s['valid_p99_ms']:.1f} ms.", "",
             f"Server RSS: {s['rss_start_mb']:.0f} MB at the start, {s['rss_peak_mb']:.0f} MB at the peak, "
             f"{s['rss_end_mb']:.0f} MB at the end.", ""]
    if result.get("burst"):
        b = result["burst"]
        lines += [f"Before the soak, {b['count']} concurrent uploads of a {b['side']}x{b['side']} PNG "
                  f"({b['body_kb']:.0f} KB each, just under the 50-megapixel limit): answers {b['statuses']}, server "
                  f"RSS {b['rss_before_mb']:.0f} MB before and {b['rss_peak_mb']:.0f} MB at the peak, "
                  f"{b['seconds']:.1f} s in all.", ""]
    lines += ["| kind | answers |", "| --- | --- |"]
    for kind, counts in s["by_kind"].items():
        lines.append(f"| {kind} | {', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))} |")
    lines += ["", f"![server memory over time]({stem.name}.png)", ""]
    write_json_atomic(stem.with_suffix(".json"), result)
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=8.0, help="requests per second (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--burst", type=int, default=8,
                        help="first send this many concurrent 7000x7000 PNGs and record the peak RSS (0: skip)")
    parser.add_argument("--model", type=Path, help="model to serve (default: a fresh Fast-SCNN at 96x128)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output path without suffix")
    args = parser.parse_args()
    if args.minutes <= 0 or args.minutes > 60 or args.rate <= 0 or args.rate > 100:
        raise SystemExit("soak: --minutes must lie in (0, 60] and --rate in (0, 100]")
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or build_student("fastscnn", (96, 128), Path(folder))
        server = Server(model, ("--max-batch", "4"))
        try:
            largest = asyncio.run(burst(server, args.burst, 7000)) if args.burst else None
            run = asyncio.run(soak(server, bodies(args.seed), args.minutes, args.rate, args.seed))
        finally:
            server.stop()
    result = {**provenance("benchmarks/soak.py"), "model": str(args.model or "fastscnn 96x128 (fresh)"),
              "minutes": args.minutes, "rate": args.rate, "burst": largest, "summary": summarise(run)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    plot(result["summary"], args.results.with_suffix(".png"))
    write_report(result, args.results)
    print(args.results.with_suffix(".md").read_text())
    return 0 if result["summary"]["healthz_after"] == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
