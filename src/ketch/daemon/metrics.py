"""Prometheus metrics of a daemon: counters and a latency histogram, rendered as text.

Small on purpose: the daemon needs a handful of series, not a client library.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

# Read latency buckets in seconds: from a page-cache-like hit to a slow remote fetch.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(slots=True)
class Counter:
    name: str
    help: str
    value: float = 0.0

    def render(self) -> str:
        value = int(self.value) if float(self.value).is_integer() else self.value
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} counter\n{self.name} {value}\n"


@dataclass(slots=True)
class LabelledCounter:
    """A counter per value of one label (``name{label="value"}``)."""

    name: str
    help: str
    label: str
    values: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key in sorted(self.values):
            value = self.values[key]
            shown = int(value) if float(value).is_integer() else value
            lines.append(f'{self.name}{{{self.label}="{key}"}} {shown}')
        return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.total:g}")
        lines.append(f"{self.name}_count {self.count}")
        return "\n".join(lines) + "\n"


class Metrics:
    """Every series the daemon exports; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.backend_read_bytes = Counter(
            "ketch_backend_read_bytes_total",
            "Bytes read from the storage backend (miss extensions and prefetches included)",
        )
        self.cache_hits = Counter("ketch_cache_hits_total", "Chunks served from the chunk cache")
        self.cache_misses = Counter(
            "ketch_cache_misses_total",
            "Chunks fetched from the backend (not those a miss extension brought along)",
        )
        self.verify_failures = Counter(
            "ketch_chunk_verify_failures_total",
            "Chunk checks that failed (bytes that did not match their digest, from any source)",
        )
        self.read_bytes = Counter("ketch_read_bytes_total", "Bytes returned to readers")
        self.read_errors = Counter("ketch_read_errors_total", "Reads answered with an error")
        self.prefetch_bytes = Counter(
            "ketch_prefetch_bytes_total",
            "Bytes of the files of the prefetch list (or table) fetched after mount",
        )
        self.mirror_reads = Counter("ketch_mirror_reads_total", "Blob reads served by a mirror")
        self.origin_fallbacks = Counter(
            "ketch_origin_fallbacks_total",
            "Blob reads a mirror could not serve, done at the origin",
        )
        self.mirror_failures = Counter(
            "ketch_mirror_failures_total", "Mirror failures (errors, timeouts, wrong bytes)"
        )
        self.request_retries = LabelledCounter(
            "ketch_request_retries_total",
            "Failed storage requests that were tried again, by cause",
            "cause",
        )
        self.request_failures = LabelledCounter(
            "ketch_request_failures_total",
            "Storage requests given up on after their retries, by cause",
            "cause",
        )
        self.fetch_timeouts = Counter(
            "ketch_fetch_timeouts_total",
            "Storage requests that took longer than the timeout (retried or not)",
        )
        self.cache_corrupt = Counter(
            "ketch_cache_corrupt_entries_total",
            "Chunk cache entries found damaged, deleted and fetched again",
        )
        self.cache_store_errors = Counter(
            "ketch_cache_store_errors_total",
            "Chunks that could not be written to the chunk cache (served anyway)",
        )
        self.cache_no_space = Counter(
            "ketch_cache_no_space_total",
            "Chunk cache writes that found the disk full (ENOSPC; served anyway)",
        )
        self.read_latency = Histogram("ketch_read_latency_seconds", "Latency of FUSE reads")

    def add(self, counter: Counter, amount: float = 1) -> None:
        with self._lock:
            counter.value += amount

    def set(
        self,
        values: Sequence[tuple[Counter, float]],
        labelled: Sequence[tuple[LabelledCounter, dict[str, int]]] = (),
    ) -> None:
        """Set counters from snapshots of their sources, all at once: a scrape sees all
        of them or none."""
        with self._lock:
            for counter, value in values:
                counter.value = value
            for series, counts in labelled:
                series.values = {key: float(count) for key, count in counts.items()}

    def observe_read(self, seconds: float) -> None:
        with self._lock:
            self.read_latency.observe(seconds)

    def render(self) -> str:
        with self._lock:
            series: list[Counter | LabelledCounter | Histogram] = [
                self.backend_read_bytes,
                self.cache_hits,
                self.cache_misses,
                self.verify_failures,
                self.read_bytes,
                self.read_errors,
                self.prefetch_bytes,
                self.mirror_reads,
                self.origin_fallbacks,
                self.mirror_failures,
                self.request_retries,
                self.request_failures,
                self.fetch_timeouts,
                self.cache_corrupt,
                self.cache_store_errors,
                self.cache_no_space,
                self.read_latency,
            ]
            return "".join(s.render() for s in series)
