"""Model zoo benchmark: size, compute, accuracy and speed of every exported checkpoint, with a Pareto plot.

For each checkpoint and network size the script exports the fused ONNX graph (uint8 image in, class ids out) at
each requested precision, scores it on the validation split through the runtime's Segmenter and evaluator (so the
mIoU is that of the deployed file, not of the PyTorch network), and times it with the runtime's benchmark on every
ONNX Runtime device this machine offers: the CPU always, CUDA and TensorRT when onnxruntime-gpu is installed. Every
row is measured with the same settings; a precision a device cannot run natively is listed with the reason instead
of being left out::

    python benchmarks/zoo.py --checkpoints runs/zoo/*/last.pt runs/teacher_bisenetv2/last.pt \\
        --data camvid:${EDGESEG_DATA}/camvid --sizes 180x240 360x480 --precisions fp32 int8 fp16

writes ``OUT.md`` (a table per size, the machine, command, date and how each checkpoint was trained),
``OUT.json`` (all rows and the machine), ``OUT.csv`` and ``OUT_pareto.png`` (mIoU against model-only FPS with the
Pareto front, per device and size), with ``OUT`` = ``benchmarks/results/zoo`` by default.

Resumable: every finished row is cached as JSON in ``OUT_work/rows/`` and every export in ``OUT_work/onnx/``, each
tagged with a fingerprint of the checkpoint's bytes and of the settings that shape it. Running the command again
re-measures only rows whose fingerprint changed (a checkpoint that trained further, another ``--iters``) and
retries failed rows; the reports are always rewritten from all rows.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.runtime.arguments import size_argument
from edgeseg.runtime.backends.base import default_threads
from edgeseg.runtime.backends.onnx_runtime import CUDA_EP, TENSORRT_EP, OnnxRuntimeBackend
from edgeseg.runtime.bench import DEFAULT_CAMERA_SIZE, benchmark
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.errors import ConfigError, EdgesegError
from edgeseg.runtime.evaluate import evaluate
from edgeseg.runtime.io import atomic_path, file_sha256, write_json_atomic, write_text_atomic
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.sysinfo import describe_machine, format_machine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "zoo"
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "cuda", "tensorrt")
DEVICE_LABELS = {"cpu": "ORT CPU", "cuda": "ORT CUDA", "tensorrt": "ORT TensorRT"}
FUSE = "all"

UNSUPPORTED: dict[tuple[str, str], str] = {
    ("cpu", "fp16"): "the CPU provider has no FP16 convolution kernels: it casts the graph back to FP32, so the "
                     "row would time FP32 plus conversions",
    ("cuda", "int8"): "the CUDA provider has no INT8 convolution kernels: Q/DQ pairs would run as float "
                      "fake-quantisation, slower than FP32 (the TensorRT provider runs INT8)",
}
"""(device, precision) pairs that ONNX Runtime can execute but not natively; their rows say why they are skipped."""


def print_line(text: str) -> None:
    print(text, flush=True)


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts; equal fingerprints mean a cached result is still valid."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def available_devices() -> list[str]:
    """The ONNX Runtime devices this installation offers; a GPU provider that then fails to start is a skipped row."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    return ["cpu"] + [device for device, provider in (("cuda", CUDA_EP), ("tensorrt", TENSORRT_EP))
                      if provider in providers]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def size_text(size) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass
class ZooCheckpoint:
    """A checkpoint of the zoo: its file, a hash of its bytes (the cache key) and its card (weights included)."""

    path: Path
    sha256: str
    card: dict
    label: str = ""
    _model: object = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        return self.card["model"]["name"]

    def model(self):
        """The network with the checkpoint's weights, built on first use (cached rows never need it)."""
        if self._model is None:
            from edgeseg.training.checkpoint import build_model_from_card

            self._model = build_model_from_card(self.card).eval()
        return self._model

    def training(self) -> dict:
        """How the checkpoint was trained, read from its card: config name, iterations, size, distillation."""
        config = self.card.get("config") or {}
        distill = config.get("distill") or {}
        return {
            "config": config.get("name"),
            "iterations": (self.card.get("train_state") or {}).get("iteration"),
            "planned_iterations": (config.get("train") or {}).get("iterations"),
            "input_size": list(self.card["input_size"]),
            "dataset": (config.get("data") or {}).get("dataset"),
            "val_miou": (self.card.get("metrics") or {}).get("miou"),
            "teacher": distill.get("teacher"),
            "distill_losses": [loss.get("name") for loss in distill.get("losses") or [] if isinstance(loss, dict)],
        }


