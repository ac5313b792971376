"""CPU backends side by side (issue 17): per student, ONNX Runtime and OpenVINO at FP32, OpenVINO BF16 where the CPU
has BF16 units, and each backend's INT8 (the same Q/DQ export), timed in one interleaved run.

Each configuration's ``run`` stage is called in turn, call by call, so that load from other processes or clock
changes hit every configuration alike; the figure is the median of ``--iters`` calls after ``--warmup``. Beside it:
argmax agreement with ORT FP32 on CamVid val images, mIoU where ``--checkpoint`` gives trained weights (untrained
students from the model registry are fine for speed only), and a roofline column: the model's GFLOP (PyTorch
count, 2 x multiply-adds) per median call as a share of the machine's dense FP32 limit, an ONNX Runtime MatMul on
the same threads measured in the same run. BF16 and INT8 rows are divided by that FP32 limit too: above 100% means
the lower precision beats what FP32 arithmetic could reach.

    python benchmarks/cpu_backends.py                          # every student, untrained, 360x480
    python benchmarks/cpu_backends.py --checkpoint runs/a/last.pt --checkpoint runs/b/last.pt --images 101
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from time import perf_counter

import numpy as np

from edgeseg.runtime.arguments import count_argument, size_argument
from edgeseg.runtime.backends.base import default_threads
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.evaluate import evaluate
from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic
from edgeseg.runtime.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import header_lines, provenance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = (("onnxruntime", "fp32", "fp32"), ("openvino", "fp32", "fp32"), ("openvino", "bf16", "fp32"),
           ("onnxruntime", "int8", "int8"), ("openvino", "int8", "int8"))
"""(backend, precision shown, export precision). OpenVINO's INT8 row is the INT8 export under the FP32 hint."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="registry students to time untrained (default: every student)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PT",
                        help="a trained checkpoint to time and score instead (repeatable; mIoU needs these)")
    parser.add_argument("--size", type=size_argument, default=(360, 480), metavar="HxW", help="default: 360x480")
    parser.add_argument("--warmup", type=count_argument(0), default=5, help="untimed calls per configuration")
    parser.add_argument("--iters", type=count_argument(1), default=30, help="timed calls per configuration")
    parser.add_argument("--images", type=count_argument(1), default=20,
                        help="CamVid val images for agreement (and mIoU); default 20")
    parser.add_argument("--data", default="camvid", help="dataset for agreement, mIoU and INT8 calibration")
    parser.add_argument("--calib-images", type=count_argument(1), default=32, help="INT8 calibration images")
    parser.add_argument("--gemm-size", type=count_argument(16), default=1024, help="N of the N x N x N MatMul")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for cpu_backends.{md,json}")
    return parser.parse_args(argv)


def gemm_limit(n: int, threads: int, iters: int) -> float:
    """Dense FP32 GFLOP/s of an ONNX Runtime N x N x N MatMul on ``threads`` threads (median of ``iters``)."""
    import onnxruntime
    from onnx import TensorProto, helper

    shape = [n, n]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(helper.make_model(graph).SerializeToString(),
                                           sess_options=options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal(shape, dtype=np.float32) for name in "ab"}
    samples = []
    for index in range(iters + 2):
        start = perf_counter()
        session.run(None, feed)
        if index >= 2:
            samples.append(perf_counter() - start)
    return 2.0 * n ** 3 / float(np.median(samples)) / 1e9


def students(args: argparse.Namespace, folder: Path) -> list[tuple[str, Path, bool]]:
    """(label, checkpoint, trained) per student: the given checkpoints, else untrained registry students."""
    import torch

    from edgeseg.runtime.classes import CAMVID, IMAGENET_MEAN, IMAGENET_STD
    from edgeseg.training.checkpoint import model_card, save_checkpoint
    from edgeseg.training.models import create_model, list_models

    if args.checkpoint:
        return [(f"{Path(path).parent.name}/{Path(path).stem}", Path(path), True) for path in args.checkpoint]
    chosen = []
    for name in args.models or list_models(role="student"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=CAMVID.num_classes).eval()
        card = model_card(model_name=name, model_kwargs={}, classes=CAMVID, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          input_size=list(args.size), config={})
        save_checkpoint(folder / f"{name}.pt", card, model.state_dict())
        chosen.append((name, folder / f"{name}.pt", False))
    return chosen


def gflops(checkpoint: Path, size: tuple[int, int]) -> float:
    from edgeseg.training.checkpoint import build_model_from_card, load_checkpoint
    from edgeseg.training.models import count_flops

    return count_flops(build_model_from_card(load_checkpoint(checkpoint), load_weights=False).eval(), size)


def export(checkpoint: Path, precision: str, args: argparse.Namespace, out: Path) -> Path:
    from edgeseg.export.api import ExportOptions, export_checkpoint

    int8 = {"calib": args.data, "calib_images": args.calib_images} if precision == "int8" else {}
    export_checkpoint(checkpoint, "onnx", ExportOptions(size=args.size, precision=precision, fuse="all", **int8),
                      out=out, log=lambda line: None)
    return out


