"""Time and peak memory of every distillation loss at the size of a real Cityscapes distillation step.

The taps are random tensors shaped as a DeepLabV3-ResNet101 teacher and a DeepLabV3-ResNet18 student give them on a
512x1024 crop at output stride 8, batch 2 (docs/methods.md): logits 19 x 64 x 128, the feature after ASPP
256 (teacher) / 128 (student) x 64 x 128, backbone stages 256/512/1024/2048 vs 64/128/256/512 channels (stage 1 at
stride 4, 128 x 256; the dilated stages 2-4 at 64 x 128). Each row is one forward + backward of the loss alone.

Memory, by device:

- CPU: the growth of the process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) during the
  first forward + backward, measured in a fresh child process per row so that earlier rows cannot hide a peak.
  It counts everything the process touched (allocator slack included), so read it as an upper bound.
- CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory held before the step (tensors only, no cache).

The "unbudgeted" rows run the pair-wise losses on all 8192 positions (``max_nodes`` = 8192, no node pooling) to show
what the node budget saves. Results go to ``benchmarks/results/loss_memory.{md,json}``.

Usage: ``python benchmarks/loss_memory.py [--device cpu cuda] [--repeats 3] [--no-unbudgeted]``
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "loss_memory"

BATCH = 2
CROP = (512, 1024)
MAP = (64, 128)          # output stride 8
STAGE1 = (128, 256)      # output stride 4
CLASSES = 19
LATENT = 128
LOGITS = ([CLASSES], [CLASSES], [MAP], [MAP])
FEATURE = ([128], [256], [MAP], [MAP])
STAGES = ([64, 128, 256, 512], [256, 512, 1024, 2048], [STAGE1, MAP, MAP, MAP], [STAGE1, MAP, MAP, MAP])


@dataclass
class Case:
    label: str
    loss: str
    student_channels: list[int]
    teacher_channels: list[int]
    student_sizes: list[tuple[int, int]]
    teacher_sizes: list[tuple[int, int]]
    params: dict = field(default_factory=dict)


def _case(label: str, loss: str, taps: tuple, **params) -> Case:
    return Case(label, loss, *taps, params=params)


def cases(unbudgeted: bool) -> list[Case]:
    stages_and_logits = tuple(a + b for a, b in zip(STAGES, LOGITS))
    rows = [
        _case("kd (logits)", "kd", LOGITS),
        _case("cwd (logits)", "cwd", LOGITS),
        _case("cwd (feature, 1x1 adapter)", "cwd", FEATURE),
        _case("ace (logits + labels)", "ace", LOGITS),
        _case("psd (4 backbone stages)", "psd", STAGES),
        _case("csd (logits)", "csd", LOGITS),
        _case("dsd (4 stages + logits)", "dsd", stages_and_logits),
        _case("skd_pairwise (feature)", "skd_pairwise", FEATURE),
        _case("affinity (feature)", "affinity", FEATURE, latent_channels=LATENT),
        _case("ka (feature)", "ka", FEATURE, latent_channels=LATENT),
        _case("csc (feature)", "csc", FEATURE),
    ]
    if unbudgeted:
        full = MAP[0] * MAP[1]
        rows += [
            _case("skd_pairwise, unbudgeted", "skd_pairwise", FEATURE, pool_kernel=1, max_nodes=full),
            _case("affinity, unbudgeted", "affinity", FEATURE, latent_channels=LATENT, max_nodes=full),
            _case("csc, unbudgeted", "csc", FEATURE, max_nodes=full),
        ]
    return rows


def _rss_kib() -> int:
    """Current resident set size in KiB (Linux /proc; elsewhere fall back to the peak, which is then an overestimate
    of the baseline and makes the reported delta a lower bound)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(case: Case, device: str, repeats: int) -> dict:
    """Build the loss and its taps on ``device``, then time ``repeats`` forward + backward steps after a first,
    memory-measured one."""
    import torch

    from edgeseg.training.distill.autoencoder import FeatureAutoencoder
    from edgeseg.training.distill.losses import build_loss

    torch.manual_seed(0)
    loss = build_loss(case.loss, student_channels=case.student_channels, teacher_channels=case.teacher_channels,
                      **case.params).to(device)
    if "latent_channels" in case.params:
        encoder = FeatureAutoencoder(case.teacher_channels[0], case.params["latent_channels"]).encoder
        loss.set_encoder(encoder.to(device))
    student = [torch.randn(BATCH, c, *size, device=device, requires_grad=True)
               for c, size in zip(case.student_channels, case.student_sizes)]
    teacher = [torch.randn(BATCH, c, *size, device=device)
               for c, size in zip(case.teacher_channels, case.teacher_sizes)]
    labels = torch.randint(0, CLASSES, (BATCH, *CROP), device=device)

    def step() -> None:
        for tap in student:
            tap.grad = None
        loss.zero_grad(set_to_none=True)
        loss(student, teacher, labels).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    else:
        before_kib = _rss_kib()
        step()
        peak_mib = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "label": case.label, "loss": case.loss, "params": case.params, "device": device,
        "time_ms": 1000 * statistics.median(times), "peak_mib": peak_mib,
        "nodes": getattr(loss, "last_node_count", None),
        "adapter_params": sum(p.numel() for p in loss.parameters()),
    }


