"""FP32 vs FP16 vs INT8 exports: mIoU through ONNX Runtime, FP16 agreement, CPU latency; plus the zoo parity loop.

Two jobs, each writing a Markdown table with its command and machine next to a JSON file of the same numbers:

``python benchmarks/export_precision.py CKPT [CKPT ...] [--max-drop 0.5]``
    Exports every checkpoint to FP32, FP16 and INT8 ONNX (INT8 calibrated on the train split of ``--data``),
    evaluates the mIoU of each through ONNX Runtime on the val split (the runtime's own evaluator, so the numbers
    are what ``edgeseg eval`` reports), measures the FP16 argmax agreement with FP32 on the same images, and times
    the graphs on the CPU in one process with identical session options, interleaving the calls so that
    load from other processes hits all alike. With ``--max-drop``, each INT8 scheme is also exported within that
    budget (``edgeseg export --max-drop``), the search run on every other val image; its mIoU is then reported on
    the whole val split and on the val images the search never saw. -> ``benchmarks/results/export_precision.{md,json}``

``python benchmarks/export_precision.py --all-students [--checkpoint-dir DIR]``
    For every student in the zoo (a trained ``DIR/<name>.pt`` when present, else random weights made decisive with
    :func:`~edgeseg.export.check.randomize_for_parity`), exports
    static and dynamic, unfused and fused FP32 graphs and runs the export parity check against PyTorch on val
    images of ``--data``. -> ``benchmarks/results/export_students.{md,json}``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeseg.export.api import ExportOptions, export_checkpoint
from edgeseg.export.check import DEFAULT_MIN_AGREEMENT, randomize_for_parity
from edgeseg.export.int8_budget import Int8BudgetError
from edgeseg.export.precision import load_calibration_images
from edgeseg.runtime.bench import latency_summary
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.evaluate import evaluate
from edgeseg.runtime.metrics import ConfusionMatrix
from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.sizes import parse_size
from edgeseg.runtime.sysinfo import describe_machine, format_machine
from edgeseg.training.checkpoint import load_checkpoint, model_card, save_checkpoint
from edgeseg.training.models import create_model, list_models

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Variant label -> (precision, INT8 scheme): the TensorRT-ready Q/DQ, and the one for ONNX Runtime's CPU kernels.
VARIANTS = {"fp32": ("fp32", "tensorrt"), "fp16": ("fp16", "tensorrt"), "int8": ("int8", "tensorrt"),
            "int8-cpu": ("int8", "cpu")}


def header(title: str, description: str, machine: dict) -> list[str]:
    command = " ".join(["python", "benchmarks/export_precision.py", *sys.argv[1:]])
    return [f"# {title}", "", description, "", f"Command: `{command}`", "",
            f"Commit {git_commit()}, {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}.", "",
            "Machine:", "", *(f"    {line}" for line in format_machine(machine).splitlines()), ""]


def quiet(line: str) -> None:
    """Export progress is not part of the benchmark's output."""


def class_ids(segmenter: Segmenter, images: list[np.ndarray]) -> np.ndarray:
    return segmenter.class_ids(segmenter.run(segmenter.prepare(images)))


def interleaved_latency(segmenters: dict[str, Segmenter], size: tuple[int, int], warmup: int, iters: int) -> dict:
    """Model-only latency of each graph, one call of each in turn per round, so background load is shared."""
    frame = (np.random.default_rng(0).integers(0, 256, (size[0], size[1], 3), dtype=np.uint8))
    prepared = {name: seg.prepare([frame]) for name, seg in segmenters.items()}
    for _ in range(warmup):
        for name, seg in segmenters.items():
            seg.run(prepared[name])
    samples: dict[str, list[float]] = {name: [] for name in segmenters}
    for _ in range(iters):
        for name, seg in segmenters.items():
            start = time.perf_counter()
            seg.run(prepared[name])
            samples[name].append(time.perf_counter() - start)
    return {name: latency_summary(values) for name, values in samples.items()}


def miou_on(segmenter: Segmenter, dataset, indices: list[int]) -> float:
    """mIoU of ``segmenter`` over the images ``indices`` of ``dataset``."""
    matrix = ConfusionMatrix(dataset.classes.num_classes, ignore_index=dataset.classes.ignore_index)
    for index in indices:
        image, label = dataset[index]
        matrix.update(label, segmenter.segment(image))
    return matrix.miou()


