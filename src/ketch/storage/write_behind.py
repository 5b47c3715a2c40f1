"""Chunk cache fills on a background thread of low priority, bounded in bytes.

A reader that has just fetched, decompressed and verified a chunk has its bytes; writing
them into the chunk cache can wait. So the daemon hands them here and returns them to
the reader at once; one thread writes them, at a lower CPU priority (``nice``) than the
threads serving reads, so that on a busy machine the fill yields to the reads it exists
for.

Bounded in bytes (``limit``), not in chunks: chunks range from 4 KiB to 16 MiB, so a
count says little about memory. An ``offer`` that would pass the limit is refused, and
the caller writes the chunk itself, which slows new fetches down to the pace of the disk
rather than letting memory grow. Writes happen in the order offered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("ketch.storage")

#: added to the fill thread's nice value (lower priority than the readers)
DEFAULT_NICE = 10


class WriteBehind:
    """``store(digest, data)`` for offered chunks, on a thread of its own."""

    def __init__(
        self,
        store: Callable[[bytes, bytes], object],
        limit: int,
        *,
        nice: int = DEFAULT_NICE,
        name: str = "cache-fill",
    ) -> None:
        self._store = store
        self.limit = limit
        self._nice = nice
        self._cond = threading.Condition()
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._pending = 0  # bytes offered and not yet stored (queued or being written)
        threading.Thread(target=self._run, name=name, daemon=True).start()

    @property
    def pending_bytes(self) -> int:
        with self._cond:
            return self._pending

    def offer(self, digest: bytes, data: bytes) -> bool:
        """Queue ``data`` for the cache; False (nothing queued) if it does not fit."""
        size = len(data)
        with self._cond:
            if self._pending + size > self.limit and self._pending:
                return False
            self._pending += size
            self._queue.append((digest, data))
            self._cond.notify()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until everything offered so far is stored; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        # Linux: a thread is a task of its own, and its nice value is its own.
        with contextlib.suppress(OSError):
            os.setpriority(
                os.PRIO_PROCESS,
                threading.get_native_id(),
                min(19, os.getpriority(os.PRIO_PROCESS, 0) + self._nice),
            )
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                digest, data = self._queue.popleft()
            try:
                self._store(digest, data)
            except Exception as exc:  # a failed fill must not end the thread
                log.warning("cache fill failed chunk=%s error=%r", digest.hex(), exc)
            finally:
                with self._cond:
                    self._pending -= len(data)
                    self._cond.notify_all()
