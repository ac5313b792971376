"""CPU backends side by side (issue 17): per student, every way edgeseg can run it on this CPU, timed in one run.

Per student, from one FP32 and two INT8 exports (the CPU and the TensorRT Q/DQ schemes), all fused, at 360x480:
a default ONNX Runtime session (the reference a user would time), edgeseg's ORT backend with intra-op spinning off
(edgeseg before issue 17) and on, OpenVINO FP32, OpenVINO BF16 where the CPU has BF16 units, and each INT8 export on
both backends. Reported per configuration: median model-only latency, the speed-up over edgeseg's ORT FP32 path as
it was (spinning off), argmax agreement with it and mIoU on CamVid val for trained checkpoints, and where the call
sits under the machine's roofline (:mod:`roofline`: a MatMul and a stream measured in the same run). Beside it, the
``video`` command on the real clip with spinning off and on, and OpenVINO's compile time from the ``.onnx`` and from
its own IR, which decides whether an IR export format is worth having.

Timing: every configuration runs a block of calls in turn, ``--rounds`` times, with a pause between blocks so that
spinning threads of the previous configuration have gone to sleep; load from other processes and clock changes hit
every configuration alike. The figure is the median of all timed calls.

    python benchmarks/cpu_backends.py                      # every student untrained: speed only
    python benchmarks/cpu_backends.py --checkpoint runs/zoo/fastscnn/last.pt --checkpoint runs/zoo/...
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from edgeseg.runtime.arguments import count_argument, size_argument
from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic
from edgeseg.runtime.backends.base import default_threads
from edgeseg.runtime.datasets import data_path, open_dataset
from edgeseg.runtime.evaluate import evaluate
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.video import segment_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import header_lines, provenance  # noqa: E402
from roofline import GEMM_SIZE, STREAM_MB, bandwidth_limit, gemm_limit, place  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXPORTS = {"fp32": {"precision": "fp32"}, "int8-cpu": {"precision": "int8", "int8_scheme": "cpu"},
           "int8-tensorrt": {"precision": "int8", "int8_scheme": "tensorrt"}}
"""The exports every configuration runs from: name -> ExportOptions fields (all fused, at ``--size``)."""
NOT_STUDENTS = {"tiny_segnet": "a few convolutions for tests, not a deployable student"}


@dataclass(frozen=True)
class Config:
    name: str
    backend: str  # "ort-session" is a bare onnxruntime.InferenceSession with default options
    export: str
    options: dict = field(default_factory=dict)
    scored: bool = True  # False where the numerics are those of another row (spinning changes no arithmetic)


CONFIGS = (
    Config("ORT default session", "ort-session", "fp32", scored=False),
    Config("edgeseg ORT FP32, spinning off", "onnxruntime", "fp32", {"spinning": False}),
    Config("edgeseg ORT FP32, spinning on", "onnxruntime", "fp32", {"spinning": True}, scored=False),
    Config("OpenVINO FP32", "openvino", "fp32"),
    Config("OpenVINO BF16", "openvino", "fp32", {"precision": "bf16"}),
    Config("edgeseg ORT INT8 (CPU Q/DQ)", "onnxruntime", "int8-cpu", {"spinning": False}),
    Config("OpenVINO INT8 (CPU Q/DQ)", "openvino", "int8-cpu"),
    Config("OpenVINO INT8 (TensorRT Q/DQ)", "openvino", "int8-tensorrt"),
    Config("OpenVINO INT8 (CPU Q/DQ) + BF16", "openvino", "int8-cpu", {"precision": "bf16"}),
)
BASELINE = 1
"""Index of edgeseg's FP32 ORT path as it was before issue 17: speed-ups, agreement and mIoU drops are against it."""


