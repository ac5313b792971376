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


class FlickerMeter:
    """Temporal stability: the share of pixels whose class changes between consecutive frames.

    A steady scene segmented by a steady model changes few pixels from one frame to the next; a model that flips
    boundary or rare-class pixels back and forth (flicker) changes many. Per class, the figure is the share of the
    pixels of that class in the earlier frame that hold another class in the next one. A frame whose size differs
    from the one before (a reconnect at another resolution) starts a new pair.
    """

    def __init__(self) -> None:
        self.changed = np.zeros(256, dtype=np.int64)
        self.pixels = np.zeros(256, dtype=np.int64)
        self.pairs = 0
        self._previous: np.ndarray | None = None

    def add(self, class_map: np.ndarray) -> None:
        previous, self._previous = self._previous, class_map
        if previous is None or previous.shape != class_map.shape:
            return
        self.pixels += np.bincount(previous.ravel(), minlength=256)
        self.changed += np.bincount(previous[previous != class_map], minlength=256)
        self.pairs += 1

    def summary(self, class_names) -> dict[str, Any]:
        """``{"overall", "per_class": {name: share or None}, "frame_pairs"}``; shares are fractions, None
        where no pixel of the class (or no frame pair) was seen."""
        total = int(self.pixels.sum())
        per_class = {name: (round(float(self.changed[i] / self.pixels[i]), 6) if self.pixels[i] else None)
                     for i, name in enumerate(class_names)}
        overall = round(float(self.changed.sum() / total), 6) if total else None
        return {"overall": overall, "per_class": per_class, "frame_pairs": self.pairs}


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
    flicker = summary.get("flicker")
    if flicker and flicker["overall"] is not None:
        lines += ["", f"{'flicker':<12}{100 * flicker['overall']:>9.2f}%  of pixels change class between frames "
                      f"({flicker['frame_pairs']} frame pairs)"]
        lines += [f"  {name:<10}{100 * share:>9.2f}%" for name, share in flicker["per_class"].items()
                  if share is not None]
    return "\n".join(lines)

