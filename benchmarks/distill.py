"""Distillation sweep: the plain student and the student under each method, same data, iterations and seeds.

(About 490 lines: the sweep's training, ledger, timing pass and summary share the config helpers at its top; the
statistics are in stats.py and the markdown in distill_report.py.)

Trains every (method, seed) pair of a protocol in ``configs/distill/<protocol>/``, scores each final checkpoint on
the validation split, measures the step time of every method against the plain student in one timing pass (the
methods interleaved with plain runs, so machine load affects both alike), and writes
``benchmarks/results/distill_<protocol>.{md,json}`` (or ``--results``) with, per method, mean, std, n, the gain
over plain with Welch's 95% interval and p-value, the minimum detectable effect, and the gain at equal wall-clock.

Warm-start protocols (a ``base.yaml`` beside the method configs) first train the shared starting checkpoint once;
``--equal-time`` adds the ``plain_long`` arm (the plain student with more iterations) for the equal-time gain.

Resumable: a finished run (``metrics.json`` present) is skipped, an interrupted one resumes from its ``last.pt``.
Every finished run's final scores also go to a committed ledger (``<results>_runs.json``), keyed by method and seed
and stamped with a hash of the run's resolved config and the warm-start base's score: a later sitting, on a fresh
machine without ``runs/``, reuses an entry whose stamp still matches instead of training the run again (a run is
deterministic given its config and seed). Spread a long sweep over several sittings by running the same command
again. Parts of the sweep can run side by side, one per core, with ``--train-only``; then the full command with
``--report-only --retime`` on the idle machine times the methods and writes the tables:

    python benchmarks/distill.py --protocol camvid_cpu_r18_warm --teacher edgeseg/assets/teacher_bisenetv2_camvid.pt \
        --methods plain dsd ka csc_ace --seeds 0 2 4 --equal-time --train-only --set train.threads=1 \
        --results benchmarks/results/distill_camvid
    python benchmarks/distill.py --protocol camvid_cpu_r18_warm --teacher edgeseg/assets/teacher_bisenetv2_camvid.pt \
        --methods plain dsd ka csc_ace --seeds 0 1 2 3 4 5 --equal-time --report-only --retime \
        --set train.threads=1 --results benchmarks/results/distill_camvid
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from distill_report import to_markdown  # noqa: E402
from provenance import provenance  # noqa: E402
from stats import minimum_detectable_effect, paired, pooled_std, runs_for_effect, welch  # noqa: E402

ALL_METHODS = ["plain", "kd", "cwd", "skd_pairwise", "dsd", "psd", "csd", "ka", "csc", "ace", "csc_ace"]
UNLABELED_ARMS = ["kd_unlabeled"]  # camvid_cpu_r18_unlabeled: KD with unlabeled target frames in every batch
# Arms that add one thing to another arm: their table also gives the paired gain over that arm (what the unlabeled
# target frames add to distillation on the source alone).
ADDS_TO = {"kd_unlabeled": "kd"}
# The plain student given more iterations (configs' plain_long.yaml, warm-start protocol): the reference for the
# gain at equal wall-clock. Trained with the same seeds; not a row of its own.
EQUAL_TIME_ARM = "plain_long"
# Arms whose camvid_cpu_r18_warm config is unchanged since the first sweep (2026-12-01, base val 39.70, whose runs
# are in its results JSON only): their pairs from it pool with later ones. CSC+ACE and ACE changed (ACE took the
# class weights) and do not pool. Later bases' runs stay in the ledger, stamped, and pool by their stamp.
POOLED_METHODS = {"dsd", "ka"}


def config_exists(protocol: str, method: str) -> bool:
    return (REPO / "configs" / "distill" / protocol / f"{method}.yaml").is_file()


def config_path(protocol: str, method: str) -> Path:
    path = REPO / "configs" / "distill" / protocol / f"{method}.yaml"
    if not path.is_file():
        raise SystemExit(f"no config {path}; run benchmarks/make_distill_configs.py")
    return path


EXTRA_OVERRIDES: list[str] = []  # --set values, applied to every run and to the timing pass


def overrides(teacher: str, seed: int, method: str) -> list[str]:
    sets = [f"train.seed={seed}", *EXTRA_OVERRIDES]
    if method not in ("plain", EQUAL_TIME_ARM):
        sets.append(f"distill.teacher={teacher}")
    return sets


# Config keys that did not exist when the ledger's first entries were stamped; unset, they stay out of the stamp.
STAMPED_WHEN_SET = [("data", "train_include")]


def _with_base(name: str, base: float | None) -> str:
    """``name`` plus ``@<base mIoU %>`` where the protocol has a warm-start base: the same run from two bases (the
    base differs from one CPU to another) is two entries."""
    return name if base is None else f"{name}@{100 * base:.2f}"


def _ledger_key(method: str, seed: int, base: float | None) -> str:
    return _with_base(f"{method}_s{seed}", base)


class Ledger:
    """The committed record of finished runs: ``{"<method>_s<seed>[@<base>]": entry}`` in one JSON file.

    An entry holds the run's final validation scores and a stamp (``config_sha``: the resolved config with the
    run's overrides; ``base_miou``: the warm-start base's final score, where the protocol has one). An entry is
    used only while its stamp matches what the run would be trained with now; updates hold a file lock, so sweeps
    running side by side share one ledger.
    """

    def __init__(self, path: Path, protocol: str) -> None:
        self.path, self.protocol = path, protocol

    def _read(self) -> dict:
        entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
        # Keys written before the ledger held more than one base carry no base: add it from the entry's stamp.
        return {(key if "@" in key else _with_base(key, entry.get("base_miou"))): entry
                for key, entry in entries.items()}

    @contextlib.contextmanager
    def _locked(self):
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def stamp(self, method: str, seed: int, teacher: str) -> dict:
        from edgeseg.training.config import resolve_config

        config = resolve_config(config_path(self.protocol, method), overrides(teacher, seed, method))
        # Where the dataset lives is no part of what the run computes: stamp its name only.
        config["data"]["dataset"] = config["data"]["dataset"].partition(":")[0]
        for section, key in STAMPED_WHEN_SET:  # settings added after the ledger began: absent from older stamps
            if config[section].get(key) is None:
                config[section].pop(key, None)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {"config_sha": digest, "base_miou": base_miou(self.protocol)}

    def lookup(self, method: str, seed: int, teacher: str) -> dict | None:
        """The entry's final scores if its stamp matches the run as configured now, else None.

        A machine without the base (a fresh checkout writing tables) cannot tell which base is meant: it trusts an
        entry only where the ledger holds one for that method and seed.
        """
        stamp, entries = self.stamp(method, seed, teacher), self._read()
        if stamp["base_miou"] is None:
            name = f"{method}_s{seed}"
            found = [entry for key, entry in entries.items() if key.partition("@")[0] == name]
            entry = found[0] if len(found) == 1 else None
        else:
            entry = entries.get(_ledger_key(method, seed, stamp["base_miou"]))
            if entry is not None and entry["base_miou"] != stamp["base_miou"]:
                entry = None
        if entry is None or entry["config_sha"] != stamp["config_sha"]:
            return None
        return entry["final"]

    def other_bases(self, method: str, teacher: str) -> dict[tuple[str, int], float]:
        """``(base, seed) -> mIoU`` of the entries of ``method`` trained from other bases than this machine's, where
        the config stamp matches the run as configured now (so the pairs they make are the same experiment)."""
        current = base_miou(self.protocol)
        found = {}
        for key, entry in self._read().items():
            name, _, base = key.partition("@")
            arm, _, seed = name.rpartition("_s")
            if arm != method or not base or current is None or entry["base_miou"] == current:
                continue
            if entry["config_sha"] == self.stamp(method, int(seed), teacher)["config_sha"]:
                found[(base, int(seed))] = entry["final"]["miou"]
        return found

    def record(self, method: str, seed: int, teacher: str, final: dict, source: str) -> None:
        from edgeseg.runtime.atomic_files import write_json_atomic

        entry = {**self.stamp(method, seed, teacher), "final": final, "source": source, "packages": _packages(),
                 "recorded": time.strftime("%Y-%m-%d")}
        key = _ledger_key(method, seed, entry["base_miou"])
        with self._locked():
            entries = self._read()
            if {k: v for k, v in entries.get(key, {}).items() if k != "recorded"} == \
                    {k: v for k, v in entry.items() if k != "recorded"}:
                return
            entries[key] = entry
            write_json_atomic(self.path, dict(sorted(entries.items())))


def _packages() -> str:
    """The versions a run's numbers depend on beyond its config (recorded, not matched: the base's score guards)."""
    import cv2
    import numpy
    import torch

    return f"torch {torch.__version__}, numpy {numpy.__version__}, opencv {cv2.__version__}"


def ledger_path(results: Path) -> Path:
    return results.with_name(results.name + "_runs.json")


def base_miou(protocol: str) -> float | None:
    """The warm-start base's final val mIoU where it is trained here (None: no base, or not trained here)."""
    base_config = REPO / "configs" / "distill" / protocol / "base.yaml"
    if not base_config.is_file():
        return None
    from edgeseg.training.config import resolve_config

    metrics = REPO / Path(resolve_config(config_path(protocol, "plain"))["model"]["weights"]).parent / "metrics.json"
    return json.loads(metrics.read_text())["final"]["miou"] if metrics.is_file() else None


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def run_training(protocol: str, method: str, seed: int, teacher: str, runs: Path, ledger: Ledger) -> dict:
    """Train one (method, seed) pair unless it finished already (here or in the ledger); resume an interrupted one."""
    out = runs / f"{method}_s{seed}"
    done = out / "metrics.json"
    if done.is_file():
        print(f"[skip] {method} seed {seed}: finished ({out})", flush=True)
    else:
        recorded = ledger.lookup(method, seed, teacher)
        if recorded is not None:
            print(f"[skip] {method} seed {seed}: in the ledger {ledger.path.name}", flush=True)
            return recorded
        command = [sys.executable, "-m", "edgeseg.cli", "train"]
        if (out / "last.pt").is_file():
            command += ["--resume", str(out)]
            print(f"[resume] {method} seed {seed} from {out / 'last.pt'}", flush=True)
        else:
            command += [str(config_path(protocol, method)), "--out", str(out)]
            print(f"[train] {method} seed {seed} -> {out}", flush=True)
        for item in overrides(teacher, seed, method):
            command += ["--set", item]
        subprocess.run(command, check=True, cwd=REPO)
    final = json.loads(done.read_text())["final"]
    ledger.record(method, seed, teacher, final, source=_shown(out))
    return final


