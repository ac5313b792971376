"""Per-stage timing of the video pipeline and the summary printed at the end of a run.

Every stage is timed with ``time.perf_counter`` in the thread that runs it, and the report gives p50 and p99 per
stage (as jetson-inference's profiler does per stage) with no outlier clipping: a p99 that is far above the p50 is
exactly what a stuttering video looks like.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# "e2e" is the latency of one frame from the start of its decode to the end of its render, queue waits included.
STAGES = ("decode", "preprocess", "infer", "postprocess", "render", "e2e")


class StageTimes:
    """Collects per-frame durations (seconds) for each stage of :data:`STAGES`."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def add(self, **durations: float) -> None:
        for stage, seconds in durations.items():
            self.samples[stage].append(seconds)

    def milliseconds(self) -> dict[str, dict[str, float | None]]:
        """``{stage: {"p50", "p99", "mean"}}`` in milliseconds; None for a stage that never ran."""
        table: dict[str, dict[str, float | None]] = {}
        for stage, values in self.samples.items():
            if not values:
                table[stage] = {"p50": None, "p99": None, "mean": None}
                continue
            ms = np.asarray(values, dtype=np.float64) * 1e3
            p50, p99 = np.percentile(ms, [50, 99])
            table[stage] = {"p50": round(float(p50), 3), "p99": round(float(p99), 3),
                            "mean": round(float(ms.mean()), 3)}
        return table


class FpsMeter:
    """Frame rate smoothed over roughly the last ``1 / smoothing`` frames, for the on-frame display."""

    def __init__(self, smoothing: float = 0.1):
        self.smoothing = smoothing
        self._interval: float | None = None
        self._last: float | None = None

    def tick(self, now: float) -> float:
        """Record a frame finished at ``now`` (perf_counter seconds); return the smoothed FPS (0 until known)."""
        if self._last is not None:
            interval = now - self._last
            if self._interval is None:
                self._interval = interval
            else:
                self._interval += self.smoothing * (interval - self._interval)
        self._last = now
        return 1.0 / self._interval if self._interval else 0.0


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable table of a run summary (see :meth:`VideoPipeline.run` for the keys)."""
    lines = [
        f"source      {summary['source']}",
        f"output      {summary['output'] or '-'}",
        f"model       {summary['model']} ({summary['backend']}: {', '.join(summary.get('providers') or []) or '-'})",
        f"frames      {summary['frames']} in {summary['wall_s']:.2f} s = {summary['fps']:.2f} FPS"
        + (" (interrupted)" if summary.get("interrupted") else ""),
        f"dropped     {summary['dropped']}",
        f"reconnects  {summary['reconnects']} ({summary['reconnect_attempts']} attempts)",
        "",
        f"{'stage':<12}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}",
    ]
    for stage, row in summary["stage_ms"].items():
        cells = "".join(f"{'-' if row[key] is None else f'{row[key]:.2f}':>10}" for key in ("p50", "p99", "mean"))
        lines.append(f"{stage:<12}{cells}")
    return "\n".join(lines)

