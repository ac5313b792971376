"""Reports of benchmarks/zoo.py: the per-size tables, the training table, the CSV and the mIoU-vs-FPS Pareto plot.

Apart from the measuring (zoo.py) so that a change to the tables cannot touch what is measured; both share rows of
the same form (see ``ZooRun`` in zoo.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.runtime.atomic_files import atomic_path, write_json_atomic, write_text_atomic
from edgeseg.runtime.sysinfo import format_machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402

if TYPE_CHECKING:
    from zoo import ZooCheckpoint

PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "cuda", "tensorrt")
DEVICE_LABELS = {"cpu": "ORT CPU", "cuda": "ORT CUDA", "tensorrt": "ORT TensorRT"}


def size_text(size) -> str:
    return f"{size[0]}x{size[1]}"




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


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


SIZE_TABLE_HEADER = ("| model | params (M) | GFLOPs | precision | backend | mIoU % | p50 ms | p99 ms | FPS | e2e FPS | "
                     "% of CPU peak | bound (% of it) | Pareto | note |\n"
                     "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
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
        "of the PyTorch network at the table's size. Roofline (CPU rows): GFLOPs per p50 call as a share of the "
        "dense FP32 peak (an ONNX Runtime 1024^3 MatMul on the same threads, measured just before the row), and "
        "the limit that binds the model: memory when its intensity (GFLOPs over the minimum FP32 traffic of its "
        "convolutions, weights included) times the measured stream bandwidth is below the peak, with the share of "
        "that bound reached.")


def roofline_cells(roofline: dict | None) -> str:
    """The two roofline cells of a CPU row: share of the measured FP32 peak, and the binding limit with the share
    of it reached; n/a for GPU rows and rows measured before the column existed."""
    if not roofline:
        return "n/a | n/a"
    return (f"{100 * roofline['share_of_peak']:.0f}% | {roofline['bound']} "
            f"({100 * roofline['share_of_bound']:.0f}%)")


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
                         f"{row['fps']:.1f} | {row['e2e_fps']:.1f} | {roofline_cells(row.get('roofline'))} | "
                         f"{'yes' if row.get('pareto') else ''} | |")
            continue
        if row["reason"] not in notes:
            notes.append(row["reason"])
        lines.append(f"{start} | | | | | | | | {row['status']} ({notes.index(row['reason']) + 1}) |")
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