def load_checkpoints(paths: list[str]) -> list[ZooCheckpoint]:
    """Open every checkpoint before any work starts, so a missing or broken file fails the run at once."""
    from edgeseg.training.checkpoint import load_checkpoint

    checkpoints = []
    for text in paths:
        path = Path(text)
        card = load_checkpoint(path)  # ModelFormatError naming the file when it is missing or not a checkpoint
        iteration = (card.get("train_state") or {}).get("iteration")
        card["train_state"] = {"iteration": iteration}  # the optimiser state is not needed here
        checkpoints.append(ZooCheckpoint(path, file_sha256(path), card))
    names = [c.model_name for c in checkpoints]
    for checkpoint in checkpoints:
        duplicate = names.count(checkpoint.model_name) > 1
        checkpoint.label = (f"{checkpoint.model_name} ({checkpoint.path.parent.name})" if duplicate
                            else checkpoint.model_name)
    labels = [c.label for c in checkpoints]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"checkpoints {', '.join(repeated)} are given more than once (or share a model name and a "
                          "folder name); pass each checkpoint once")
    return checkpoints


@dataclass
class Settings:
    """Everything besides the checkpoint that shapes a row; stored in each row, part of its fingerprint."""

    data: str
    eval_split: str
    eval_limit: int | None
    calib_split: str
    calib_images: int
    calib_method: str
    warmup: int
    iters: int
    batch: int
    camera_size: list[int]
    threads: int
    fuse: str = FUSE

    def export_part(self, precision: str) -> dict:
        """The settings an export depends on: calibration only for INT8."""
        part = {"fuse": self.fuse}
        if precision == "int8":
            part.update(data=self.data, calib_split=self.calib_split, calib_images=self.calib_images,
                        calib_method=self.calib_method)
        return part


