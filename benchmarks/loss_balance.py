"""Loss balance of every method of a protocol at one training step: each weighted term against the cross entropy.

Builds each method's trainer from ``configs/distill/<protocol>/<method>.yaml``, runs one training step on the same
first batch and records what :mod:`edgeseg.training.distill.balance` measures (value and student-gradient norm of
each weighted term, relative to the unweighted cross entropy). Writes ``benchmarks/results/loss_balance_<protocol>``
``.{md,json}``.

    python benchmarks/loss_balance.py --protocol camvid_cpu_r18_warm --set model.weights=null   # untrained student
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from provenance import header_lines, provenance  # noqa: E402

METHODS = ["kd", "cwd", "skd_pairwise", "dsd", "psd", "csd", "ka", "csc", "ace", "csc_ace"]


def measure(protocol: str, method: str, overrides: list[str], out: Path) -> dict:
    from edgeseg.training.config import resolve_config
    from edgeseg.training.trainer import Trainer

    config = resolve_config(REPO / "configs" / "distill" / protocol / f"{method}.yaml", overrides)
    config["data"]["workers"] = 0
    trainer = Trainer(config, out / method)
    images, labels = next(trainer._labeled_batches())
    captured = {}
    original = trainer._check_balance

    def keep(task):
        original(task)
        captured.update(trainer.pending_balance)

    trainer._check_balance = keep
    trainer.train_step(images, labels)
    trainer.distiller.close()
    terms = sorted({key.split("_", 1)[1] for key in captured if key.startswith("bal_")})
    return {"method": method, "task_weight": trainer.distiller.task_weight,
            "terms": {name: {"value_ratio": captured[f"bal_{name}"], "grad_ratio": captured[f"gradbal_{name}"]}
                      for name in terms},
            "autoencoder": trainer.distiller.autoencoder_stats}


def to_markdown(summary: dict) -> str:
    lines = [f"# Loss balance, protocol `{summary['protocol']}`", "",
             *header_lines(summary), "",
             "Each weighted term at the first training step, relative to the unweighted cross entropy (value) and to "
             "the norm of the gradient the cross entropy sends into the student's parameters (gradient). `task` is "
             "the cross entropy times `distill.task_weight`.", "",
             "| method | term | value / CE | gradient / CE's |", "| --- | --- | ---: | ---: |"]
    for row in summary["rows"]:
        for name, figures in row["terms"].items():
            lines.append(f"| {row['method']} | {name} | {figures['value_ratio']:.3g} | {figures['grad_ratio']:.3g} |")
    for row in summary["rows"]:
        for layer, stats in row["autoencoder"].items():
            lines.append(f"\n{row['method']}: autoencoder on teacher layer `{layer}`: relative reconstruction error "
                         f"{stats['relative_error']:.3f}, positions with an all-zero code "
                         f"{100 * stats['zero_codes']:.1f}%")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="camvid_cpu_r18_warm")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic
    rows = [measure(args.protocol, method, args.overrides, REPO / "runs" / "loss_balance") for method in args.methods]
    summary = {"protocol": args.protocol, "rows": rows, **provenance("benchmarks/loss_balance.py")}
    results = args.results or REPO / "benchmarks" / "results" / f"loss_balance_{args.protocol}"
    write_json_atomic(results.with_suffix(".json"), summary)
    write_text_atomic(results.with_suffix(".md"), to_markdown(summary))
    print(to_markdown(summary))
    print(json.dumps({"written": str(results)}))


if __name__ == "__main__":
    main()
