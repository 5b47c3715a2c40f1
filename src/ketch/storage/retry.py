"""The one retry policy of every network request, and the counters of what it met.

A request kind (ping, token, manifest GET/HEAD/PUT, blob HEAD/GET, range GET, upload,
tags, referrers) is an *attempt*: a callable that either returns its result or raises
``TransientError`` for a failure worth another try (429, 408, 5xx, a connection refused
or reset, an answer cut short, a timeout). ``RetryPolicy.run`` makes the attempts:
``retries`` more after the first, waiting between them with exponential backoff and
jitter (``Retry-After`` honoured), never more than ``max_wait`` at a time. A failure that
is tried again is one WARNING line; one that is given up on is ``StorageError`` and one
ERROR line (WARNING for a source that has a fallback, a registry mirror: its caller
tries the next source and says so). Both are counted by cause, as are timeouts.

Causes: ``http_<status>`` (429, 408, 500, 502, 503, 504), ``connection`` (refused,
reset, or closed before the answer or its body was whole), ``timeout`` (no byte within
the read timeout, or no connection within the connect timeout).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ketch.errors import StorageError

log = logging.getLogger("ketch.storage.requests")

T = TypeVar("T")

TIMEOUT = "timeout"
CONNECTION = "connection"


class TransientError(Exception):
    """A failure worth another attempt, with its cause (see the module docstring)."""

    def __init__(self, message: str, cause: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class FaultStats:
    """A snapshot of the faults requests met."""

    #: failures tried again, by cause
    retries: dict[str, int] = field(default_factory=dict)
    #: failures given up on (the request failed), by cause
    failures: dict[str, int] = field(default_factory=dict)
    #: attempts that timed out (retried or not)
    timeouts: int = 0

    def __add__(self, other: FaultStats) -> FaultStats:
        return FaultStats(
            _sum(self.retries, other.retries),
            _sum(self.failures, other.failures),
            self.timeouts + other.timeouts,
        )


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


class FaultCounters:
    """Thread-safe counters behind ``FaultStats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retries: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._timeouts = 0

    def count(self, cause: str, *, retried: bool) -> None:
        with self._lock:
            counts = self._retries if retried else self._failures
            counts[cause] = counts.get(cause, 0) + 1
            if cause == TIMEOUT:
                self._timeouts += 1

    def snapshot(self) -> FaultStats:
        with self._lock:
            return FaultStats(dict(self._retries), dict(self._failures), self._timeouts)


class RetryPolicy:
    """How often and how long to try again; shared by every request of one client."""

    def __init__(
        self,
        retries: int,
        backoff: float,
        max_wait: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        counters: FaultCounters | None = None,
        fallback: bool = False,
    ) -> None:
        """``fallback``: the caller has another source to try when this one gives up
        (a registry mirror), so giving up is a WARNING, not an ERROR."""
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.sleep = sleep
        self.counters = counters or FaultCounters()
        self.fallback = fallback

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """How long to wait before attempt ``attempt + 1``: exponential with jitter, or
        what ``Retry-After`` asked for, never more than ``max_wait``."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        delay = min(self.max_wait, self.backoff * (2.0**attempt))
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security

    def start(self, what: str, *, retry: bool = True) -> Attempts:
        """The attempts of one request (``retry=False``: one attempt only)."""
        return Attempts(self, what, self.retries if retry else 0)

    def run(self, what: str, attempt: Callable[[], T], *, retry: bool = True) -> T:
        """``attempt()``, tried again after each ``TransientError`` while attempts remain."""
        attempts = self.start(what, retry=retry)
        while True:
            try:
                return attempt()
            except TransientError as exc:
                attempts.failed(exc)


class Attempts:
    """The attempts of one request (or of one resumable stream), made one by one."""

    def __init__(self, policy: RetryPolicy, what: str, limit: int) -> None:
        self.policy = policy
        self.what = what
        self.limit = limit
        self.made = 0  # failed attempts so far

    def failed(self, exc: TransientError) -> None:
        """After a failed attempt: wait, then return for the next one; or, when none
        is left, raise StorageError."""
        policy = self.policy
        self.made += 1
        if self.made > self.limit:
            policy.counters.count(exc.cause, retried=False)
            message = f"{self.what}: {exc} (gave up after {self.made} attempts)"
            log.log(
                logging.WARNING if policy.fallback else logging.ERROR,
                "request failed cause=%s error=%r",
                exc.cause,
                message,
            )
            raise StorageError(message)
        policy.counters.count(exc.cause, retried=True)
        wait = policy.wait(self.made - 1, exc.retry_after)
        log.warning(
            "request failed, retrying cause=%s attempt=%d/%d wait=%.2fs error=%r",
            exc.cause,
            self.made,
            self.limit + 1,
            wait,
            f"{self.what}: {exc}",
        )
        policy.sleep(wait)
