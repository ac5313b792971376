"""benchmarks/stats.py and the statistics of benchmarks/distill.py: intervals, p-values, MDE, equal-time gains."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import stats  # noqa: E402


def _load_distill():
    spec = importlib.util.spec_from_file_location("distill_benchmark", REPO / "benchmarks" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("p, df, expected", [(0.975, 10, 2.2281), (0.975, 3, 3.1824), (0.8, 10, 0.8791),
                                             (0.975, 1000, 1.9623), (0.5, 7, 0.0)])
def test_t_quantiles_match_tables(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=2e-4)
    assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)


def test_welch_interval_and_p_value():
    result = stats.welch([1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0, 6.0])
    assert result["diff"] == pytest.approx(-1.5)
    assert result["df"] == pytest.approx(6.98, abs=0.01)
    assert result["ci"] == pytest.approx([-3.765, 0.765], abs=2e-3)
    assert result["p_value"] == pytest.approx(0.161, abs=2e-3)
    assert stats.welch([1.0], [2.0, 3.0])["ci"] is None  # one run says nothing about spread


def test_minimum_detectable_effect_shrinks_with_runs():
    assert stats.minimum_detectable_effect(1.6, 2, 2) > stats.minimum_detectable_effect(1.6, 8, 8)
    n = stats.runs_for_effect(1.6, 1.0)
    assert stats.minimum_detectable_effect(1.6, n, n) <= 1.0 < stats.minimum_detectable_effect(1.6, n - 1, n - 1)
    assert 38 <= n <= 46  # the review's figure for this spread: about 44 per arm


def _write_run(runs: Path, method: str, seed: int, miou: float) -> None:
    folder = runs / f"{method}_s{seed}"
    folder.mkdir(parents=True)
    final = {"miou": miou, "pixel_acc": 0.5, "per_class_iou": {"Sky": miou, "Road": None}}
    (folder / "metrics.json").write_text(json.dumps({"final": final}))


def test_summary_reports_gain_interval_mde_and_equal_time(tmp_path, monkeypatch):
    distill = _load_distill()
    runs = tmp_path / "runs"
    plain, method, longer = [0.40, 0.41, 0.42, 0.43], [0.45, 0.46, 0.47], [0.42, 0.43, 0.44, 0.45]
    for seed, value in enumerate(plain):
        _write_run(runs, "plain", seed, value)
        _write_run(runs, "plain_long", seed, longer[seed])
    for seed, value in enumerate(method):
        _write_run(runs, "dsd", seed, value)
    monkeypatch.setattr(distill, "machine", lambda: "test machine")
    monkeypatch.setattr(distill, "model_costs", lambda model, classes, size: {"params_m": 1.0, "gflops": 1.0,
                                                                             "size": list(size)})
    from edgeseg.training.config import resolve_config

    plain_config = resolve_config(distill.config_path("camvid_cpu_r18_warm", "plain"))
    monkeypatch.setattr(distill, "base_miou", lambda protocol: 0.4)
    args = argparse.Namespace(methods=["plain", "dsd"], seeds=[0, 1, 2, 3], protocol="camvid_cpu_r18_warm",
                              results=tmp_path / "distill", teacher="t.pt")
    timings = {"plain": {"step_time_ratio": 1.0}, "dsd": {"step_time_ratio": 1.25}}
    teacher = {"model": "bisenetv2", "kwargs": {}, "checkpoint": "t.pt", "miou": 0.5, "num_classes": 11}
    summary = distill.summarize(args, runs, timings, teacher, plain_config)
    row = next(r for r in summary["rows"] if r["method"] == "dsd")
    assert row["seeds"] == 3 and row["gain"] == pytest.approx(0.46 - 0.415)
    low, high = row["gain_ci95"]
    assert low < row["gain"] < high and low > 0 and row["p_value"] < 0.05
    assert row["mde"] > 0 and summary["pooled_std"] == pytest.approx(
        stats.pooled_std([plain, method]), rel=1e-9)
    # plain_long has 1.5x the iterations: a 1.25x step buys half of the way from plain (0.415) to it (0.435)
    assert row["gain_equal_time"] == pytest.approx(0.46 - 0.425)
    assert row["per_class_iou"]["Sky"] == pytest.approx(0.46) and row["per_class_iou"]["Road"] is None
    markdown = distill.to_markdown(summary)
    assert "gain [95% CI]" in markdown and "+4.50 [" in markdown and "+3.50" in markdown
    assert "Per-class IoU" in markdown and json.dumps(summary, allow_nan=False)
    assert row["paired_n"] == 3 and row["gain_paired"] == pytest.approx(0.46 - 0.41)  # seeds 0-2 of both arms
    assert "Paired by seed" in markdown and "(seeds [0, 1, 2])" in markdown
    assert math.isfinite(summary["runs_per_arm_for_1_point"])

    # Pairs from an earlier base pool with these: 3 now (seeds 0-2) + 2 earlier, a +1 point gain in both.
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"base_miou": 0.39, "seeds_by_method": {"plain": [0, 1], "dsd": [0, 1]},
                                   "per_seed_miou": {"plain": [0.30, 0.32], "dsd": [0.31, 0.33]}}))
    args.pool_with = earlier
    summary = distill.summarize(args, runs, timings, teacher, plain_config)
    pooled = next(r for r in summary["rows"] if r["method"] == "dsd")["pooled"]
    assert "over every warm-start base" in distill.to_markdown(summary)
    assert pooled["n"] == 5 and pooled["gain"] == pytest.approx((3 * 0.05 + 2 * 0.01) / 5)
    assert pooled["ci95"][0] < pooled["gain"] < pooled["ci95"][1]

    # Runs of a third base in the ledger (same configs, another base score) pool by their stamp: +2 pairs.
    ledger = distill.Ledger(distill.ledger_path(args.results), "camvid_cpu_r18_warm")
    monkeypatch.setattr(distill, "base_miou", lambda protocol: 0.38)
    for seed in (0, 1):
        ledger.record("plain", seed, "t.pt", {"miou": 0.35}, source="elsewhere")
        ledger.record("dsd", seed, "t.pt", {"miou": 0.36}, source="elsewhere")
    monkeypatch.setattr(distill, "base_miou", lambda protocol: 0.4)
    summary = distill.summarize(args, runs, timings, teacher, plain_config)
    pooled = next(r for r in summary["rows"] if r["method"] == "dsd")["pooled"]
    assert pooled["n"] == 7 and pooled["bases"] == 3 and pooled["ledger_bases"] == ["38.00"]
    assert pooled["gain"] == pytest.approx((3 * 0.05 + 2 * 0.01 + 2 * 0.01) / 7)
    assert "the ledger's runs from base 38.00" in distill.to_markdown(summary)


def test_an_arm_that_extends_another_reports_its_paired_gain_over_it(tmp_path, monkeypatch):
    distill = _load_distill()
    runs = tmp_path / "runs"
    scores = {"plain": [0.30, 0.32, 0.31], "kd": [0.31, 0.34, 0.32], "kd_unlabeled": [0.33, 0.37, 0.35]}
    for method, values in scores.items():
        for seed, value in enumerate(values):
            _write_run(runs, method, seed, value)
    monkeypatch.setattr(distill, "machine", lambda: "test machine")
    monkeypatch.setattr(distill, "model_costs", lambda model, classes, size: {"params_m": 1.0, "gflops": 1.0,
                                                                             "size": list(size)})
    monkeypatch.setattr(distill, "base_miou", lambda protocol: 0.3)
    from edgeseg.training.config import resolve_config

    plain_config = resolve_config(distill.config_path("camvid_cpu_r18_unlabeled", "plain"))
    args = argparse.Namespace(methods=list(scores), seeds=[0, 1, 2], protocol="camvid_cpu_r18_unlabeled",
                              results=tmp_path / "distill", teacher="t.pt")
    teacher = {"model": "bisenetv2", "kwargs": {}, "checkpoint": "t.pt", "miou": 0.5, "num_classes": 11}
    summary = distill.summarize(args, runs, None, teacher, plain_config)
    rows = {row["method"]: row for row in summary["rows"]}
    over = rows["kd_unlabeled"]["over"]
    assert over["arm"] == "kd" and over["n"] == 3
    assert over["gain"] == pytest.approx((0.02 + 0.03 + 0.03) / 3)  # per seed: kd_unlabeled - kd
    assert over["ci95"][0] < over["gain"] < over["ci95"][1]
    assert "over" not in rows["kd"]  # kd extends nothing
    assert "| kd_unlabeled | kd | 3 | +2.67 [" in distill.to_markdown(summary)


def test_ledger_serves_finished_runs_to_a_machine_without_them_while_their_stamp_holds(tmp_path, monkeypatch):
    distill = _load_distill()
    base = {"miou": 0.4}
    monkeypatch.setattr(distill, "base_miou", lambda protocol: base["miou"])
    ledger = distill.Ledger(tmp_path / "distill_runs.json", "camvid_cpu_r18_warm")
    final = {"miou": 0.41, "per_class_iou": {"Sky": 0.9}}
    ledger.record("plain", 3, "t.pt", final, source="runs/x/plain_s3")
    empty_runs = tmp_path / "runs"
    scores = distill._final_scores(empty_runs, "plain", [2, 3], ledger, "t.pt")
    assert scores == {3: final}  # seed 2 was never run
    assert distill._final_scores(empty_runs, "plain", [3], ledger, "other.pt") == {3: final}  # plain has no teacher
    assert distill._final_scores(empty_runs, "kd", [3], ledger, "t.pt") == {}
    base["miou"] = 0.39  # the base was retrained and came out different: the entry no longer describes a rerun
    assert ledger.lookup("plain", 3, "t.pt") is None
    base["miou"] = None  # a machine without the base trusts the stamped score
    assert ledger.lookup("plain", 3, "t.pt") == final
    entries = json.loads((tmp_path / "distill_runs.json").read_text())
    assert entries["plain_s3@40.00"]["source"] == "runs/x/plain_s3"
    assert len(entries["plain_s3@40.00"]["config_sha"]) == 16

    # The same run from a second base is a second entry; the first stays, and each base finds its own.
    base["miou"] = 0.39
    ledger.record("plain", 3, "t.pt", {"miou": 0.38}, source="runs/y/plain_s3")
    assert ledger.lookup("plain", 3, "t.pt") == {"miou": 0.38}
    base["miou"] = 0.4
    assert ledger.lookup("plain", 3, "t.pt") == final
    base["miou"] = None  # without the base, two entries are ambiguous: neither is trusted
    assert ledger.lookup("plain", 3, "t.pt") is None


def test_ledger_written_before_bases_were_keyed_still_serves_its_entries(tmp_path, monkeypatch):
    distill = _load_distill()
    monkeypatch.setattr(distill, "base_miou", lambda protocol: 0.3884)
    ledger = distill.Ledger(tmp_path / "distill_runs.json", "camvid_cpu_r18_warm")
    stamp = ledger.stamp("dsd", 1, "t.pt")
    (tmp_path / "distill_runs.json").write_text(json.dumps({"dsd_s1": {**stamp, "final": {"miou": 0.41}}}))
    assert ledger.lookup("dsd", 1, "t.pt") == {"miou": 0.41}
    ledger.record("dsd", 2, "t.pt", {"miou": 0.42}, source="runs/dsd_s2")
    assert sorted(json.loads((tmp_path / "distill_runs.json").read_text())) == ["dsd_s1@38.84", "dsd_s2@38.84"]


def test_a_run_folder_outranks_the_ledger_and_a_changed_config_misses_it(tmp_path, monkeypatch):
    distill = _load_distill()
    monkeypatch.setattr(distill, "base_miou", lambda protocol: None)
    ledger = distill.Ledger(tmp_path / "distill_runs.json", "camvid_cpu_r18_warm")
    ledger.record("dsd", 0, "t.pt", {"miou": 0.30}, source="old")
    runs = tmp_path / "runs"
    _write_run(runs, "dsd", 0, 0.42)
    assert distill._final_scores(runs, "dsd", [0], ledger, "t.pt")[0]["miou"] == 0.42
    assert ledger.lookup("dsd", 0, "other.pt") is None  # the teacher is part of the resolved config


def test_paired_differences_cancel_what_the_seed_shares():
    plain = {0: 0.40, 1: 0.43, 2: 0.38, 3: 0.45}
    method = {seed: value + 0.01 + 0.001 * seed for seed, value in plain.items()}  # +1 point, tiny noise
    result = stats.paired(method, plain)
    assert result["n"] == 4 and result["diff"] == pytest.approx(0.0115)
    assert result["ci"][0] > 0.009 and result["p_value"] < 0.001
    assert result["mde"] < stats.minimum_detectable_effect(stats.pooled_std([list(plain.values())]), 4, 4)
    assert stats.paired({0: 1.0, 5: 2.0}, {0: 0.5})["n"] == 1  # only seeds both arms hold are paired
