"""benchmarks/roofline.py: the machine limits it measures and where it places a model under them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import roofline  # noqa: E402


def test_a_low_intensity_model_is_memory_bound_and_held_to_its_bandwidth_limit():
    # 2 GFLOP over 1000 MB is 2 FLOP/B; at 10 GB/s memory allows 20 GFLOP/s, below the 100 GFLOP/s peak.
    placed = roofline.place(2.0, 1000.0, 0.2, peak_gflops=100.0, bandwidth_gbs=10.0)
    assert placed["intensity"] == pytest.approx(2.0) and placed["bound"] == "memory"
    assert placed["gflops_per_s"] == pytest.approx(10.0)
    assert placed["share_of_peak"] == pytest.approx(0.10) and placed["share_of_bound"] == pytest.approx(0.5)


def test_a_high_intensity_model_is_compute_bound_and_held_to_the_peak():
    placed = roofline.place(20.0, 100.0, 0.5, peak_gflops=100.0, bandwidth_gbs=10.0)  # 200 FLOP/B
    assert placed["bound"] == "compute"
    assert placed["share_of_peak"] == placed["share_of_bound"] == pytest.approx(0.4)


def test_measured_limits_are_plausible_for_any_cpu():
    peak = roofline.gemm_limit(256, threads=1, iters=3)
    bandwidth = roofline.bandwidth_limit(32, threads=1, iters=2)
    assert 0.5 < peak < 10_000  # GFLOP/s of one core: from an old ARM board to far beyond any CPU core
    assert 0.2 < bandwidth < 2_000  # GB/s