class BareSession:
    """A default ``onnxruntime.InferenceSession`` (no options at all), timed like a backend."""

    compute_precision = "fp32"

    def __init__(self, path: Path) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def close(self) -> None:
        self.session = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="registry students to time untrained (default: every student)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PT",
                        help="a trained checkpoint to time and score instead (repeatable; mIoU needs these)")
    parser.add_argument("--size", type=size_argument, default=(360, 480), metavar="HxW", help="default: 360x480")
    parser.add_argument("--rounds", type=count_argument(1), default=6, help="blocks per configuration (default 6)")
    parser.add_argument("--block", type=count_argument(1), default=5, help="timed calls per block (default 5)")
    parser.add_argument("--images", type=count_argument(1), default=None,
                        help="val images for agreement and mIoU (default: all)")
    parser.add_argument("--data", default="camvid", help="dataset for agreement, mIoU and INT8 calibration")
    parser.add_argument("--calib-images", type=count_argument(1), default=128, help="INT8 calibration images")
    parser.add_argument("--video", help="clip for the video command's end-to-end FPS (default: "
                                        "$EDGESEG_DATA/video/solidWhiteRight.mp4, the shared highway clip)")
    parser.add_argument("--video-frames", type=count_argument(0), default=120,
                        help="frames per video run, two runs per spinning setting (0: no video measurement)")
    parser.add_argument("--gemm-size", type=count_argument(16), default=GEMM_SIZE, help="N of the N x N x N MatMul")
    parser.add_argument("--stream-mb", type=count_argument(1), default=STREAM_MB, help="MB per array of the stream Add")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for cpu_backends.{md,json}")
    args = parser.parse_args(argv)
    if args.video is None and args.video_frames:
        args.video = str(data_path("video/solidWhiteRight.mp4"))
    return args


def students(args: argparse.Namespace, folder: Path) -> list[tuple[str, Path, bool]]:
    """(label, checkpoint, trained) per student: the given checkpoints, else untrained registry students."""
    import torch

    from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
    from edgeseg.training.checkpoint import load_checkpoint, model_card, save_checkpoint
    from edgeseg.training.models import create_model, list_models

    if args.checkpoint:
        return [(load_checkpoint(path)["model"]["name"], Path(path), True) for path in args.checkpoint]
    chosen = []
    for name in args.models or [name for name in list_models(role="student") if name not in NOT_STUDENTS]:
        torch.manual_seed(0)
        model = create_model(name, num_classes=CAMVID.num_classes).eval()
        card = model_card(model_name=name, model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          input_size=list(args.size), config={})
        save_checkpoint(folder / f"{name}.pt", card, model.state_dict())
        chosen.append((name, folder / f"{name}.pt", False))
    return chosen


def costs(checkpoint: Path, size: tuple[int, int]) -> dict:
    """GFLOP (2 x multiply-adds) and minimum FP32 traffic in MB of one forward pass of the PyTorch network."""
    from edgeseg.training.checkpoint import build_model_from_card, load_checkpoint
    from edgeseg.training.models import count_flops, count_traffic

    model = build_model_from_card(load_checkpoint(checkpoint), load_weights=False).eval()
    return {"gflop": count_flops(model, size), "traffic_mb": count_traffic(model, size)}


def export(checkpoint: Path, name: str, args: argparse.Namespace, out: Path) -> Path:
    from edgeseg.export.api import ExportOptions, export_checkpoint

    fields = dict(EXPORTS[name])
    if fields["precision"] == "int8":
        fields.update(calib=args.data, calib_images=args.calib_images)
    export_checkpoint(checkpoint, "onnx", ExportOptions(size=args.size, fuse="all", **fields), out=out,
                      log=lambda line: None)
    return out


@functools.cache
def bf16_supported() -> bool:
    import openvino

    from edgeseg.runtime.backends.openvino_runtime import cpu_capabilities

    return "BF16" in cpu_capabilities(openvino.Core())


def open_config(config: Config, files: dict[str, Path], size: tuple[int, int]):
    if config.backend == "ort-session":
        return BareSession(files[config.export])
    return Segmenter.load(files[config.export], backend=config.backend, device="cpu", size=size, **config.options)


def time_blocks(runners: dict[int, Any], batch: np.ndarray, rounds: int, block: int) -> dict[int, list[float]]:
    """Seconds per call of each runner: ``rounds`` blocks of one untimed and ``block`` timed calls, in turn."""
    samples: dict[int, list[float]] = {index: [] for index in runners}
    for _ in range(rounds):
        for index, runner in runners.items():
            time.sleep(0.05)  # the previous runner's spinning threads give up and sleep
            runner.run(batch)
            for _ in range(block):
                start = perf_counter()
                runner.run(batch)
                samples[index].append(perf_counter() - start)
    return samples


def video_fps(path: Path, args: argparse.Namespace, folder: Path) -> dict:
    """End-to-end FPS of ``segment_video`` (decode, model, overlay, MP4 encode) with spinning off and on, in
    alternating runs (off, on, off, on); the median per setting."""
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(2):
        for setting in ("off", "on"):
            summary = segment_video(path, args.video, str(folder / "video.mp4"), backend="onnxruntime", device="cpu",
                                    size=args.size, max_frames=args.video_frames, progress=False,
                                    options={"spinning": setting == "on"})
            runs[setting].append(summary["fps"])
    return {setting: {"runs": fps, "median": float(np.median(fps))} for setting, fps in runs.items()}


