"""Which files a workload read, in first-access order, with bytes read.

This is the file-based insight the daemon has and block-based formats lack: it feeds
prefetch lists, slimming advice and access audits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(slots=True)
class FileAccess:
    path: str
    inode: int
    first_access_ns: int
    bytes_read: int = 0
    reads: int = 0


class AccessTrace:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_inode: dict[int, FileAccess] = {}
        self._order: list[FileAccess] = []
        self._start = time.monotonic_ns()

    def record(self, inode: int, path: str, nbytes: int) -> None:
        with self._lock:
            access = self._by_inode.get(inode)
            if access is None:
                access = FileAccess(path, inode, time.monotonic_ns() - self._start)
                self._by_inode[inode] = access
                self._order.append(access)
            access.bytes_read += nbytes
            access.reads += 1

    def seen(self, inode: int) -> bool:
        with self._lock:
            return inode in self._by_inode

    def files(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {
                    "path": a.path,
                    "inode": a.inode,
                    "first_access_ms": round(a.first_access_ns / 1e6, 3),
                    "bytes_read": a.bytes_read,
                    "reads": a.reads,
                }
                for a in self._order
            ]