def budget_variants(args) -> dict[str, tuple[str, str]]:
    """``int8<=B`` (TensorRT Q/DQ) and ``int8-cpu<=B`` labels of the budget exports, when ``--max-drop`` is given."""
    if args.max_drop is None:
        return {}
    return {f"{label}<={args.max_drop:g}": VARIANTS[label] for label in ("int8", "int8-cpu")}


def precision_study(args) -> None:
    machine = describe_machine()
    rows = []
    workdir = Path(args.work_dir or tempfile.mkdtemp(prefix="edgeseg-precision-"))
    workdir.mkdir(parents=True, exist_ok=True)
    val = open_dataset(args.data, "val")
    calib_images = load_calibration_images(args.data, "train", args.calib_images)  # fails early; the count is reported
    limit = min(args.limit or len(val), len(val))
    agreement_images = [val.read_image(i) for i in range(min(limit, args.agreement_images))]
    for checkpoint in map(Path, args.checkpoints):
        card = load_checkpoint(checkpoint)
        size = parse_size(args.size, "--size") if args.size else tuple(card["input_size"])
        name = card["model"]["name"]
        segmenters, row = {}, {"checkpoint": str(checkpoint), "model": name, "size": list(size),
                                "trained_metrics": card.get("metrics", {}), "precisions": {}}
        budgets = budget_variants(args)
        for precision, (graph_precision, scheme) in {**VARIANTS, **budgets}.items():
            path = workdir / f"{name}_{size[0]}x{size[1]}_{precision.replace('<=', '_budget')}.onnx"
            started = time.perf_counter()
            int8 = {"calib": args.data, "calib_images": args.calib_images, "calib_method": args.calib_method,
                    "int8_scheme": scheme}
            if precision in budgets:
                int8.update(max_drop=args.max_drop, check_data=args.data, check_images=(len(val) + 1) // 2)
            try:
                export_checkpoint(checkpoint, "onnx", ExportOptions(size=size, precision=graph_precision,
                                                                    **(int8 if graph_precision == "int8" else {})),
                                  out=path, log=quiet)
            except Int8BudgetError as err:  # a budget INT8 cannot meet is a result, not a crash
                row["precisions"][precision] = {"error": str(err)}
                print(f"{name} {precision}: {err}", flush=True)
                continue
            export_s = time.perf_counter() - started
            segmenters[precision] = Segmenter.load(path, device="cpu")
            scores = evaluate(segmenters[precision], val, limit=limit, progress=False)
            row["precisions"][precision] = {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
                                            "export_seconds": export_s, "file_mb": path.stat().st_size / 1e6,
                                            "eval_images": scores["images"]}
            if precision in budgets:
                outcome = segmenters[precision].meta.extra["int8_budget"]
                searched = set(outcome["check_images"])
                unseen = [i for i in range(len(val)) if val.paths(i)[0].name not in searched]
                row["precisions"][precision].update(
                    kept_layers=outcome["kept_layers"], layers=outcome["layers"],
                    search_images=len(searched), unseen_images=len(unseen),
                    unseen_miou=miou_on(segmenters[precision], val, unseen),
                    unseen_fp32_miou=miou_on(segmenters["fp32"], val, unseen))
            print(f"{name} {precision}: mIoU {100 * scores['miou']:.2f} on {scores['images']} images", flush=True)
        reference = np.concatenate([class_ids(segmenters["fp32"], [image]) for image in agreement_images])
        for precision in [v for v in segmenters if v != "fp32"]:
            ids = np.concatenate([class_ids(segmenters[precision], [image]) for image in agreement_images])
            row["precisions"][precision]["agreement_vs_fp32"] = float((ids == reference).mean())
        latency = interleaved_latency(segmenters, size, args.warmup, args.iters)
        for precision in segmenters:
            row["precisions"][precision]["latency_ms"] = latency[precision]
        row["int8_fp32_latency_ratio"] = latency["int8"]["p50"] / latency["fp32"]["p50"]
        for precision in budgets:
            if precision in latency:
                row["precisions"][precision]["latency_ratio"] = latency[precision]["p50"] / latency["fp32"]["p50"]
        row["int8_cpu_fp32_latency_ratio"] = latency["int8-cpu"]["p50"] / latency["fp32"]["p50"]
        row["fp16_fp32_latency_ratio"] = latency["fp16"]["p50"] / latency["fp32"]["p50"]
        rows.append(row)
        for seg in segmenters.values():
            seg.close()

    result = {"machine": machine, "data": args.data, "eval_images": limit, "calib_images": len(calib_images),
              "calib_method": args.calib_method, "latency_iters": args.iters, "max_drop": args.max_drop,
              "rows": rows}
    write_json_atomic(RESULTS / f"{args.name}.json", result)
    lines = header("Export precision: FP32 vs FP16 vs INT8 through ONNX Runtime (CPU)",
                   f"mIoU on the first {limit} images of {args.data} val through `Segmenter` + the runtime "
                   f"evaluator; int8 = ORT static QDQ for TensorRT (S8S8, symmetric, per-channel), int8-cpu = the "
                   f"same with asymmetric uint8 activations for ONNX Runtime's x86 kernels, {len(calib_images)} "
                   f"calibration images from the train split ({args.calib_method}); agreement = fraction of "
                   f"pixels with the FP32 export's class, on {len(agreement_images)} val images at network "
                   f"resolution; latency = model-only p50 of {args.iters} interleaved calls, batch 1, ORT CPU "
                   "provider with the runtime's session options. FP16 on the CPU runs with FP16 weights but "
                   "mostly FP32 kernels (ONNX Runtime inserts casts), so its latency here says nothing about a GPU.",
                   machine)
    lines += ["| model | size | precision | mIoU % | drop vs FP32 | agreement vs FP32 | p50 ms | vs FP32 | MB |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        base = row["precisions"]["fp32"]
        for precision, entry in row["precisions"].items():
            if "error" in entry:
                lines.append(f"| {row['model']} | {row['size'][0]}x{row['size'][1]} | {precision} | budget not met "
                             "| | | | | |")
                continue
            agreement = entry.get("agreement_vs_fp32")
            lines.append(
                f"| {row['model']} | {row['size'][0]}x{row['size'][1]} | {precision} | {100 * entry['miou']:.2f} | "
                f"{100 * (base['miou'] - entry['miou']):+.2f} | "
                f"{'' if agreement is None else f'{100 * agreement:.2f}%'} | {entry['latency_ms']['p50']:.1f} | "
                f"{entry['latency_ms']['p50'] / base['latency_ms']['p50']:.2f}x | {entry['file_mb']:.1f} |")
    budget_rows = [(row, precision, entry) for row in rows for precision, entry in row["precisions"].items()
                   if "<=" in precision]
    if budget_rows:
        lines += ["", f"INT8 within a {args.max_drop:g}-point budget (`--max-drop {args.max_drop:g}`): the search "
                      "(which layers stay in float) ran on every other val image; `unseen` = the other val images, "
                      "which neither the search nor the calibration saw.", "",
                  "| model | graph | layers kept in float | drop on val | drop on unseen | unseen images | "
                  "p50 vs FP32 |", "|---|---|---|---:|---:|---:|---:|"]
        for row, precision, entry in budget_rows:
            if "error" in entry:
                lines.append(f"| {row['model']} | {precision} | {entry['error']} | | | | |")
                continue
            base = row["precisions"]["fp32"]
            kept = ", ".join(entry["kept_layers"]) or "none"
            lines.append(f"| {row['model']} | {precision} | {len(entry['kept_layers'])} of {entry['layers']}: "
                         f"{kept} | {100 * (base['miou'] - entry['miou']):+.2f} | "
                         f"{100 * (entry['unseen_fp32_miou'] - entry['unseen_miou']):+.2f} | "
                         f"{entry['unseen_images']} | "
                         f"{entry['latency_ms']['p50'] / base['latency_ms']['p50']:.2f}x |")
    lines += ["", "Checkpoints: " + ", ".join(f"`{row['checkpoint']}`" for row in rows)]
    if any(not row["trained_metrics"] for row in rows):
        lines += ["", "A checkpoint without training metrics is probably untrained: its mIoU is near chance and "
                      "its drops say little about a trained network."]
    write_text_atomic(RESULTS / f"{args.name}.md", "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / args.name}.md and .json")


def random_checkpoint(name: str, folder: Path, size: tuple[int, int], classes) -> Path:
    torch.manual_seed(0)
    model = randomize_for_parity(create_model(name, num_classes=classes.num_classes))
    card = model_card(model_name=name, model_kwargs={}, classes=classes, mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225), input_size=list(size), config={})
    return save_checkpoint(folder / f"{name}.pt", card, model.state_dict())


def students_parity(args) -> None:
    machine = describe_machine()
    workdir = Path(args.work_dir or tempfile.mkdtemp(prefix="edgeseg-students-"))
    workdir.mkdir(parents=True, exist_ok=True)
    val = open_dataset(args.data, "val")
    images = load_calibration_images(args.data, "val", args.check_images)  # fails early; the count is reported
    size = parse_size(args.size, "--size") if args.size else (360, 480)
    threshold = DEFAULT_MIN_AGREEMENT["fp32"]
    rows = []
    for name in list_models(role="student"):
        trained = Path(args.checkpoint_dir) / f"{name}.pt" if args.checkpoint_dir else None
        checkpoint = trained if trained and trained.is_file() else random_checkpoint(name, workdir, size, val.classes)
        for dynamic in ("none", "all"):
            for fuse in ("none", "all"):
                options = ExportOptions(size=size, dynamic=dynamic, fuse=fuse, check=True, check_data=args.data,
                                        check_images=args.check_images, min_agreement=threshold)
                path = workdir / f"{name}_{'static' if dynamic == 'none' else dynamic}_{fuse}.onnx"
                started = time.perf_counter()
                row = {"model": name, "checkpoint": "trained" if checkpoint == trained else "random",
                       "dynamic": dynamic, "fuse": fuse}
                try:
                    results = export_checkpoint(checkpoint, "onnx", options, out=path, log=quiet).parity
                    row["sizes"] = [{"size": list(r.size), "agreement": r.agreement,
                                     "max_abs_error": r.max_abs_error} for r in results]
                    row["passed"] = all(r.passed for r in results)
                except Exception as err:  # record and continue: one broken variant must not hide the others
                    row["error"] = f"{type(err).__name__}: {err}"
                    row["passed"] = False
                row["seconds"] = time.perf_counter() - started
                rows.append(row)
                print(json.dumps(row), flush=True)

    result = {"machine": machine, "data": args.data, "images": len(images), "size": list(size),
              "min_agreement": threshold, "rows": rows}
    write_json_atomic(RESULTS / f"{args.name}.json", result)
    lines = header("Export parity of every student (FP32 ONNX vs PyTorch)",
                   f"Each student exported at {size[0]}x{size[1]} (static, and dynamic batch+height+width; "
                   f"unfused, and with normalisation + argmax fused) and checked with `--check` logic on "
                   f"{len(images)} val images of {args.data} through ONNX Runtime (CPU); dynamic graphs also at "
                   f"a second size. Pass = argmax agreement >= {100 * threshold:.1f}% at every size. Untrained "
                   "students get decisive random weights (`randomize_for_parity`: He-normal convolutions, random "
                   "norm statistics), since fresh zoo networks output near-constant logits whose argmax is noise.",
                   machine)
    lines += ["| student | weights | dynamic | fuse | size: agreement % (max abs logit error) | pass |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        detail = row.get("error") or "; ".join(
            f"{s['size'][0]}x{s['size'][1]}: {100 * s['agreement']:.3f}"
            + ("" if s["max_abs_error"] is None else f" ({s['max_abs_error']:.1e})") for s in row["sizes"])
        lines.append(f"| {row['model']} | {row['checkpoint']} | {row['dynamic']} | {row['fuse']} | {detail} | "
                     f"{'yes' if row['passed'] else 'NO'} |")
    passed = sum(row["passed"] for row in rows)
    lines += ["", f"{passed} of {len(rows)} variants pass."]
    write_text_atomic(RESULTS / f"{args.name}.md", "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / args.name}.md and .json ({passed}/{len(rows)} pass)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="checkpoints for the precision study")
    parser.add_argument("--all-students", action="store_true", help="run the zoo parity loop instead")
    parser.add_argument("--checkpoint-dir", default=None, help="trained <name>.pt files for --all-students")
    parser.add_argument("--data", default="camvid:${EDGESEG_DATA}/camvid", help="dataset NAME[:ROOT]")
    parser.add_argument("--size", default=None, help="HxW (default: each checkpoint's; 360x480 for random init)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N val images")
    parser.add_argument("--agreement-images", type=int, default=20, help="val images for FP16/INT8 agreement")
    parser.add_argument("--calib-images", type=int, default=64, help="INT8 calibration images (train split)")
    parser.add_argument("--calib-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    parser.add_argument("--check-images", type=int, default=8, help="val images per parity check")
    parser.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                        help="also export each INT8 scheme within this mIoU budget (e.g. 0.5)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--work-dir", default=None, help="where exported files go (default: a temp folder)")
    parser.add_argument("--name", default=None, help="results file stem (export_precision / export_students)")
    args = parser.parse_args()
    if args.all_students == bool(args.checkpoints):
        parser.error("give checkpoints for the precision study, or --all-students (not both)")
    args.name = args.name or ("export_students" if args.all_students else "export_precision")
    students_parity(args) if args.all_students else precision_study(args)


if __name__ == "__main__":
    main()
