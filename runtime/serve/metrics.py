"""Counters, gauges and histograms written in the Prometheus text exposition format (version 0.0.4).

The format is small enough to write by hand, which keeps the torch-free server free of one more dependency. Every
metric is safe to update from the event loop, the inference workers and the stream thread at the same time.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _escape_label_value(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape_label_value(value)}"' for name, value in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    """Shared parts: a name, a help line, label names and a lock around the per-label-set values."""

    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help_text)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        return "\n".join(self.header() + self.samples())


class Counter(_Metric):
    """A value that only goes up (requests served, errors); Prometheus derives rates from it."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (got {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        with self._lock:
            return sum(self._values.values())

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return [f"{self.name}{_format_labels(self.label_names, key)} {_format_value(value)}" for key, value in items]


class Gauge(_Metric):
    """A value that goes up and down (stream FPS, queue depth, viewers)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def add(self, amount: float) -> None:
        with self._lock:
            self._value += amount

    def value(self) -> float:
        with self._lock:
            return self._value

    def samples(self) -> list[str]:
        return [f"{self.name} {_format_value(self.value())}"]


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, plus their sum and count (latencies, batch sizes)."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float], label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets:
            raise ValueError(f"{self.name}: a histogram needs at least one bucket")
        # per label set: [count in each finite bucket (non-cumulative), count above the last bucket], sum
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[index] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return sum(series[0]) if series else 0

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((key, (list(counts), total[0])) for key, (counts, total) in self._series.items())
        lines = []
        for key, (counts, total) in items:
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                cumulative += count
                le = 'le="' + _format_value(bound) + '"'
                lines.append(f"{self.name}_bucket{_format_labels(self.label_names, key, le)} {cumulative}")
            labels = _format_labels(self.label_names, key)
            lines.append(f"{self.name}_sum{labels} {_format_value(total)}")
            lines.append(f"{self.name}_count{labels} {cumulative}")
        return lines


class Registry:
    """The metrics one server exposes at ``/metrics``, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(metric.render() for metric in self._metrics) + "\n"


class ServeMetrics:
    """Every metric of ``edgeseg serve``, created together so the app, workers and stream share one registry."""

    def __init__(self) -> None:
        self.registry = Registry()
        add = self.registry.register
        self.requests = add(Counter("edgeseg_requests_total", "HTTP requests answered, by route and status code.",
                                    ("endpoint", "status")))
        self.latency = add(Histogram("edgeseg_request_latency_seconds",
                                     "Time from request arrival to the response being ready, by route.",
                                     LATENCY_BUCKETS_S, ("endpoint",)))
        self.errors = add(Counter("edgeseg_errors_total",
                                  "Requests that ended in an error, by route and kind (client or server).",
                                  ("endpoint", "kind")))
        self.batch_size = add(Histogram("edgeseg_batch_size", "Images per network call made by the workers.",
                                        BATCH_SIZE_BUCKETS))
        self.inference = add(Histogram("edgeseg_inference_seconds",
                                       "Wall time of one batched prepare + run + finish in a worker.",
                                       LATENCY_BUCKETS_S))
        self.queue_depth = add(Gauge("edgeseg_queue_depth", "Images waiting for an inference worker."))
        self.stream_fps = add(Gauge("edgeseg_stream_fps", "Frames per second of the live stream pipeline "
                                                          "(0 when no viewer is connected)."))
        self.stream_frames = add(Counter("edgeseg_stream_frames_total",
                                         "Frames the stream pipeline segmented and encoded."))
        self.stream_viewers = add(Gauge("edgeseg_stream_viewers", "Clients connected to /v1/stream."))

    def render(self) -> str:
        return self.registry.render()
