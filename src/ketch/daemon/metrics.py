"""Prometheus metrics of a daemon: counters and a latency histogram, rendered as text.

Small on purpose: the daemon needs a handful of series, not a client library.
"""

from __future__ import annotations

import bisect
import threading
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
            "ketch_backend_read_bytes_total", "Bytes read from the storage backend"
        )
        self.cache_hits = Counter("ketch_cache_hits_total", "Chunks served from the chunk cache")
        self.cache_misses = Counter("ketch_cache_misses_total", "Chunks fetched from the backend")
        self.verify_failures = Counter(
            "ketch_chunk_verify_failures_total", "Chunks whose bytes did not match their digest"
        )
        self.read_bytes = Counter("ketch_read_bytes_total", "Bytes returned to readers")
        self.read_errors = Counter("ketch_read_errors_total", "Reads answered with an error")
        self.prefetch_bytes = Counter("ketch_prefetch_bytes_total", "Bytes of files prefetched")
        self.mirror_reads = Counter("ketch_mirror_reads_total", "Blob reads served by a mirror")
        self.origin_fallbacks = Counter(
            "ketch_origin_fallbacks_total",
            "Blob reads a mirror could not serve, done at the origin",
        )
        self.mirror_failures = Counter(
            "ketch_mirror_failures_total", "Mirror failures (errors, timeouts, wrong bytes)"
        )
        self.read_latency = Histogram("ketch_read_latency_seconds", "Latency of FUSE reads")

    def add(self, counter: Counter, amount: float = 1) -> None:
        with self._lock:
            counter.value += amount

    def set(self, counter: Counter, value: float) -> None:
        with self._lock:
            counter.value = value

    def observe_read(self, seconds: float) -> None:
        with self._lock:
            self.read_latency.observe(seconds)

    def render(self) -> str:
        with self._lock:
            series: list[Counter | Histogram] = [
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
                self.read_latency,
            ]
            return "".join(s.render() for s in series)