class ZooRun:
    """One benchmark run: the checkpoints, the datasets and the caches under the work folder."""

    def __init__(self, args: argparse.Namespace, checkpoints: list[ZooCheckpoint]) -> None:
        self.args = args
        self.work = Path(args.work_dir)
        self.settings = Settings(
            data=args.data, eval_split="val", eval_limit=args.limit, calib_split="train",
            calib_images=args.calib_images, calib_method=args.calib_method, warmup=args.warmup, iters=args.iters,
            batch=1, camera_size=list(args.camera_size), threads=args.threads or default_threads())
        self.val = open_dataset(args.data, "val")  # DataError naming the folder when the dataset is missing
        for checkpoint in checkpoints:
            classes = checkpoint.card["classes"]["names"]
            if len(classes) != self.val.classes.num_classes:
                raise ConfigError(f"{checkpoint.path} predicts {len(classes)} classes but {args.data} has "
                                  f"{self.val.classes.num_classes}; benchmark it on the dataset it was trained for")
        self._calibration: list | None = None
        self._costs: dict[tuple[str, tuple[int, int]], dict] = {}
        self.exports_done = 0

    def calibration_images(self) -> list:
        if self._calibration is None:
            from edgeseg.export.precision import load_calibration_images

            self._calibration = load_calibration_images(self.args.data, "train", self.args.calib_images)
        return self._calibration

    def costs(self, checkpoint: ZooCheckpoint, size: tuple[int, int]) -> dict:
        """Parameters and GFLOPs of the PyTorch network at ``size`` (GFLOPs = 2 x multiply-adds / 1e9)."""
        key = (checkpoint.label, size)
        if key not in self._costs:
            from edgeseg.training.models import count_flops, count_params

            model = checkpoint.model()
            self._costs[key] = {"params": count_params(model), "gflops": count_flops(model, size)}
        return self._costs[key]

    def export(self, checkpoint: ZooCheckpoint, size: tuple[int, int], precision: str) -> Path:
        """The fused ONNX file for this checkpoint, size and precision; reused while its fingerprint matches."""
        from edgeseg.export.api import ExportOptions, export_checkpoint

        path = self.work / "onnx" / f"{safe_name(checkpoint.label)}_{size_text(size)}_{precision}_fused.onnx"
        tag = path.with_name(path.name + ".fingerprint")
        expected = fingerprint(checkpoint.sha256, size, precision, self.settings.export_part(precision))
        if path.is_file() and tag.is_file() and tag.read_text().strip() == expected:
            return path
        int8 = {"calib": self.settings.data, "calib_split": self.settings.calib_split,
                "calib_images": self.settings.calib_images, "calib_method": self.settings.calib_method}
        options = ExportOptions(size=size, precision=precision, fuse=FUSE, **(int8 if precision == "int8" else {}))
        export_checkpoint(checkpoint.path, "onnx", options, out=path, log=lambda line: None)
        write_text_atomic(tag, expected + "\n")  # written last: an interrupted export is redone
        self.exports_done += 1
        return path

    def row_path(self, checkpoint: ZooCheckpoint, size, precision: str, device: str) -> Path:
        return self.work / "rows" / f"{safe_name(checkpoint.label)}_{size_text(size)}_{precision}_{device}.json"

    def row(self, checkpoint: ZooCheckpoint, size: tuple[int, int], precision: str, device: str) -> tuple[dict, str]:
        """The cached row when still valid, else a freshly measured one; returns (row, how it was obtained)."""
        path = self.row_path(checkpoint, size, precision, device)
        key = fingerprint(checkpoint.sha256, size, precision, device, vars(self.settings))
        if path.is_file() and not self.args.force:
            try:
                cached = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                cached = {}
            if cached.get("fingerprint") == key:
                return cached, "cached"
        row = {"fingerprint": key, "label": checkpoint.label, "model": checkpoint.model_name,
               "checkpoint": str(checkpoint.path), "checkpoint_sha256": checkpoint.sha256, "size": list(size),
               "precision": precision, "device": device, "backend": DEVICE_LABELS[device],
               "training": checkpoint.training(), "settings": vars(self.settings),
               "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        reason = UNSUPPORTED.get((device, precision))
        try:
            row.update(self.costs(checkpoint, size))
            if reason:
                row.update(status="skipped", reason=reason)
            else:
                row.update(self.measure(checkpoint, size, precision, device))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # one broken row must not stop a run of hours; it is reported and retried
            first_line = (str(err).strip().splitlines() or [""])[0]
            row.update(status="failed", reason=f"{type(err).__name__}: {first_line}")
            return row, "failed"
        if row["status"] == "ok" or reason:  # a device that failed to start is retried next time
            write_json_atomic(path, row)
        return row, "measured"

    def measure(self, checkpoint: ZooCheckpoint, size: tuple[int, int], precision: str, device: str) -> dict:
        started = time.perf_counter()
        onnx_path = self.export(checkpoint, size, precision)
        exported = time.perf_counter()
        try:
            backend = OnnxRuntimeBackend(str(onnx_path), device=device, threads=self.settings.threads)
        except EdgesegError as err:  # the provider is listed but cannot start here (missing CUDA libraries...)
            return {"status": "skipped", "reason": f"{DEVICE_LABELS[device]} unusable here: {err}"}
        with Segmenter(backend) as segmenter:
            scores = evaluate(segmenter, self.val, limit=self.settings.eval_limit, progress=False)
            evaluated = time.perf_counter()
            load_before = os.getloadavg()[0]
            timing = benchmark(segmenter, batch=self.settings.batch, warmup=self.settings.warmup,
                               iters=self.settings.iters, camera_size=tuple(self.settings.camera_size),
                               progress=False)
            load_after = os.getloadavg()[0]
        return {
            "status": "ok", "onnx": str(onnx_path), "onnx_mb": onnx_path.stat().st_size / 1e6,
            "providers": timing["providers"], "miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
            "per_class_iou": scores["per_class_iou"], "eval_images": scores["images"],
            "latency_ms": timing["latency_ms"], "fps": timing["fps"], "e2e_latency_ms": timing["e2e_latency_ms"],
            "e2e_fps": timing["e2e_fps"], "load_average": [load_before, load_after],
            "seconds": {"export": exported - started, "eval": evaluated - exported,
                        "bench": time.perf_counter() - evaluated},
        }


def describe_row(row: dict) -> str:
    """The progress line body of one row."""
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    seconds = row["seconds"]
    return (f"mIoU {100 * row['miou']:.1f}%, p50 {row['latency_ms']['p50']:.2f} ms, {row['fps']:.1f} FPS, "
            f"e2e {row['e2e_fps']:.1f} FPS (export {seconds['export']:.0f} s, eval {seconds['eval']:.0f} s, "
            f"bench {seconds['bench']:.0f} s)")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats, both coordinates to be maximised, ordered by the first.

    A point is dominated when another is at least as good in both coordinates and better in one; equal points do
    not dominate each other, so duplicates on the front are all kept.
    """
    front = [i for i, (x, y) in enumerate(points)
             if not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def mark_pareto(rows: list[dict]) -> None:
    """Set ``pareto`` on every measured row: whether it is on the mIoU/FPS front of its device and size."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault((row["device"], tuple(row["size"])), []).append(row)
    for group in groups.values():
        front = set(pareto_front([(row["fps"], row["miou"]) for row in group]))
        for index, row in enumerate(group):
            row["pareto"] = index in front


def git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


SIZE_TABLE_HEADER = ("| model | params (M) | GFLOPs | precision | backend | mIoU % | p50 ms | p99 ms | FPS | e2e FPS | "
                     "Pareto | note |\n|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|---|")
TRAINING_TABLE_HEADER = ("| model | checkpoint | config | iterations | trained at | dataset | val mIoU % at training | "
                         "distillation |\n|---|---|---|---:|---|---|---:|---|")


TRAINING_NOTE = ("Val mIoU at training is the trainer's own validation of the PyTorch network at its trained size; "
                 "the tables above measure the exported files.")


def describe_settings(settings: dict) -> str:
    """The paragraph that says how every number in the tables was obtained."""
    limit = "all" if settings["eval_limit"] is None else f"the first {settings['eval_limit']}"
    return (
        "Every model is exported to ONNX with pre- and post-processing fused (uint8 image in, class ids out) and "
        f"measured as deployed. mIoU: {limit} images of {settings['data']} {settings['eval_split']}, through the "
        "exported file and the runtime's Segmenter, the network fed at the table's size and its class map resized "
        f"to the label grid. INT8: Q/DQ, calibrated on {settings['calib_images']} {settings['calib_split']} images "
        f"({settings['calib_method']}). Timing: the runtime's benchmark, batch {settings['batch']}, "
        f"{settings['warmup']} warm-up and {settings['iters']} timed calls, {settings['threads']} ONNX Runtime "
        "thread(s); p50 is the model-only median latency, FPS = 1000 / mean model-only latency, e2e FPS adds "
        f"resizing a {size_text(settings['camera_size'])} frame, preparation and the class map at frame size. "
        "Pareto: on the mIoU/FPS front of its size and backend. Parameters and GFLOPs (2 x multiply-adds) are those "
        "of the PyTorch network at the table's size.")


def size_table(rows: list[dict]) -> list[str]:
    """Markdown lines of one size's table; a reason shared by several rows (fp16 on the CPU) is written once."""
    lines = SIZE_TABLE_HEADER.splitlines()
    notes: list[str] = []
    for row in rows:
        params = _number(row["params"] / 1e6 if row.get("params") is not None else None, ".2f")
        start = (f"| {row['label']} | {params} | {_number(row.get('gflops'), '.2f')} | {row['precision']} | "
                 f"{row['backend']} |")
        if row["status"] == "ok":
            latency = row["latency_ms"]
            lines.append(f"{start} {100 * row['miou']:.1f} | {latency['p50']:.2f} | {latency['p99']:.2f} | "
                         f"{row['fps']:.1f} | {row['e2e_fps']:.1f} | {'yes' if row.get('pareto') else ''} | |")
            continue
        if row["reason"] not in notes:
            notes.append(row["reason"])
        lines.append(f"{start} | | | | | | {row['status']} ({notes.index(row['reason']) + 1}) |")
    if notes:
        lines.append("")
    lines += [f"- ({number}) {reason[0].upper()}{reason[1:].rstrip('.')}."
              for number, reason in enumerate(notes, start=1)]
    return lines


def training_table(checkpoints: list[dict]) -> list[str]:
    """Markdown lines of the provenance table: config, iterations and distillation read from each card."""
    lines = TRAINING_TABLE_HEADER.splitlines()
    for entry in checkpoints:
        training = entry["training"]
        done, planned = training["iterations"], training["planned_iterations"]
        iterations = f"{done} of {planned}" if done is not None else f"{planned} planned"
        distill = (f"from `{training['teacher']}` ({', '.join(training['distill_losses'])})"
                   if training["teacher"] else "none")
        val = "n/a" if training["val_miou"] is None else f"{100 * training['val_miou']:.1f}"
        lines.append(f"| {entry['label']} | `{entry['checkpoint']}` | {training['config'] or 'n/a'} | {iterations} | "
                     f"{size_text(training['input_size'])} | {training['dataset'] or 'n/a'} | {val} | {distill} |")
    return lines


def markdown_report(rows: list[dict], checkpoints: list[dict], machine: dict, command: str, date: str,
                    plot_name: str | None) -> str:
    """The Markdown report: settings, one table per network size, the plot and the training provenance."""
    lines = ["# Model zoo: accuracy and speed of the exported models", "",
             f"Command: `{command}`", "", f"Date: {date}, commit {git_commit()}.", "", "Machine:", "",
             *(f"    {line}" for line in format_machine(machine).splitlines()), ""]
    if rows:
        lines += [describe_settings(rows[0]["settings"]), ""]
    loads = [value for row in rows if row["status"] == "ok" for value in row["load_average"]]
    if loads:
        load = (f"The 1-minute load average during timing ranged from {min(loads):.1f} to {max(loads):.1f} on "
                f"{machine.get('cpu_cores_usable', '?')} usable cores: where it exceeds the cores, other jobs shared "
                "the machine and absolute times are pessimistic.")
        lines += [load, ""]
    for size in sorted({tuple(row["size"]) for row in rows}):
        lines += [f"## Network input {size_text(size)}", "",
                  *size_table([row for row in rows if tuple(row["size"]) == size]), ""]
    if plot_name:
        lines += [f"![mIoU against model-only FPS, Pareto front per backend and size]({plot_name})", ""]
    lines += ["## How each checkpoint was trained", "", *training_table(checkpoints), "",
              TRAINING_NOTE]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("label", "model", "checkpoint", "size", "precision", "backend", "status", "params", "gflops", "miou",
               "pixel_acc", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "fps", "e2e_p50_ms", "e2e_p99_ms", "e2e_fps",
               "pareto", "onnx_mb", "eval_images", "reason")


def csv_report(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        latency, e2e = row.get("latency_ms") or {}, row.get("e2e_latency_ms") or {}
        writer.writerow({
            **{key: row.get(key) for key in ("label", "model", "checkpoint", "precision", "backend", "status",
                                             "params", "gflops", "miou", "pixel_acc", "fps", "e2e_fps", "pareto",
                                             "onnx_mb", "eval_images", "reason")},
            "size": size_text(row["size"]), "p50_ms": latency.get("p50"), "p90_ms": latency.get("p90"),
            "p99_ms": latency.get("p99"), "mean_ms": latency.get("mean"), "e2e_p50_ms": e2e.get("p50"),
            "e2e_p99_ms": e2e.get("p99"),
        })
    return buffer.getvalue()


PRECISION_MARKERS = {"fp32": "o", "fp16": "^", "int8": "s"}


def _label_front(ax, points: list[tuple[float, float]], front: list[int], names: list[str]) -> None:
    """Name the points on the front just above and right of each one, then widen the FPS axis until they fit.

    Above-right of a front point is empty by definition (a point there would dominate it), so these labels never
    cover a marker; neighbours along the front step down in mIoU, so their labels do not stack either.
    """
    labels = [ax.annotate(names[i], points[i], textcoords="offset points", xytext=(5, 4), fontsize=8) for i in front]
    renderer = ax.figure.canvas.get_renderer()
    for _ in range(3):  # the points move when the axis grows, so fit again until the labels stay inside
        right = max(ax.transData.inverted().transform((label.get_window_extent(renderer).x1, 0))[0]
                    for label in labels)
        low, high = ax.get_xlim()
        if right <= high:
            break
        ax.set_xlim(low, right * (right / low) ** 0.03)


def plot_pareto(rows: list[dict], path: Path) -> Path | None:
    """mIoU against model-only FPS, one panel per backend and size; colour = model, marker = precision.

    FPS is on a log axis because the zoo spans more than an order of magnitude. Returns None without measured rows.
    """
    measured = [row for row in rows if row["status"] == "ok"]
    if not measured:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    panels = sorted({(row["device"], tuple(row["size"])) for row in measured},
                    key=lambda key: (DEVICES.index(key[0]), key[1]))
    labels = list(dict.fromkeys(row["label"] for row in measured))
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    precisions = [p for p in PRECISIONS if any(row["precision"] == p for row in measured)]
    columns = min(len(panels), 2)
    panel_rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(panel_rows, columns, figsize=(6.0 * columns, 4.6 * panel_rows), dpi=130,
                             squeeze=False)
    plain_number = FuncFormatter(lambda value, _: f"{value:g}")
    sparse_number = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "235" else "")
    fronts = []
    for ax, (device, size) in zip(axes.flat, panels):
        group = [row for row in measured if row["device"] == device and tuple(row["size"]) == size]
        points = [(row["fps"], 100 * row["miou"]) for row in group]
        for row, (fps, miou) in zip(group, points):
            ax.scatter(fps, miou, s=70, color=colours[row["label"]], marker=PRECISION_MARKERS[row["precision"]],
                       edgecolors="black", linewidths=0.6, zorder=3)
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="0.3", linestyle="--",
                linewidth=1.2, zorder=2)
        fronts.append((ax, points, front, [f"{row['label']} {row['precision']}" for row in group]))
        ax.set_xscale("log")
        ax.margins(x=0.08, y=0.15)
        ax.xaxis.set_major_formatter(plain_number)
        ax.xaxis.set_minor_formatter(sparse_number)
        ax.tick_params(axis="x", which="minor", labelsize=8)
        ax.set_title(f"{DEVICE_LABELS[device]}, network input {size_text(size)}", fontsize=10)
        ax.set_xlabel("FPS, model only (log scale)")
        ax.set_ylabel("mIoU on the val split (%)")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Exported models: mIoU against speed", fontsize=11)
    fig.tight_layout()
    for front in fronts:  # after the layout, which fixes the panel sizes the labels are fitted into
        _label_front(*front)
    model_handles = [Line2D([], [], linestyle="", marker="o", markersize=8, color=colours[label], label=label)
                     for label in labels]
    precision_handles = [Line2D([], [], linestyle="", marker=PRECISION_MARKERS[p], markersize=8, color="0.6",
                                markeredgecolor="black", label=p) for p in precisions]
    precision_handles.append(Line2D([], [], color="0.3", linestyle="--", label="Pareto front"))
    models_legend = fig.legend(handles=model_handles, title="model (colour)", loc="upper left",
                               bbox_to_anchor=(1.0, 0.93), fontsize=9, title_fontsize=9, frameon=False)
    fig.legend(handles=precision_handles, title="precision (marker)", loc="lower left", bbox_to_anchor=(1.0, 0.05),
               fontsize=9, title_fontsize=9, frameon=False)
    fig.add_artist(models_legend)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def write_reports(out: Path, rows: list[dict], checkpoints: list[ZooCheckpoint], machine: dict,
                  command: str) -> list[Path]:
    """``OUT.md``, ``OUT.json``, ``OUT.csv`` and, with measured rows, ``OUT_pareto.png``; returns the paths."""
    mark_pareto(rows)
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    provenance = [{"label": c.label, "model": c.model_name, "checkpoint": str(c.path), "sha256": c.sha256,
                   "training": c.training()} for c in checkpoints]
    plot = plot_pareto(rows, out.with_name(out.name + "_pareto.png"))
    written = [write_text_atomic(out.with_suffix(".md"),
                                 markdown_report(rows, provenance, machine, command, date,
                                                 plot.name if plot else None)),
               write_json_atomic(out.with_suffix(".json"), {"command": command, "date": date, "machine": machine,
                                                            "checkpoints": provenance, "rows": rows}),
               write_text_atomic(out.with_suffix(".csv"), csv_report(rows))]
    return written + ([plot] if plot else [])