def ensure_base(protocol: str) -> None:
    """Warm-start protocols: train the shared starting checkpoint (``base.yaml``) once, where the arms expect it."""
    base_config = REPO / "configs" / "distill" / protocol / "base.yaml"
    if not base_config.is_file():
        return
    from edgeseg.training.config import resolve_config

    weights = resolve_config(config_path(protocol, "plain"))["model"]["weights"]
    out = (REPO / weights).parent
    if (out / "metrics.json").is_file():
        print(f"[skip] warm-start base: finished ({out})", flush=True)
        return
    command = [sys.executable, "-m", "edgeseg.cli", "train"]
    command += ["--resume", str(out)] if (out / "last.pt").is_file() else [str(base_config), "--out", str(out)]
    for item in EXTRA_OVERRIDES:
        command += ["--set", item]
    print(f"[train] warm-start base -> {out}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def time_method(protocol: str, method: str, teacher: str, steps: int, warmup: int) -> dict:
    """Median step time and peak memory of one method, measured in this (fresh) process."""
    import torch

    from edgeseg.training.config import resolve_config
    from edgeseg.training.trainer import Trainer

    config = resolve_config(config_path(protocol, method), overrides(teacher, 0, method))
    config["data"]["workers"] = 0  # time the step, not the loader
    if config.get("distill") and "autoencoder" in config["distill"]:
        config["distill"]["autoencoder"]["iterations"] = 1  # the timing pass needs a frozen encoder, not a good one
        config["distill"]["autoencoder"]["cache_dir"] = str(REPO / "runs" / "timing_autoencoders")
    trainer = Trainer(config, REPO / "runs" / "timing" / method)
    batches = trainer._labeled_batches()
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    times = []
    for step in range(warmup + steps):
        images, labels = next(batches)
        started = time.perf_counter()
        trainer.train_step(images, labels)
        trainer.iteration += 1  # as fit() does: the loss-balance check runs at the first (warm-up) step only
        if cuda:
            torch.cuda.synchronize(trainer.device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    if trainer.distiller is not None:
        trainer.distiller.close()
    peak = (torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"method": method, "step_s": statistics.median(times), "peak_mem_mb": peak,
            "peak_mem_kind": "cuda max allocated" if cuda else "process max RSS", "device": str(trainer.device)}


def timing_pass(args) -> dict[str, dict]:
    """Each method's step time relative to plain runs measured right before and after it."""
    results: dict[str, dict] = {}
    plain_times: list[float] = []

    def measure(method: str) -> dict:
        command = [sys.executable, __file__, "--time-method", method, "--protocol", args.protocol,
                   "--teacher", args.teacher, "--timing-steps", str(args.timing_steps)]
        command += [f"--set={item}" for item in EXTRA_OVERRIDES]
        output = subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    previous_plain = measure("plain")
    plain_times.append(previous_plain["step_s"])
    results["plain"] = previous_plain
    for method in [m for m in args.methods if m != "plain"]:
        row = measure(method)
        next_plain = measure("plain")
        plain_times.append(next_plain["step_s"])
        row["plain_step_s"] = (previous_plain["step_s"] + next_plain["step_s"]) / 2
        row["step_time_ratio"] = row["step_s"] / row["plain_step_s"]
        results[method] = row
        previous_plain = next_plain
        print(f"[time] {method}: {row['step_s']:.2f} s/step, {row['step_time_ratio']:.2f}x plain", flush=True)
    results["plain"]["step_s"] = statistics.median(plain_times)
    results["plain"]["step_time_ratio"] = 1.0
    return results


def teacher_miou(teacher: str, dataset: str) -> dict:
    import edgeseg.training.inference  # noqa: F401  (registers the .pt backend)
    from edgeseg.runtime.datasets import open_dataset
    from edgeseg.runtime.evaluate import evaluate
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.training.checkpoint import load_checkpoint

    card = load_checkpoint(teacher)
    with Segmenter.load(teacher) as segmenter:
        result = evaluate(segmenter, open_dataset(dataset, "val"))
    return {"model": card["model"]["name"], "kwargs": card["model"]["kwargs"], "checkpoint": teacher,
            "miou": result["miou"], "trained_with": card["config"].get("name"),
            "num_classes": len(card["classes"]["names"])}


def model_costs(model: dict, num_classes: int, size: list[int]) -> dict:
    """Parameters (millions) and GFLOPs of one forward pass at ``size``: what each side of the table costs."""
    from edgeseg.training.models import create_model
    from edgeseg.training.models.profile import count_flops, count_params

    network = create_model(model["name"], num_classes=num_classes, **(model.get("kwargs") or {}))
    return {"params_m": round(count_params(network) / 1e6, 2), "gflops": round(count_flops(network, tuple(size)), 2),
            "size": list(size)}


def machine() -> str:
    from edgeseg.runtime.sysinfo import describe_machine, format_machine

    info = describe_machine()
    gpus = ", ".join(g.get("name", "?") for g in info.get("gpus", [])) or "no GPU"
    return f"{format_machine(info).splitlines()[0]}; {gpus}"


def _final_scores(runs: Path, method: str, seeds: list[int], ledger: Ledger, teacher: str) -> dict[int, dict]:
    """seed -> final validation metrics, for the finished runs of ``method`` (run folder first, then the ledger)."""
    finals = {}
    for seed in seeds:
        metrics = runs / f"{method}_s{seed}" / "metrics.json"
        final = (json.loads(metrics.read_text())["final"] if metrics.is_file()
                 else ledger.lookup(method, seed, teacher))
        if final is not None:
            finals[seed] = final
    return finals


def _equal_time_plain(plain: list[float], longer: list[float], factor: float | None, ratio: float | None):
    """The plain student's mIoU at ``ratio`` x its iterations, linear between the plain and plain_long arms.

    Returns (mIoU, extrapolated?) or (None, False) when either arm or the ratio is missing.
    """
    if not plain or not longer or factor is None or ratio is None:
        return None, False
    short_mean, long_mean = statistics.fmean(plain), statistics.fmean(longer)
    fraction = (ratio - 1.0) / (factor - 1.0)
    return short_mean + fraction * (long_mean - short_mean), ratio > factor


def summarize(args, runs: Path, timings: dict | None, teacher: dict, plain_config: dict) -> dict:
    student = plain_config["model"]
    size = plain_config["data"]["base_size"] or plain_config["data"]["crop_size"]
    ledger = Ledger(ledger_path(args.results), args.protocol)
    finals = {method: _final_scores(runs, method, args.seeds, ledger, args.teacher) for method in args.methods}
    by_seed = {method: {seed: f["miou"] for seed, f in values.items()} for method, values in finals.items()}
    per_seed = {method: list(values.values()) for method, values in by_seed.items()}
    plain = per_seed["plain"]
    spread = pooled_std([values for values in per_seed.values() if values])
    longer = ([f["miou"] for f in _final_scores(runs, EQUAL_TIME_ARM, args.seeds, ledger, args.teacher).values()]
              if config_exists(args.protocol, EQUAL_TIME_ARM) else [])
    factor = None
    if longer:
        from edgeseg.training.config import resolve_config

        factor = (resolve_config(config_path(args.protocol, EQUAL_TIME_ARM))["train"]["iterations"]
                  / plain_config["train"]["iterations"])
    rows = []
    for method in args.methods:
        scores = per_seed[method]
        timing = (timings or {}).get(method, {})
        row = {"method": method, "miou_mean": statistics.fmean(scores) if scores else None,
               "miou_std": statistics.stdev(scores) if len(scores) > 1 else None, "seeds": len(scores),
               "step_time_ratio": timing.get("step_time_ratio"), "step_s": timing.get("step_s"),
               "peak_mem_mb": timing.get("peak_mem_mb"),
               "per_class_iou": _mean_per_class(list(finals[method].values()))}
        if method != "plain":
            test = welch(scores, plain)
            row.update(gain=test["diff"], gain_ci95=test["ci"], p_value=test["p_value"],
                       mde=(minimum_detectable_effect(spread, len(scores), len(plain))
                            if spread is not None and scores and plain else None))
            pairs = paired(by_seed[method], by_seed["plain"])
            row.update(paired_n=pairs["n"], gain_paired=pairs["diff"], gain_paired_ci95=pairs["ci"],
                       p_value_paired=pairs["p_value"], paired_std=pairs["std"], mde_paired=pairs["mde"])
            reference, extrapolated = _equal_time_plain(plain, longer, factor, row["step_time_ratio"])
            row["gain_equal_time"] = (row["miou_mean"] - reference
                                      if reference is not None and row["miou_mean"] is not None else None)
            row["equal_time_extrapolated"] = extrapolated
            base_arm = ADDS_TO.get(method)
            if base_arm in by_seed:
                over = paired(by_seed[method], by_seed[base_arm])
                row["over"] = {"arm": base_arm, "n": over["n"], "gain": over["diff"], "ci95": over["ci"],
                               "p_value": over["p_value"], "std": over["std"], "mde": over["mde"]}
        rows.append(row)
    earlier = json.loads(Path(args.pool_with).read_text()) if getattr(args, "pool_with", None) else None
    _pool_pairs(rows, by_seed, ledger, args.teacher, earlier, str(getattr(args, "pool_with", None)))
    classes = teacher["num_classes"]
    teacher = {**teacher, **model_costs({"name": teacher["model"], "kwargs": teacher["kwargs"]}, classes, size)}
    return {**provenance("benchmarks/distill.py"), "machine": machine(), "protocol": args.protocol,
            "base_miou": base_miou(args.protocol), "packages": _packages(), "teacher": teacher,
            "student": {"model": student["name"], "kwargs": student["kwargs"],
                        **model_costs(student, classes, size)},
            "seeds": args.seeds, "pooled_std": spread,
            "runs_per_arm_for_1_point": runs_for_effect(spread, 0.01) if spread else None,
            "equal_time": {"arm": EQUAL_TIME_ARM, "iterations_factor": factor, "per_seed_miou": longer},
            "rows": rows, "per_seed_miou": per_seed,
            "seeds_by_method": {method: sorted(values) for method, values in by_seed.items()},
            "memory_kind": next((t.get("peak_mem_kind") for t in (timings or {}).values()), None)}


def _pool_pairs(rows: list[dict], by_seed: dict[str, dict[int, float]], ledger: "Ledger", teacher: str,
                earlier: dict | None, source: str) -> None:
    """Add to each row the paired gain over the pairs of every warm-start base: this sweep's, the ledger's entries
    from other bases (same config stamp), and ``earlier`` (a results JSON of a sweep whose runs left the ledger).
    A pair is (base, seed): both arms from the same base and data order.

    From ``earlier`` only the arms whose config did not change since (:data:`POOLED_METHODS`) pool.
    """
    earlier = earlier or {}
    seeds = earlier.get("seeds_by_method", {})
    values = earlier.get("per_seed_miou", {})
    earlier_by_seed = {m: dict(zip(seeds.get(m, []), values.get(m, []))) for m in values}
    plain_elsewhere = ledger.other_bases("plain", teacher)
    for row in rows:
        method = row["method"]
        if method == "plain":
            continue
        pooled_method = {("now", k): v for k, v in by_seed[method].items()}
        pooled_plain = {("now", k): v for k, v in by_seed["plain"].items()}
        pooled_method.update(ledger.other_bases(method, teacher))
        pooled_plain.update(plain_elsewhere)
        if method in POOLED_METHODS and method in earlier_by_seed:
            pooled_method.update({("earlier", k): v for k, v in earlier_by_seed[method].items()})
            pooled_plain.update({("earlier", k): v for k, v in earlier_by_seed.get("plain", {}).items()})
        pairs = paired(pooled_method, pooled_plain)
        if pairs["n"] <= row.get("paired_n", 0):  # no pair from another base
            continue
        bases = sorted({base for base, _ in set(pooled_method) & set(pooled_plain)})
        row["pooled"] = {"with": source if "earlier" in bases else None, "bases": len(bases),
                         "earlier_base_miou": earlier.get("base_miou") if "earlier" in bases else None,
                         "ledger_bases": [b for b in bases if b not in ("now", "earlier")], "n": pairs["n"],
                         "gain": pairs["diff"], "ci95": pairs["ci"], "p_value": pairs["p_value"],
                         "std": pairs["std"], "mde": pairs["mde"]}


def _mean_per_class(finals: list[dict]) -> dict[str, float | None]:
    if not finals:
        return {}
    names = list(finals[0].get("per_class_iou", {}))
    means = {}
    for name in names:
        values = [f["per_class_iou"][name] for f in finals if f["per_class_iou"].get(name) is not None]
        means[name] = statistics.fmean(values) if values else None
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="camvid_cpu", help="folder under configs/distill (default camvid_cpu)")
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (overrides the configs' distill.teacher)")
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS,
                        choices=[*ALL_METHODS, *UNLABELED_ARMS, EQUAL_TIME_ARM],
                        help=f"rows of the table ({EQUAL_TIME_ARM} stands for --equal-time)")
    parser.add_argument("--equal-time", action="store_true",
                        help=f"also train the {EQUAL_TIME_ARM} arm (warm-start protocols) for the equal-time gain")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--runs", type=Path, help="run folders (default runs/distill_<protocol>)")
    parser.add_argument("--results", type=Path,
                        help="output path without suffix, .md and .json are written (default "
                             "benchmarks/results/distill_<protocol>)")
    parser.add_argument("--timing-steps", type=int, default=6, help="timed steps per method (after 2 warm-up)")
    parser.add_argument("--skip-timing", action="store_true", help="reuse the timing stored in the results JSON")
    parser.add_argument("--report-only", action="store_true", help="write the tables from finished runs only")
    parser.add_argument("--train-only", action="store_true",
                        help="train and record the runs in the ledger, write no tables (for parts run side by side)")
    parser.add_argument("--retime", action="store_true",
                        help="with --report-only: run the timing pass instead of reusing the stored timing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. --set train.threads=1")
    parser.add_argument("--pool-with", type=Path, metavar="RESULTS.json",
                        help="also pool the paired gains with an earlier sweep of this protocol from another base "
                             f"(arms {', '.join(sorted(POOLED_METHODS))} only: their configs did not change)")
    parser.add_argument("--time-method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    EXTRA_OVERRIDES.extend(args.overrides)

    if args.time_method:
        print(json.dumps(time_method(args.protocol, args.time_method, args.teacher, args.timing_steps, 2)))
        return
    if EQUAL_TIME_ARM in args.methods:
        args.methods.remove(EQUAL_TIME_ARM)
        args.equal_time = True
    if "plain" not in args.methods and not args.train_only:  # the tables compare against it; a part may skip it
        args.methods = ["plain", *args.methods]
    runs = args.runs or REPO / "runs" / f"distill_{args.protocol}"
    args.results = args.results or REPO / "benchmarks" / "results" / f"distill_{args.protocol}"
    if not args.report_only:
        ensure_base(args.protocol)
        ledger = Ledger(ledger_path(args.results), args.protocol)
        arms = [*args.methods, *([EQUAL_TIME_ARM] if args.equal_time else [])]
        for seed in args.seeds:  # all methods for one seed first, so a cut-short sweep still compares them all
            for method in arms:
                run_training(args.protocol, method, seed, args.teacher, runs, ledger)
        if args.train_only:
            return
    from edgeseg.training.config import resolve_config

    plain_config = resolve_config(config_path(args.protocol, "plain"))
    previous_path = args.results.with_suffix(".json")
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else None
    timings = None
    if args.skip_timing or (args.report_only and not args.retime):
        if previous is not None and previous.get("protocol") == args.protocol:  # not another protocol's times
            timings = {row["method"]: {**row, "peak_mem_kind": previous.get("memory_kind")}
                       for row in previous["rows"] if row.get("step_time_ratio") is not None}
    else:
        timings = timing_pass(args)
    teacher = teacher_miou(args.teacher, plain_config["data"]["dataset"])
    summary = summarize(args, runs, timings, teacher, plain_config)
    if args.report_only and not args.retime and previous is not None:  # timings from the run that measured them
        note = " (tables rewritten with --report-only)"
        summary["command"] = previous["command"].removesuffix(note) + note
    from edgeseg.runtime.atomic_files import write_json_atomic, write_text_atomic

    write_json_atomic(args.results.with_suffix(".json"), summary)
    write_text_atomic(args.results.with_suffix(".md"), to_markdown(summary))
    print(to_markdown(summary))


if __name__ == "__main__":
    main()
