"""The markdown report of benchmarks/distill.py, from the summary it writes as JSON (so a report can be rewritten
from a committed JSON without the runs)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import header_lines  # noqa: E402

PAPER_METHODS = {"dsd": "DSD (Feng et al., TIP 2021)", "psd": "DSD's PSD alone", "csd": "DSD's CSD alone",
                 "ka": "Knowledge Adaptation (He et al., CVPR 2019)", "csc": "CSC alone (Park & Heo)",
                 "ace": "ACE alone (Park & Heo)", "csc_ace": "CSC + ACE (Park & Heo, Sensors 2020)",
                 "kd_unlabeled": "KD + unlabeled target frames (after Kothandaraman et al. 2020)"}


def _pct(value, signed=False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _paired_header(intro: str, *leading: tuple[str, str]) -> list[str]:
    """The intro and header of a paired table: method, the ``leading`` (name, alignment) columns, then the
    columns :func:`_paired_cells` fills."""
    columns = [("method", "---"), *leading, ("paired gain [95% CI]", "---"), ("p", "---:"),
               ("std of differences", "---:"), ("MDE", "---:")]
    return ["", intro, "", "| " + " | ".join(name for name, _ in columns) + " |",
            "| " + " | ".join(align for _, align in columns) + " |"]


def _paired_cells(gain, interval, p_value, std, mde) -> str:
    """The cells every paired table ends with: gain [95% CI] | p | std of differences | MDE."""
    return (f"{_pct(gain, signed=True)} [{_pct(interval[0], signed=True)}, {_pct(interval[1], signed=True)}] | "
            f"{p_value:.3f} | {_pct(std)} | {_pct(mde)} |")


def _model_name(name: str, kwargs: dict | None) -> str:
    return f"{name} {kwargs}" if kwargs else name


def _costs(model: dict) -> str:
    if "gflops" not in model:  # results written before costs were recorded
        return ""
    height, width = model["size"]
    return f"; {model['params_m']:.2f} M parameters, {model['gflops']:.2f} GFLOPs at {height}x{width}"


def to_markdown(summary: dict) -> str:
    teacher = summary["teacher"]
    lines = [
        f"# Distillation on CamVid val, protocol `{summary['protocol']}`", "",
        *header_lines(summary),
        f"- teacher: {_model_name(teacher['model'], teacher.get('kwargs'))} ({teacher['checkpoint']}, trained with "
        f"config `{teacher.get('trained_with')}`), val mIoU {_pct(teacher['miou'])}{_costs(teacher)}",
        f"- student: {_model_name(summary['student']['model'], summary['student']['kwargs'])}"
        f"{_costs(summary['student'])}",
        f"- seeds: {summary['seeds']}; configs: `configs/distill/{summary['protocol']}/<method>.yaml`",
        *([f"- warm-start base (`base.yaml`, every arm starts from it): val mIoU {_pct(summary['base_miou'])}"]
          if summary.get("base_miou") is not None else []),
        f"- packages: {summary.get('packages', 'not recorded')}", "",
        "mIoU in percent, mean ± std over seeds, each run's final checkpoint (no best-of selection), scored on val; "
        "gain = method mean - plain mean with Welch's 95% interval and two-sided p-value; MDE = the smallest gain "
        "this design detects with 80% power at alpha 0.05, from the pooled spread of all arms; an interval that "
        "contains 0 is no evidence either way. Equal time = the method's mean minus the plain student given as many "
        "iterations as the method's step-time ratio buys (interpolated between the plain arm and "
        f"`{summary['equal_time']['arm']}`; * = extrapolated). Step time relative to the plain student, measured in "
        f"one interleaved timing pass; peak memory = {summary.get('memory_kind') or 'n/a'} of a training process.", "",
        "| method | paper | mIoU | ± | n | gain [95% CI] | p | MDE | gain at equal time | step time | peak MB |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary["rows"]:
        ratio = f"{row['step_time_ratio']:.2f}x" if row["step_time_ratio"] is not None else "n/a"
        memory = f"{row['peak_mem_mb']:.0f}" if row.get("peak_mem_mb") is not None else "n/a"
        if row["method"] == "plain":
            gain = p_value = mde = equal = "—"
        else:
            interval = row.get("gain_ci95")
            gain = _pct(row.get("gain"), signed=True) + (
                f" [{_pct(interval[0], signed=True)}, {_pct(interval[1], signed=True)}]" if interval else "")
            p_value = f"{row['p_value']:.3f}" if row.get("p_value") is not None else "n/a"
            mde = _pct(row.get("mde"))
            equal = _pct(row.get("gain_equal_time"), signed=True) + ("*" if row.get("equal_time_extrapolated")
                                                                    else "")
        lines.append(f"| {row['method']} | {PAPER_METHODS.get(row['method'], 'baseline')} | "
                     f"{_pct(row['miou_mean'])} | {_pct(row.get('miou_std'))} | {row['seeds']} | {gain} | "
                     f"{p_value} | {mde} | {equal} | {ratio} | {memory} |")
    paired_rows = [row for row in summary["rows"] if row.get("paired_n", 0) >= 2]
    if paired_rows:
        lines += _paired_header("Paired by seed (a seed fixes the data order and augmentation in every arm, so "
                                "what the seed does to both cancels in the difference): mean of the per-seed "
                                "differences with its t interval; MDE from the spread of the differences.",
                                ("pairs", "---:"))
        for row in paired_rows:
            lines.append(f"| {row['method']} | {row['paired_n']} | "
                         + _paired_cells(row["gain_paired"], row["gain_paired_ci95"], row["p_value_paired"],
                                         row["paired_std"], row["mde_paired"]))
    over_rows = [row for row in summary["rows"] if row.get("over", {}).get("n", 0) >= 2]
    if over_rows:
        lines += _paired_header("What an arm adds to the arm it extends, paired by seed (same data order and "
                                "augmentation on the labeled stream in both):", ("over", "---"), ("pairs", "---:"))
        for row in over_rows:
            over = row["over"]
            lines.append(f"| {row['method']} | {over['arm']} | {over['n']} | "
                         + _paired_cells(over["gain"], over["ci95"], over["p_value"], over["std"], over["mde"]))
    pooled_rows = [row for row in summary["rows"] if row.get("pooled", {}).get("n", 0) >= 2]
    if pooled_rows:
        ledger_bases = sorted({b for row in pooled_rows for b in row["pooled"].get("ledger_bases", [])})
        earlier = next((row["pooled"] for row in pooled_rows if row["pooled"].get("with")), None)
        sources = ["this sweep's base"]
        if ledger_bases:
            sources.append("the ledger's runs from base" + ("s " if len(ledger_bases) > 1 else " ")
                           + ", ".join(ledger_bases))
        if earlier:
            sources.append(f"`{earlier['with']}` (base {_pct(earlier['earlier_base_miou'])})")
        lines += _paired_header(f"Paired by seed over every warm-start base ({'; '.join(sources)}; base val mIoU "
                                "in percent): each pair is one base and one seed, both arms from that base; only "
                                "runs whose config is the same as now.", ("bases", "---:"), ("pairs", "---:"))
        for row in pooled_rows:
            pooled = row["pooled"]
            lines.append(f"| {row['method']} | {pooled.get('bases', 2)} | {pooled['n']} | "
                         + _paired_cells(pooled["gain"], pooled["ci95"], pooled["p_value"], pooled["std"],
                                         pooled["mde"]))
    spread = summary.get("pooled_std")
    if spread is not None:
        lines += ["", f"Pooled seed-to-seed std: {_pct(spread)} mIoU; runs per arm for an MDE of 1.0 mIoU at that "
                      f"spread: {summary.get('runs_per_arm_for_1_point')}."]
    equal_time = summary.get("equal_time") or {}
    if equal_time.get("per_seed_miou"):
        lines.append(f"`{equal_time['arm']}` ({equal_time['iterations_factor']:.2f}x the iterations): "
                     + ", ".join(_pct(v) for v in equal_time["per_seed_miou"]) + ".")
    seeds = summary.get("seeds_by_method", {})
    lines += ["", "Per-seed mIoU: " + "; ".join(
        f"{m}: {', '.join(_pct(s) for s in v) or 'none'}" + (f" (seeds {seeds[m]})" if seeds.get(m) else "")
        for m, v in summary["per_seed_miou"].items()), ""]
    classes = next((row["per_class_iou"] for row in summary["rows"] if row.get("per_class_iou")), None)
    if classes:
        lines += ["Per-class IoU (mean over seeds):", "",
                  "| method | " + " | ".join(classes) + " |", "| --- |" + " ---: |" * len(classes)]
        for row in summary["rows"]:
            if row.get("per_class_iou"):
                lines.append(f"| {row['method']} | "
                             + " | ".join(_pct(row["per_class_iou"].get(name)) for name in classes) + " |")
        lines.append("")
    return "\n".join(lines)