def bf16_supported() -> bool:
    import openvino

    from edgeseg.runtime.backends.openvino_runtime import cpu_capabilities

    return "BF16" in cpu_capabilities(openvino.Core())


def measure(label: str, checkpoint: Path, trained: bool, args: argparse.Namespace, folder: Path, limit: float,
            images: list[np.ndarray], dataset) -> list[dict]:
    files = {precision: export(checkpoint, precision, args, folder / f"{label}_{precision}.onnx")
             for precision in ("fp32", "int8")}
    cost = gflops(checkpoint, args.size)
    rows, segmenters = [], {}
    for backend, precision, exported in CONFIGS:
        row = {"model": label, "trained": trained, "backend": backend, "precision": precision, "gflop": cost}
        if precision == "bf16" and not bf16_supported():
            rows.append({**row, "status": "skipped", "reason": "no BF16 units on this CPU"})
            continue
        options = {"precision": precision} if precision == "bf16" else {}
        segmenter = Segmenter.load(files[exported], backend=backend, device="cpu", size=args.size, **options)
        segmenters[len(rows)] = segmenter
        rows.append({**row, "status": "ok", "compute_precision": segmenter.backend.compute_precision or exported})
    prepared = {index: seg.prepare(images[:1]) for index, seg in segmenters.items()}
    samples: dict[int, list[float]] = {index: [] for index in segmenters}
    for call in range(args.warmup + args.iters):  # interleaved: every configuration once per round
        for index, segmenter in segmenters.items():
            start = perf_counter()
            segmenter.run(prepared[index])
            if call >= args.warmup:
                samples[index].append(perf_counter() - start)
    reference = segmenters[0].segment_batch(images)
    for index, segmenter in segmenters.items():
        median_s = float(np.median(samples[index]))
        maps = segmenter.segment_batch(images)
        rows[index].update(median_ms=1000 * median_s, gflops_per_s=cost / median_s,
                           roofline_share=cost / median_s / limit,
                           agreement=float(np.mean([np.mean(a == b) for a, b in zip(maps, reference)])))
        if trained:
            rows[index]["miou"] = evaluate(segmenter, dataset, limit=args.images)["miou"]
        segmenter.close()
    return rows


def markdown(rows: list[dict], record: dict, limit: float, args: argparse.Namespace) -> str:
    lines = ["# CPU backends: ONNX Runtime and OpenVINO per student", "", *header_lines(record),
             f"- size {args.size[0]}x{args.size[1]}, batch 1, {record['threads']} threads; median of {args.iters} "
             f"calls after {args.warmup}, all configurations interleaved call by call",
             f"- dense FP32 limit: {limit:.1f} GFLOP/s (ONNX Runtime MatMul {args.gemm_size}^3, same threads, "
             "same run); share = model GFLOP per median call / that limit",
             f"- agreement: argmax agreement with ORT FP32 on {args.images} {args.data} val images", "",
             "| model | backend | precision | computed in | median ms | speed-up vs ORT FP32 | GFLOP | GFLOP/s | "
             "share of FP32 limit | agreement | mIoU |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {row["model"]: row.get("median_ms") for row in rows if row["backend"] == "onnxruntime"
            and row["precision"] == "fp32"}
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['model']} | {row['backend']} | {row['precision']} | {row['reason']} "
                         "| | | | | | | |")
            continue
        miou = f"{100 * row['miou']:.1f}" if "miou" in row else "untrained"
        lines.append(f"| {row['model']} | {row['backend']} | {row['precision']} | {row['compute_precision']} | "
                     f"{row['median_ms']:.2f} | {base[row['model']] / row['median_ms']:.2f}x | {row['gflop']:.2f} | "
                     f"{row['gflops_per_s']:.1f} | {100 * row['roofline_share']:.0f}% | "
                     f"{100 * row['agreement']:.2f}% | {miou} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = default_threads()
    dataset = open_dataset(args.data, "val")
    images = [dataset.read_image(index) for index in range(min(args.images, len(dataset)))]
    limit = gemm_limit(args.gemm_size, threads, max(5, args.iters))
    rows = []
    with tempfile.TemporaryDirectory(prefix="cpu_backends_") as work:
        for label, checkpoint, trained in students(args, Path(work)):
            print(f"{label}: exporting and timing", file=sys.stderr, flush=True)
            rows.extend(measure(label, checkpoint, trained, args, Path(work), limit, images, dataset))
    record = {**provenance("benchmarks/cpu_backends.py", argv), "threads": threads, "gemm_gflops_per_s": limit}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "cpu_backends.json", {**record, "settings": {
        "size": list(args.size), "warmup": args.warmup, "iters": args.iters, "images": args.images,
        "data": args.data, "calib_images": args.calib_images, "gemm_size": args.gemm_size}, "rows": rows})
    write_text_atomic(args.out / "cpu_backends.md", markdown(rows, record, limit, args))
    print(f"wrote {args.out / 'cpu_backends.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