def openvino_load_ms(path: Path, folder: Path) -> dict:
    """Median compile time (read + compile, 3 tries each) of the FP32 model from the ``.onnx`` and from an IR."""
    import openvino

    core = openvino.Core()
    xml = folder / (path.stem + ".xml")
    openvino.save_model(core.read_model(str(path)), str(xml), compress_to_fp16=False)
    timings = {}
    for kind, source in (("onnx", path), ("ir", xml)):
        samples = []
        for _ in range(3):
            start = perf_counter()
            core.compile_model(core.read_model(str(source)), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            samples.append(1000 * (perf_counter() - start))
        timings[kind] = float(np.median(samples))
    return timings


def measure(label: str, checkpoint: Path, trained: bool, args: argparse.Namespace, folder: Path, limits: dict,
            dataset, images: list[np.ndarray]) -> dict:
    files = {name: export(checkpoint, name, args, folder / f"{label}_{name}.onnx") for name in EXPORTS}
    cost = costs(checkpoint, args.size)
    rows: list[dict] = []
    runners: dict[int, Any] = {}
    for config in CONFIGS:
        row = {"model": label, "trained": trained, "config": config.name, "backend": config.backend,
               "export": config.export, "options": config.options, **cost}
        if config.options.get("precision") == "bf16" and not bf16_supported():
            rows.append({**row, "status": "skipped", "reason": "no BF16 units on this CPU"})
            continue
        runner = open_config(config, files, args.size)
        runners[len(rows)] = runner
        precision = runner.compute_precision if isinstance(runner, BareSession) else runner.backend.compute_precision
        rows.append({**row, "status": "ok", "compute_precision": precision or EXPORTS[config.export]["precision"]})
    batch = runners[BASELINE].prepare(images[:1])
    samples = time_blocks(runners, batch, args.rounds, args.block)
    reference = runners[BASELINE].segment_batch(images)
    for index, runner in runners.items():
        config, median_s = CONFIGS[index], float(np.median(samples[index]))
        rows[index].update(median_ms=1000 * median_s, p90_ms=1000 * float(np.percentile(samples[index], 90)),
                           **place(cost["gflop"], cost["traffic_mb"], median_s, limits["peak_gflops"],
                                   limits["bandwidth_gbs"]))
        if config.scored:
            maps = runner.segment_batch(images)
            rows[index]["agreement"] = float(np.mean([np.mean(a == b) for a, b in zip(maps, reference)]))
            if trained:
                rows[index]["miou"] = evaluate(runner, dataset, limit=args.images, progress=False)["miou"]
        runner.close()
    result = {"model": label, "trained": trained, "rows": rows,
              "openvino_load_ms": openvino_load_ms(files["fp32"], folder)}
    if args.video_frames:
        result["video_fps"] = video_fps(files["fp32"], args, folder)
    return result


def best_config(rows: list[dict], max_drop: float) -> dict | None:
    """The fastest configuration whose mIoU is within ``max_drop`` points of the baseline's (trained models only)."""
    base = rows[BASELINE].get("miou")
    if base is None:
        return None
    within = [row for row in rows if row.get("miou") is not None and 100 * (base - row["miou"]) < max_drop]
    return min(within, key=lambda row: row["median_ms"])


def markdown(results: list[dict], record: dict, limits: dict, args: argparse.Namespace) -> str:
    images = f"{args.images or 'all'} {args.data} val images"
    lines = ["# CPU backends: ONNX Runtime and OpenVINO per student", "", *header_lines(record),
             f"- network input {args.size[0]}x{args.size[1]}, batch 1, {record['threads']} threads, fused exports "
             f"(uint8 image in, class ids out); INT8 calibrated on {args.calib_images} train images",
             f"- timing: median of {args.rounds} x {args.block} calls per configuration, configurations taking turns "
             "block by block (one untimed call and a 50 ms pause before each block)",
             f"- machine limits, same run: dense FP32 peak {limits['peak_gflops']:.1f} GFLOP/s (ORT MatMul "
             f"{args.gemm_size}^3), memory bandwidth {limits['bandwidth_gbs']:.1f} GB/s (ORT Add of "
             f"{args.stream_mb} MB arrays)",
             "- roofline: intensity = GFLOP / minimum FP32 traffic (conv and linear inputs, outputs and weights, once "
             "each); a model is memory-bound when intensity x bandwidth < peak. `share of peak` = achieved GFLOP/s / "
             "FP32 peak; `share of bound` = achieved / min(peak, intensity x bandwidth). BF16 and INT8 rows are held "
             "against the FP32 limits too, so above 100% means the lower precision beats what FP32 could reach",
             f"- agreement and mIoU: {images} through the exported file; agreement = argmax agreement with edgeseg "
             "ORT FP32 (spinning off), which is also the base of speed-ups and mIoU drops", ""]
    lines += ["| model | configuration | computed in | median ms | speed-up | GFLOP/s | share of peak | bound | "
              "share of bound | agreement | mIoU | drop |", "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for result in results:
        rows = result["rows"]
        base = rows[BASELINE]
        for row in rows:
            if row["status"] != "ok":
                lines.append(f"| {row['model']} | {row['config']} | {row['reason']} | | | | | | | | | |")
                continue
            agreement = f"{100 * row['agreement']:.2f}%" if "agreement" in row else "(same arithmetic)"
            miou = f"{100 * row['miou']:.2f}" if "miou" in row else ""
            drop = f"{100 * (base['miou'] - row['miou']):+.2f}" if "miou" in row and "miou" in base else ""
            lines.append(f"| {row['model']} | {row['config']} | {row['compute_precision']} | {row['median_ms']:.2f} | "
                         f"{base['median_ms'] / row['median_ms']:.2f}x | {row['gflops_per_s']:.1f} | "
                         f"{100 * row['share_of_peak']:.0f}% | {row['bound']} | {100 * row['share_of_bound']:.0f}% | "
                         f"{agreement} | {miou} | {drop} |")
    lines += ["", "## Spinning: edgeseg's ORT session against a default one, and the video command", "",
              "Model-only latency from the table above. Video: `edgeseg video` (decode, model, overlay, MP4 encode) "
              f"on {Path(args.video or '-').name}, {args.video_frames} frames per run, runs alternating off/on, "
              "median of 2 runs.", "",
              "| model | GFLOP | intensity (FLOP/B) | default session ms | spinning off ms (vs default) | "
              "spinning on ms (vs default) | video FPS, off | video FPS, on |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        default, off, on = (result["rows"][index] for index in (0, 1, 2))
        video = result.get("video_fps", {})
        fps = [f"{video[s]['median']:.2f} ({', '.join(f'{v:.2f}' for v in video[s]['runs'])})" if s in video else ""
               for s in ("off", "on")]
        lines.append(f"| {result['model']} | {off['gflop']:.2f} | {off['intensity']:.1f} | {default['median_ms']:.2f} "
                     f"| {off['median_ms']:.2f} ({off['median_ms'] / default['median_ms'] - 1:+.1%}) | "
                     f"{on['median_ms']:.2f} ({on['median_ms'] / default['median_ms'] - 1:+.1%}) | {fps[0]} | "
                     f"{fps[1]} |")
    lines += ["", "## Best configuration per student (mIoU drop under 0.5 points)", "",
              "| model | fastest configuration | median ms | speed-up over edgeseg ORT FP32 | mIoU drop | "
              "OpenVINO compile from .onnx / IR ms |", "|---|---|---:|---:|---:|---:|"]
    for result in results:
        best = best_config(result["rows"], 0.5)
        load = result["openvino_load_ms"]
        loads = f"{load['onnx']:.0f} / {load['ir']:.0f}"
        if best is None:
            lines.append(f"| {result['model']} | (untrained: no mIoU) | | | | {loads} |")
            continue
        base = result["rows"][BASELINE]
        lines.append(f"| {result['model']} | {best['config']} | {best['median_ms']:.2f} | "
                     f"{base['median_ms'] / best['median_ms']:.2f}x | {100 * (base['miou'] - best['miou']):+.2f} | "
                     f"{loads} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = default_threads()
    dataset = open_dataset(args.data, "val")
    count = min(args.images or len(dataset), len(dataset))
    images = [dataset.read_image(index) for index in range(count)]
    limits = {"peak_gflops": gemm_limit(args.gemm_size, threads, 10),
              "bandwidth_gbs": bandwidth_limit(args.stream_mb, threads, 5)}
    results = []
    with tempfile.TemporaryDirectory(prefix="cpu_backends_") as work:
        for label, checkpoint, trained in students(args, Path(work)):
            print(f"{label}: exporting, timing, scoring", file=sys.stderr, flush=True)
            results.append(measure(label, checkpoint, trained, args, Path(work), limits, dataset, images))
    record = {**provenance("benchmarks/cpu_backends.py", argv), "threads": threads, **limits}
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "cpu_backends.json", {**record, "settings": settings, "results": results})
    write_text_atomic(args.out / "cpu_backends.md", markdown(results, record, limits, args))
    print(f"wrote {args.out / 'cpu_backends.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
