"""Which files a workload read, in first-access order, with bytes read.

This is the file-based insight the daemon has and block-based formats lack: it feeds
prefetch lists, slimming advice and access audits.

A read records its inode number and nothing else: a dict lookup, whatever the size of
the file's directory. Paths are resolved only when the trace is asked for (``files``,
i.e. ``/api/v1/files`` and ``ketch status``), all the new ones together by one call of
``resolve`` (``ImageFS.paths_of``: one scan of each directory involved), and kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

#: inode numbers -> their paths (an inode left out has none)
PathResolver = Callable[[Iterable[int]], Mapping[int, str]]


@dataclass(slots=True)
class FileAccess:
    inode: int
    first_access_ns: int
    bytes_read: int = 0
    reads: int = 0


class AccessTrace:
    def __init__(self, resolve: PathResolver) -> None:
        self._resolve = resolve
        self._lock = threading.Lock()
        self._by_inode: dict[int, FileAccess] = {}
        self._order: list[FileAccess] = []
        self._start = time.monotonic_ns()
        self._paths: dict[int, str | None] = {}
        self._paths_lock = threading.Lock()  # one resolution at a time; readers never wait

    def record(self, inode: int, nbytes: int) -> None:
        with self._lock:
            access = self._by_inode.get(inode)
            if access is None:
                access = FileAccess(inode, time.monotonic_ns() - self._start)
                self._by_inode[inode] = access
                self._order.append(access)
            access.bytes_read += nbytes
            access.reads += 1

    def files(self) -> list[dict[str, object]]:
        """The files read so far, in first-access order; ``path`` is None for an inode
        no directory of the image names (a damaged bootstrap)."""
        with self._lock:
            rows = [(a.inode, a.first_access_ns, a.bytes_read, a.reads) for a in self._order]
        with self._paths_lock:
            new = [inode for inode, *_ in rows if inode not in self._paths]
            if new:
                found = self._resolve(new)
                for inode in new:
                    self._paths[inode] = found.get(inode)
            paths = self._paths
            return [
                {
                    "path": paths[inode],
                    "inode": inode,
                    "first_access_ms": round(first_ns / 1e6, 3),
                    "bytes_read": nbytes,
                    "reads": reads,
                }
                for inode, first_ns, nbytes, reads in rows
            ]