def _child(case: Case, device: str, repeats: int, queue) -> None:
    try:
        queue.put(measure(case, device, repeats))
    except Exception as err:  # reported as the row's error, the other rows still run
        queue.put({"label": case.label, "loss": case.loss, "device": device, "error": f"{type(err).__name__}: {err}"})


def run_isolated(case: Case, device: str, repeats: int) -> dict:
    """Measure one row in a fresh process, so that its peak is its own (ru_maxrss never decreases)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(case, device, repeats, queue))
    process.start()
    process.join()
    if queue.empty():
        return {"label": case.label, "loss": case.loss, "device": device,
                "error": f"child process died (exit code {process.exitcode}; out of memory?)"}
    return queue.get()


def machine_info(devices: list[str], load_at_start: tuple[float, float, float]) -> dict:
    """Where the numbers come from; the load averages matter on a shared machine, where timings follow the load."""
    import torch

    from edgeseg.runtime.sysinfo import cpu_model

    info = {
        "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min_start_end": [round(load_at_start[0], 2), round(os.getloadavg()[0], 2)],
    }
    if "cuda" in devices:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def to_markdown(machine: dict, rows: list[dict], repeats: int) -> str:
    lines = [
        "# Distillation loss cost",
        "",
        f"Random taps of a DeepLabV3-R101 teacher / R18 student at a {CROP[0]}x{CROP[1]} crop, output stride 8, "
        f"batch {BATCH}; one forward + backward of the loss alone, time = median of {repeats}. Generated by "
        "`benchmarks/loss_memory.py`.",
        "",
        "Peak memory: CPU = growth of the peak resident set (`ru_maxrss`) during the first step, measured in a fresh "
        "process per row (an upper bound: allocator slack included); CUDA = `torch.cuda.max_memory_allocated()` "
        "growth during the first step.",
        "",
        "Machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()),
        "",
        "| loss | device | time (ms) | peak memory (MiB) | nodes per image | adapter params |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | {row['device']} | failed: {row['error']} | | | |")
            continue
        nodes = "" if row["nodes"] is None else str(row["nodes"])
        lines.append(f"| {row['label']} | {row['device']} | {row['time_ms']:.1f} | {row['peak_mib']:.0f} | {nodes} "
                     f"| {row['adapter_params']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", nargs="+", choices=("cpu", "cuda"), default=None,
                        help="devices to measure (default: cpu, plus cuda when available)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row after the measured one")
    parser.add_argument("--no-unbudgeted", dest="unbudgeted", action="store_false",
                        help="skip the pair-wise rows without a node budget (the slowest, several GiB on CPU)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results path without suffix")
    args = parser.parse_args(argv)

    import torch

    from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda given but torch sees no CUDA device")
    load_at_start = os.getloadavg()
    rows = []
    for device in devices:
        for case in cases(args.unbudgeted):
            row = run_isolated(case, device, args.repeats)
            rows.append(row)
            shown = row.get("error") or f"{row['time_ms']:9.1f} ms  {row['peak_mib']:8.0f} MiB  nodes {row['nodes']}"
            print(f"{device:5} {case.label:32} {shown}", flush=True)
    machine = machine_info(devices, load_at_start)
    write_json_atomic(args.output.with_suffix(".json"), {
        "machine": machine, "batch": BATCH, "crop": list(CROP), "repeats": args.repeats,
        "cases": [asdict(case) for case in cases(args.unbudgeted)], "results": rows,
    })
    markdown = to_markdown(machine, rows, args.repeats)
    write_text_atomic(args.output.with_suffix(".md"), markdown)
    print()
    print(markdown)
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
