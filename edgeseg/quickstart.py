"""``edgeseg quickstart``: the whole pipeline on the embedded CamVid sample, on a CPU, in minutes.

Stages: the committed BiSeNetV2 teacher -> a plain Fast-SCNN student and a CSC+ACE-distilled one (same data,
iterations and seed) -> fused ONNX exports with a parity check -> mIoU through ONNX Runtime -> latency/FPS -> a
segmented video of the sample's frames -> ``report.md`` with a table, sample overlays and an mIoU-vs-FPS plot. Every
stage keeps its artefacts in the output folder and is skipped on a second run unless ``--force`` (or unless the
settings changed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from edgeseg import __version__
from edgeseg.training.data.class_weights import CAMVID_CLASS_WEIGHTS
from edgeseg.training.distill.recipes import CSC_ACE

ASSETS = Path(__file__).resolve().parent / "assets"
TEACHER_ASSET = ASSETS / "teacher_bisenetv2_camvid.pt"
SAMPLE = ASSETS / "camvid_mini"

# The student protocol, as config overrides: both students share all of it; only `distill` differs.
STUDENT = {
    "model": {"name": "fastscnn", "kwargs": {}},
    "data": {"dataset": "camvid", "crop_size": [128, 160], "scale_range": [0.75, 1.5], "batch_size": 8,
             "workers": 1},
    "optim": {"lr": 0.03, "weight_decay": 1.0e-4, "warmup_iters": 30},
    "train": {"seed": 0, "ckpt_every": 50, "log_every": 10, "class_weights": CAMVID_CLASS_WEIGHTS},
}

STAGES = ("teacher", "plain student", "distilled student", "export", "mIoU", "speed", "video", "report")


def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    from edgeseg.runtime.arguments import count_argument

    parser.description = (
        "Run the whole pipeline on the embedded CamVid sample (CPU: about 6 minutes on 2 idle cores): distil a "
        "Fast-SCNN student from the committed BiSeNetV2 teacher with CSC+ACE next to a plain one, export both and the "
        "teacher to fused ONNX, score them through ONNX Runtime, time them, segment a clip, and write "
        "DIR/report.md. A second run reuses what DIR holds.")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output folder (runs/quickstart)")
    parser.add_argument("--iterations", type=count_argument(1), default=600,
                        help="training iterations per student (600)")
    parser.add_argument("--teacher", type=Path, default=TEACHER_ASSET, help="teacher checkpoint (the committed one)")
    parser.add_argument("--bench-iters", type=count_argument(1), default=50,
                        help="timed calls per model in the speed stage (50)")
    parser.add_argument("--force", action="store_true", help="redo every stage even if its artefacts exist")


def _stage(index: int, name: str, detail: str = "") -> float:
    print(f"\n[{index}/{len(STAGES)}] {name}{': ' + detail if detail else ''}", flush=True)
    return time.perf_counter()


def _done(started: float, what: str) -> None:
    print(f"    {what} ({time.perf_counter() - started:.0f} s)", flush=True)


def train_student(out: Path, iterations: int, teacher: Path | None, force: bool) -> dict:
    from edgeseg.training.config import merge, resolve_config
    from edgeseg.training.trainer import Trainer

    if force and out.exists():
        shutil.rmtree(out)
    if (out / "metrics.json").is_file():
        print(f"    reusing {out}")
        return json.loads((out / "metrics.json").read_text())
    config = merge(resolve_config(), STUDENT)
    config["name"] = out.name
    config["train"].update(iterations=iterations, val_every=iterations)
    if teacher is not None:
        # CSC + ACE added to the weighted cross entropy, as in configs/distill/camvid_cpu_realtime/csc_ace.yaml: of
        # the papers' methods the one that gained most from scratch (benchmarks/results/distill_camvid_cpu_r18.md),
        # and it needs no extra training stage (Knowledge Adaptation first trains an autoencoder).
        config["distill"] = {"teacher": str(teacher), "task_weight": 1.0, "losses": CSC_ACE}
    resume = out if (out / "last.pt").is_file() else None
    return Trainer(config, out, resume_from=resume).fit()


def _model_rows(out: Path, teacher: Path) -> dict[str, Path]:
    return {"teacher (BiSeNetV2)": teacher, "plain student (Fast-SCNN)": out / "plain" / "last.pt",
            "CSC+ACE student (Fast-SCNN)": out / "csc_ace" / "last.pt"}


def export_models(out: Path, checkpoints: dict[str, Path], force: bool) -> dict[str, Path]:
    from edgeseg.export.api import ExportOptions, export_checkpoint

    options = ExportOptions(fuse="all", check=True, check_data="camvid", check_images=4)
    exported = {}
    for role, checkpoint in checkpoints.items():
        target = out / "onnx" / f"{role.split()[0].lower().replace('+', '_')}.onnx"
        if force or not target.is_file():
            result = export_checkpoint(checkpoint, "onnx", options, out=target, log=lambda line: None)
            if not result.passed:
                raise RuntimeError(f"the export of {checkpoint} fails its parity check: "
                                   + "; ".join(r.describe() for r in result.parity))
            print(f"    {role}: {target} (parity check passed)")
        exported[role] = target
    return exported


def score_models(out: Path, exported: dict[str, Path], force: bool) -> dict[str, dict]:
    from edgeseg.runtime.datasets import open_dataset
    from edgeseg.runtime.evaluate import evaluate
    from edgeseg.runtime.atomic_files import write_json_atomic
    from edgeseg.runtime.segmenter import Segmenter

    path = out / "miou.json"
    if path.is_file() and not force:
        return json.loads(path.read_text())
    results = {}
    dataset = open_dataset("camvid", "val")
    for role, onnx_path in exported.items():
        with Segmenter.load(onnx_path, device="cpu") as segmenter:
            results[role] = evaluate(segmenter, dataset)
        print(f"    {role}: mIoU {100 * results[role]['miou']:.1f} on {len(dataset)} val images")
    write_json_atomic(path, results)
    return results


def time_models(out: Path, exported: dict[str, Path], iters: int, force: bool) -> dict[str, dict]:
    from edgeseg.runtime.bench import benchmark
    from edgeseg.runtime.atomic_files import write_json_atomic
    from edgeseg.runtime.segmenter import Segmenter

    path = out / "speed.json"
    if path.is_file() and not force:
        return json.loads(path.read_text())
    results = {}
    for role, onnx_path in exported.items():
        with Segmenter.load(onnx_path, device="cpu") as segmenter:
            results[role] = benchmark(segmenter, warmup=5, iters=iters, progress=False)
        print(f"    {role}: {results[role]['fps']:.1f} FPS model-only, {results[role]['e2e_fps']:.1f} FPS end-to-end")
    write_json_atomic(path, results)
    return results


def segment_clip(out: Path, model: Path, force: bool) -> dict:
    from edgeseg.runtime.atomic_files import write_json_atomic
    from edgeseg.runtime.video import segment_video
    from edgeseg.runtime.video.pipeline import INCOMPLETE_ENDINGS

    target = out / "video.mp4"
    summary_path = out / "video.json"
    if target.is_file() and summary_path.is_file() and not force:
        return json.loads(summary_path.read_text())
    frames = SAMPLE / "images" / "val"  # 26 consecutive-ish frames of CamVid's 0016E5 sequence
    summary = segment_video(model, str(frames), str(target), legend=True)
    if summary["ended_by"] in INCOMPLETE_ENDINGS:
        raise RuntimeError(f"video of {frames}: {INCOMPLETE_ENDINGS[summary['ended_by']]}")
    write_json_atomic(summary_path, summary)
    print(f"    {summary['frames']} frames -> {target} at {summary['fps']:.1f} FPS")
    return summary


def model_costs(checkpoints: dict[str, Path]) -> dict[str, dict]:
    from edgeseg.training.checkpoint import build_model_from_card, load_checkpoint
    from edgeseg.training.models.profile import count_flops, count_params

    costs = {}
    for role, path in checkpoints.items():
        card = load_checkpoint(path)
        model = build_model_from_card(card).eval()
        size = tuple(card["input_size"])
        costs[role] = {"params_m": count_params(model) / 1e6, "gflops": count_flops(model, size), "size": size}
    return costs


def overlay_grid(out: Path, exported: dict[str, Path], count: int = 3) -> Path:
    """Image, ground truth and each model's prediction, side by side, for a few validation images."""
    import cv2
    import numpy as np

    from edgeseg.runtime.datasets import open_dataset
    from edgeseg.runtime.atomic_files import atomic_path
    from edgeseg.runtime.preprocess import colorize, overlay
    from edgeseg.runtime.segmenter import Segmenter

    dataset = open_dataset("camvid", "val")
    picks = np.linspace(0, len(dataset) - 1, count).astype(int)
    segmenters = {role: Segmenter.load(path, device="cpu") for role, path in exported.items()}
    try:
        palette = next(iter(segmenters.values())).meta.palette
        rows = []
        for index in picks:
            image, label = dataset[int(index)]
            tiles = [image, colorize(label, palette)]
            tiles += [overlay(image, seg.segment(image), palette, alpha=0.6) for seg in segmenters.values()]
            rows.append(np.concatenate(tiles, axis=1))
    finally:
        for seg in segmenters.values():
            seg.close()
    grid = np.concatenate(rows, axis=0)
    header = np.full((28, grid.shape[1], 3), 255, np.uint8)
    tile_width = grid.shape[1] // (2 + len(exported))
    for i, title in enumerate(["image", "ground truth", *[r.split(" (")[0] for r in exported]]):
        cv2.putText(header, title, (i * tile_width + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
    path = out / "overlays.png"
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.concatenate([header, grid]), cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")
    return path


def miou_fps_plot(out: Path, rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeseg.runtime.atomic_files import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row in rows:
        ax.scatter(row["fps"], 100 * row["miou"], s=40 + 25 * row["params_m"], alpha=0.8)
        ax.annotate(row["role"], (row["fps"], 100 * row["miou"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    ax.set_xlabel("FPS, model only (ONNX Runtime, CPU)")
    ax.set_ylabel("mIoU on the CamVid sample's val split (%)")
    ax.set_title("Accuracy vs speed (marker area ~ parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "miou_vs_fps.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def write_report(out: Path, rows: list[dict], video: dict, machine: str, iterations: int, seconds: float) -> Path:
    from edgeseg.runtime.atomic_files import write_text_atomic

    plain = next(r for r in rows if r["role"].startswith("plain"))
    distilled = next(r for r in rows if r["role"].startswith("CSC+ACE"))
    lines = [
        "# edgeseg quickstart report", "",
        f"edgeseg {__version__}; machine: {machine}; total time {seconds / 60:.1f} min.", "",
        "Data: the embedded CamVid sample (`edgeseg/assets/camvid_mini`, 240x180, 123 train / 26 val images, "
        "CC BY-NC 4.0). The teacher was trained on full CamVid train at the same resolution "
        "(`configs/camvid/teacher_bisenetv2_cpu.yaml`). Both students: Fast-SCNN, "
        f"{iterations} iterations, same data, schedule and seed; the distilled one adds CSC + ACE (channel and "
        "spatial correlation, adaptive cross entropy).", "",
        "mIoU is measured through the exported, fused ONNX models on ONNX Runtime (CPU); FPS is model-only at the "
        "network size, e2e FPS includes resizing a 540x960 frame, pre- and post-processing.", "",
        "| model | params (M) | GFLOPs | input | mIoU (%) | FPS | e2e FPS |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row['role']} | {row['params_m']:.2f} | {row['gflops']:.2f} | {row['size'][0]}x"
                     f"{row['size'][1]} | {100 * row['miou']:.1f} | {row['fps']:.1f} | {row['e2e_fps']:.1f} |")
    gain = 100 * (distilled["miou"] - plain["miou"])
    lines += ["", f"CSC+ACE student vs plain student: {gain:+.1f} mIoU points, one seed each: a hint, not a "
                  "measurement (two seeds of the plain student on full CamVid differ by 3 points; the seed-averaged "
                  "comparison of every method is benchmarks/results/distill_camvid.md).", "",
              "![sample overlays](overlays.png)", "", "![mIoU vs FPS](miou_vs_fps.png)", "",
              f"Video: `video.mp4`, {video['frames']} frames of the sample's val sequence segmented by the CSC+ACE "
              f"student at {video['fps']:.1f} FPS end-to-end.", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))


def _settings(args: argparse.Namespace) -> dict:
    from edgeseg.runtime.atomic_files import file_sha256

    return {"iterations": args.iterations, "bench_iters": args.bench_iters,
            "teacher_sha256": file_sha256(args.teacher)}


def _settings_changed(out: Path, settings: dict) -> bool:
    """True when the artefacts in ``out`` may come from other settings and must not be reused under these.

    ``settings.json`` names the settings of the last finished run (or, before any run has finished, of the first
    one started), so an interrupted run with new settings is redone in full the next time too.
    """
    from edgeseg.runtime.atomic_files import write_json_atomic

    path = out / "settings.json"
    if not path.is_file():
        write_json_atomic(path, settings)
        return False
    previous = json.loads(path.read_text())
    if previous != settings:
        print(f"    {out} holds artefacts made with other settings ({previous}): redoing every stage")
        return True
    return False


def run_quickstart(args: argparse.Namespace) -> int:
    from edgeseg.runtime.errors import ConfigError
    from edgeseg.runtime.atomic_files import write_json_atomic
    from edgeseg.runtime.sysinfo import describe_machine, format_machine

    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    t = _stage(1, STAGES[0], str(args.teacher))
    if not args.teacher.is_file():
        raise ConfigError(f"teacher checkpoint {args.teacher} not found; train one with "
                          f"'edgeseg train configs/camvid/teacher_bisenetv2_cpu.yaml' and pass --teacher")
    settings = _settings(args)
    force = _settings_changed(out, settings) or args.force
    _done(t, "frozen during distillation")

    t = _stage(2, STAGES[1], f"Fast-SCNN, {args.iterations} iterations")
    train_student(out / "plain", args.iterations, None, force)
    _done(t, "trained")
    t = _stage(3, STAGES[2], f"Fast-SCNN + CSC+ACE from the teacher, {args.iterations} iterations")
    train_student(out / "csc_ace", args.iterations, args.teacher, force)
    _done(t, "trained")

    checkpoints = _model_rows(out, args.teacher)
    t = _stage(4, STAGES[3], "fused ONNX (uint8 in, class ids out) with a parity check")
    exported = export_models(out, checkpoints, force)
    _done(t, "exported")
    t = _stage(5, STAGES[4], "ONNX Runtime on the sample's val split")
    scores = score_models(out, exported, force)
    _done(t, "scored")
    t = _stage(6, STAGES[5], "model-only and end-to-end latency, ONNX Runtime CPU")
    speeds = time_models(out, exported, args.bench_iters, force)
    _done(t, "timed")
    t = _stage(7, STAGES[6], "the CSC+ACE student over the sample's val frames")
    video = segment_clip(out, exported["CSC+ACE student (Fast-SCNN)"], force)
    _done(t, "segmented")

    t = _stage(8, STAGES[7])
    costs = model_costs(checkpoints)
    rows = [{"role": role, **costs[role], "miou": scores[role]["miou"], "fps": speeds[role]["fps"],
             "e2e_fps": speeds[role]["e2e_fps"]} for role in checkpoints]
    overlay_grid(out, exported)
    miou_fps_plot(out, rows)
    report = write_report(out, rows, video, format_machine(describe_machine()).splitlines()[0], args.iterations,
                          time.perf_counter() - started)
    write_json_atomic(out / "settings.json", settings)
    _done(t, f"wrote {report}, overlays.png, miou_vs_fps.png")
    print(f"\nquickstart finished in {(time.perf_counter() - started) / 60:.1f} min: see {report}")
    return 0
