"""The FUSE adapter: pyfuse3 operations as a thin layer over ``ImageFS``.

Metadata comes from the mmapped bootstrap and is answered on the event loop (a few
record reads). File reads may fetch, decompress and verify chunks, so they run in worker
threads and never block the loop, unless every chunk they need is already in the reader's
memory (verified when it got there, typically by sequential prefetch): those are
answered on the loop. The image is immutable: entries and attributes are cached by the
kernel for a day, and the page cache is kept across opens. ``statfs`` is answered
(overlayfs refuses a lower layer without it). Any exception of a handler becomes EIO with
one ERROR line: pyfuse3 would end the daemon on it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from itertools import count
from typing import Any, TypeVar

import pyfuse3
import trio

from ketch.daemon.access_trace import AccessTrace
from ketch.daemon.metrics import Metrics
from ketch.errors import IntegrityError, KetchError
from ketch.fs.image_fs import Attr, ImageFS

log = logging.getLogger("ketch.daemon")

CACHE_TIMEOUT = 86400.0  # seconds: nothing in an image ever changes
_BLOCK_SIZE = 4096

_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def _guarded(handler: _Handler) -> _Handler:
    """EIO and one ERROR line for any exception a metadata handler raises that is not
    already a FUSE answer: pyfuse3 ends its main loop, and so the daemon, on anything else
    (a damaged bootstrap, or a bug), and one bad inode must not take the mount down."""

    @wraps(handler)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except KetchError as exc:
            log.error("%s failed error=%r", handler.__name__, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as exc:
            log.error("%s failed (internal error) error=%r", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded  # type: ignore[return-value]


class KetchOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: ImageFS, metrics: Metrics, trace: AccessTrace) -> None:
        super().__init__()
        self.fs = fs
        self.metrics = metrics
        self.trace = trace
        self._dirs: dict[int, int] = {}  # open directory handle -> inode
        self._listings: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self._handles = count(1)
        self._error_paths: dict[int, str | None] = {}  # inodes whose reads failed
        # statfs reports the stored size: the sum of the blob records, no inode walk.
        self._stored_bytes = sum(blob.size for blob in fs.bootstrap.blobs())

    # -- attributes -------------------------------------------------------------------

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = pyfuse3.InodeT(attr.ino)
        entry.generation = 0
        entry.entry_timeout = CACHE_TIMEOUT
        entry.attr_timeout = CACHE_TIMEOUT
        entry.st_mode = pyfuse3.ModeT(attr.mode)
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = attr.rdev
        entry.st_size = attr.size
        entry.st_blksize = _BLOCK_SIZE
        entry.st_blocks = attr.blocks
        entry.st_atime_ns = attr.mtime_ns
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.mtime_ns
        return entry

    def _attr(self, inode: int) -> Attr:
        try:
            return self.fs.getattr(inode)
        except KetchError as exc:
            log.error("getattr failed inode=%d error=%r", inode, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._attr(inode))

    @_guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._entry(self._attr(parent_inode))
        if name == b"..":
            return self._entry(self._attr(self.fs.parent(parent_inode)))
        try:
            inode = self.fs.lookup(parent_inode, name)
        except KetchError as exc:
            log.error("lookup failed inode=%d error=%r", parent_inode, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if inode is None:
            # A negative entry (inode 0) that the kernel keeps as long as a positive one:
            # the image never changes, and programs probe many paths that do not exist
            # (the dynamic loader's search path, Python's imports), each a round trip.
            missing = pyfuse3.EntryAttributes()
            missing.st_ino = pyfuse3.InodeT(0)
            missing.entry_timeout = CACHE_TIMEOUT
            return missing
        return self._entry(self._attr(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None  # inodes are records of the bootstrap: nothing to free

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if not stat.S_ISLNK(self._attr(inode).mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self.fs.readlink(inode)

    # -- directories ------------------------------------------------------------------

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        if not stat.S_ISDIR(self._attr(inode).mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        # A directory's listing, attributes included, is built once: the image never
        # changes, so offsets stay stable and a second walk costs no bootstrap reads.
        if inode not in self._listings:
            members = [(b".", inode), (b"..", self.fs.parent(inode)), *self.fs.readdir(inode)]
            self._listings[inode] = [
                (name, self._entry(self._attr(child))) for name, child in members
            ]
        handle = next(self._handles)
        self._dirs[handle] = inode
        return pyfuse3.FileHandleT(handle)

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._listings.get(self._dirs.get(fh, -1), [])
        for position in range(start_id, len(entries)):
            name, attr = entries[position]
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(name), attr, position + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ------------------------------------------------------------------------

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not stat.S_ISREG(self._attr(inode).mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)

    async def _describe(self, inode: int) -> str:
        """The inode and its path, for an error line: the path is found in a worker
        thread (a scan of each directory above it), never on the loop, and once per
        inode (a bad chunk fails every read of its file)."""
        if inode not in self._error_paths:
            try:
                path = await trio.to_thread.run_sync(self.fs.path_of, inode)
            except KetchError:
                path = None
            self._error_paths[inode] = path
        return f"inode={inode} path={self._error_paths[inode]}"

    def _read(self, inode: int, offset: int, size: int) -> bytes:
        return self.fs.read(inode, offset, size)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        started = time.monotonic()
        try:
            # Chunks already in memory (prefetched, or just read) are served on the loop:
            # no I/O, no hashing, and no hop to a worker thread, which costs more than
            # the copy. Everything else is fetched, decompressed and verified in a thread.
            data = self.fs.read_from_memory(fh, off, size)
            if data is None:
                data = await trio.to_thread.run_sync(self._read, fh, off, size)
        except IntegrityError as exc:
            # Counted in ketch_chunk_verify_failures_total by the chunk reader, per chunk.
            self.metrics.add(self.metrics.read_errors)
            where = await self._describe(fh)
            log.error("chunk verification failed %s error=%r", where, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except KetchError as exc:
            self.metrics.add(self.metrics.read_errors)
            log.error("read failed %s error=%r", await self._describe(fh), exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as exc:
            # A bug in the read path: EIO for this read, never the end of the daemon
            # (pyfuse3 ends its main loop on any exception that is not a FUSEError).
            self.metrics.add(self.metrics.read_errors)
            log.error("read failed (internal error) inode=%d offset=%d error=%r", fh, off, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        self.metrics.observe_read(time.monotonic() - started)
        self.metrics.add(self.metrics.read_bytes, len(data))
        # The inode only: its path is resolved when the trace is asked for, so a read's
        # cost does not grow with the size of the file's directory.
        self.trace.record(fh, len(data))
        return data

    async def release(self, fh: int) -> None:
        return None

    # -- xattrs and the filesystem ----------------------------------------------------

    @_guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self.fs.xattrs(inode).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(self.fs.xattrs(inode))

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # overlayfs refuses a lower layer that cannot answer statfs.
        data = pyfuse3.StatvfsData()
        data.f_bsize = _BLOCK_SIZE
        data.f_frsize = _BLOCK_SIZE
        data.f_blocks = self._stored_bytes // _BLOCK_SIZE + 1
        data.f_bfree = 0
        data.f_bavail = 0
        data.f_files = self.fs.bootstrap.inode_count
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = 255
        return data
