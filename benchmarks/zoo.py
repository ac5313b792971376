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
import datetime as dt
import hashlib
import json
import os
import re
import shlex
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
from edgeseg.runtime.atomic_files import file_sha256, write_json_atomic, write_text_atomic
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.sysinfo import describe_machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roofline import GEMM_SIZE, STREAM_MB, bandwidth_limit, gemm_limit, place  # noqa: E402
from zoo_report import DEVICE_LABELS, DEVICES, PRECISIONS, describe_row, size_text, write_reports  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "zoo"
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
        """Parameters, GFLOPs (2 x multiply-adds / 1e9) and minimum FP32 traffic (MB) of the PyTorch network at
        ``size``."""
        key = (checkpoint.label, size)
        if key not in self._costs:
            from edgeseg.training.models import count_flops, count_params, count_traffic

            model = checkpoint.model()
            self._costs[key] = {"params": count_params(model), "gflops": count_flops(model, size),
                                "traffic_mb": count_traffic(model, size)}
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
            # the CPU's limits beside each CPU row, under the same load, so that a cached row keeps its own
            limits = ({"peak_gflops": gemm_limit(GEMM_SIZE, self.settings.threads, 10),
                       "bandwidth_gbs": bandwidth_limit(STREAM_MB, self.settings.threads, 5)}
                      if device == "cpu" else None)
            timing = benchmark(segmenter, batch=self.settings.batch, warmup=self.settings.warmup,
                               iters=self.settings.iters, camera_size=tuple(self.settings.camera_size),
                               progress=False)
            load_after = os.getloadavg()[0]
        cost = self.costs(checkpoint, size)
        roofline = limits and {**limits, **place(cost["gflops"], cost["traffic_mb"],
                                                 timing["latency_ms"]["p50"] / 1e3, **limits)}
        return {
            "status": "ok", "onnx": str(onnx_path), "onnx_mb": onnx_path.stat().st_size / 1e6,
            "providers": timing["providers"], "miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
            "per_class_iou": scores["per_class_iou"], "eval_images": scores["images"],
            "latency_ms": timing["latency_ms"], "fps": timing["fps"], "e2e_latency_ms": timing["e2e_latency_ms"],
            "e2e_fps": timing["e2e_fps"], "load_average": [load_before, load_after], "roofline": roofline,
            "seconds": {"export": exported - started, "eval": evaluated - exported,
                        "bench": time.perf_counter() - evaluated},
        }


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