EXAMPLE = """example:
  python benchmarks/zoo.py --checkpoints runs/zoo/*/last.pt runs/teacher_bisenetv2/last.pt \\
      --data camvid:${EDGESEG_DATA}/camvid --sizes 180x240 360x480 --precisions fp32 int8 fp16"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, metavar="CKPT", help="edgeseg checkpoints (.pt)")
    parser.add_argument("--data", required=True, metavar="DATASET[:ROOT]",
                        help="dataset for mIoU (val split) and INT8 calibration (train split), e.g. "
                             "camvid:/data/camvid; camvid alone is the embedded sample")
    parser.add_argument("--sizes", nargs="+", type=size_argument, default=None, metavar="HxW",
                        help="network input sizes (default: each checkpoint's trained size)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="export precisions (default: all three)")
    parser.add_argument("--devices", nargs="+", choices=DEVICES, default=None,
                        help="ONNX Runtime devices (default: every one this onnxruntime offers)")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per measurement (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    parser.add_argument("--camera-size", type=size_argument, default=DEFAULT_CAMERA_SIZE, metavar="HxW",
                        help="frame size of the end-to-end measurement (default 540x960, the bundled video's)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N val images")
    parser.add_argument("--calib-images", type=int, default=32, help="INT8 calibration images (default 32)")
    parser.add_argument("--calib-method", default="minmax", choices=("minmax", "entropy", "percentile"),
                        help="INT8 activation range estimation (default minmax)")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime and torch threads (default: the usable cores)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="PATH",
                        help="results path without suffix (default benchmarks/results/zoo)")
    parser.add_argument("--work-dir", default=None, help="row cache and exports (default: OUT_work)")
    parser.add_argument("--force", action="store_true", help="re-measure cached rows (exports are still reused)")
    args = parser.parse_args(argv)
    for name in ("iters", "calib_images", "threads", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must not be negative, got {args.warmup}")
    args.precisions = list(dict.fromkeys(args.precisions))
    args.sizes = list(dict.fromkeys(args.sizes)) if args.sizes else None
    args.devices = list(dict.fromkeys(args.devices)) if args.devices else None
    args.out = str(Path(args.out).with_suffix("")) if Path(args.out).suffix in (".md", ".json", ".csv") else args.out
    args.work_dir = args.work_dir or f"{args.out}_work"
    return args


def run_zoo(args: argparse.Namespace, command: str, log=print_line) -> dict:
    """Measure every (checkpoint, size, precision, device) row, from the cache where valid, and write the reports."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = load_checkpoints(args.checkpoints)
    zoo = ZooRun(args, checkpoints)
    devices = args.devices or available_devices()
    if "int8" in args.precisions:
        zoo.calibration_images()  # a missing train split fails now, not after hours of fp32 rows
    machine = describe_machine()
    plan = [(checkpoint, size, precision, device) for checkpoint in checkpoints
            for size in (args.sizes or [tuple(checkpoint.card["input_size"])])
            for precision in args.precisions for device in devices]
    sizes = ", ".join(size_text(s) for s in args.sizes) if args.sizes else "each checkpoint's trained size"
    log(f"{len(plan)} rows: {len(checkpoints)} checkpoint(s) x {sizes} x {', '.join(args.precisions)} x "
        f"{', '.join(DEVICE_LABELS[d] for d in devices)}; cache in {zoo.work}")
    rows = []
    for number, (checkpoint, size, precision, device) in enumerate(plan, start=1):
        row, how = zoo.row(checkpoint, size, precision, device)
        rows.append(row)
        log(f"[{number}/{len(plan)}] {checkpoint.label} {size_text(size)} {precision} {DEVICE_LABELS[device]}: "
            f"{'(cached) ' if how == 'cached' else ''}{describe_row(row)}")
    written = write_reports(Path(args.out), rows, checkpoints, machine, command)
    log("wrote " + ", ".join(str(path) for path in written))
    return {"rows": rows, "exports": zoo.exports_done, "written": written}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/zoo.py", *argv])
    try:
        run_zoo(args, command)
    except EdgesegError as err:
        print(f"zoo: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zoo: interrupted; finished rows are cached, run the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
