"""``edgeseg train``: argument parsing only; torch is imported when the command runs, not when --help prints."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a segmentation model from a YAML config. With a 'distill' section the run distils a student from "
        "a frozen teacher checkpoint. The run folder receives config.yaml (resolved), metrics.csv, metrics.json, "
        "last.pt (resumable) and best.pt.")
    parser.epilog = ("examples:\n"
                     "  edgeseg train configs/smoke.yaml --out runs/smoke\n"
                     "  edgeseg train configs/camvid/deeplabv3_resnet18_cpu.yaml --set train.iterations=2000\n"
                     "  edgeseg train --resume runs/smoke            # continue a killed run\n"
                     "  torchrun --nproc_per_node 4 -m edgeseg.cli train CONFIG   # multi-GPU (DDP)")
    parser.add_argument("config", nargs="?", help="YAML config (see configs/); optional with --resume")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.02 (repeatable; key must exist)")
    parser.add_argument("--resume", metavar="RUN", help="resume from a run folder or its last.pt")


def run_train(args: argparse.Namespace) -> int:
    from edgeseg.runtime.errors import ConfigError

    from .config import resolve_config
    from .trainer import Trainer, load_run_config

    if args.config is None and args.resume is None:
        raise ConfigError("give a CONFIG file, or --resume RUN to continue a run")
    if args.resume:
        resume = Path(args.resume)
        base = load_run_config(resume)
        config = resolve_config(args.config, args.overrides, base=base) if args.config or args.overrides else base
        out = args.out or (resume if resume.is_dir() else resume.parent)
    else:
        config = resolve_config(args.config, args.overrides)
        out = args.out or Path("runs") / Path(args.config).stem
        if (Path(out) / "last.pt").exists():
            raise ConfigError(f"{out} already holds a run (last.pt); use --resume {out} to continue it or choose "
                              f"another --out")
    trainer = Trainer(config, out, resume_from=args.resume)
    result = trainer.fit()
    final = result["final"]
    if final and trainer.rank == 0:  # one summary line, not one per DDP process
        print(f"done: {result['iterations']} iterations, val mIoU {100 * final['miou']:.2f} "
              f"(best {100 * result['best_miou']:.2f}); checkpoint {Path(out) / 'last.pt'}")
    return 0
