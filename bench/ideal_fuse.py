"""The fastest sequential read a pyfuse3 daemon can give here, for ``mount_read``'s file.

A reference, not a filesystem: it serves one file, to one sequential reader, from chunks
listed in order, and it does only what any such daemon must do. Every choice goes the
fast way, whatever it would cost a real daemon:

- a **loader process** gets the chunks (own interpreter, so no lock shared with the FUSE
  loop), with four threads, straight into shared memory, and checks each against its
  blake3 digest. A chunk is either a chunk cache entry (the warm case: read with
  ``O_DIRECT``, no page cache copy) or a range of an OCI layout blob (the empty-cache
  case: read, zstd-decompressed, checked, and then written to the chunk cache as Ketch
  must);
- the **FUSE daemon** answers each read with a view of that shared memory (no copy of its
  own; libfuse copies it into the kernel), and asks the loader to stay 32 chunks ahead;
- no cache index, no single-flight, no metrics, no access trace, one inode.

``mount_read`` times it like the Ketch mount; what it measures bounds any pyfuse3 design on
this machine. Run as ``python -m bench.ideal_fuse serve MOUNTPOINT LIST`` (LIST: one line
per chunk, in file order: ``PATH HEXDIGEST SIZE`` for a cache entry, or ``PATH HEXDIGEST
SIZE BLOB OFFSET LENGTH`` for a zstd chunk at OFFSET in BLOB, to be stored at PATH;
``ready`` is printed once mounted, and ``fusermount3 -u`` ends it); ``load`` is the
loader's own entry point.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import stat
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import blake3
import pyfuse3
import trio
import zstandard

CHUNK = 1 << 20  # each entry is at most this (mount_read's image has 1 MiB chunks)
SLOTS = 64  # shared-memory chunk slots
AHEAD = 32  # chunks the loader reads ahead of the reader
BEHIND = 4  # chunks kept mapped behind the one being read (the kernel may still ask)
_LOADER_THREADS = 4
_ALIGN = 4096
_DONE = struct.Struct("III")  # chunk index, slot, length; slot FAILED: verification failed
_WORD = struct.Struct("I")  # loader requests: a freed slot, or WANT | chunk count wanted
_WANT = 0x8000_0000
_FAILED = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # the chunk cache entry
    digest: bytes
    size: int
    blob: str = ""  # the empty-cache case: where the compressed chunk is
    offset: int = 0
    length: int = 0


def read_list(path: Path) -> list[Entry]:
    entries = []
    for line in path.read_text().splitlines():
        fields = line.split(" ")
        name, digest, size = fields[0], bytes.fromhex(fields[1]), int(fields[2])
        if len(fields) == 6:
            entries.append(Entry(name, digest, size, fields[3], int(fields[4]), int(fields[5])))
        else:
            entries.append(Entry(name, digest, size))
    return entries


def _from_cache(entry: Entry, view: memoryview) -> int:
    fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.preadv(fd, [view[: -(-entry.size // _ALIGN) * _ALIGN]], 0)
    finally:
        os.close(fd)


_local = threading.local()


def _from_blob(entry: Entry, view: memoryview) -> int:
    blobs: dict[str, int] | None = getattr(_local, "blobs", None)
    if blobs is None:
        blobs = _local.blobs = {}
        _local.zstd = zstandard.ZstdDecompressor()
    fd = blobs.get(entry.blob)
    if fd is None:
        fd = blobs[entry.blob] = os.open(entry.blob, os.O_RDONLY)
    packed = os.pread(fd, entry.length, entry.offset)
    data = _local.zstd.decompress(packed, max_output_size=entry.size)
    view[: len(data)] = data
    return len(data)


def _store(entry: Entry, view: memoryview) -> None:
    """The chunk cache entry, written whole then renamed into place, as Ketch stores it."""
    directory = os.path.dirname(entry.path)
    os.makedirs(directory, exist_ok=True)
    temporary = f"{directory}/.tmp-ideal-{threading.get_ident()}"
    with open(temporary, "wb") as f:
        f.write(view)
    os.replace(temporary, entry.path)


# -- the loader process ---------------------------------------------------------------------


def load(memfd: int, requests: int, done: int, listing: Path) -> None:
    entries = read_list(listing)
    shared = memoryview(mmap.mmap(memfd, SLOTS * CHUNK))
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(SLOTS):
        free.put(slot)
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    write_lock = threading.Lock()

    def listen() -> None:
        queued = 0
        while message := os.read(requests, 4096):
            for (word,) in _WORD.iter_unpack(message):
                if word & _WANT:
                    while queued < min(word & ~_WANT, len(entries)):
                        work.put(queued)
                        queued += 1
                else:
                    free.put(word)
        os._exit(0)  # the daemon has gone

    def worker() -> None:
        while True:
            index = work.get()
            entry = entries[index]
            slot = free.get()
            view = shared[slot * CHUNK : slot * CHUNK + CHUNK]
            length = _from_blob(entry, view) if entry.blob else _from_cache(entry, view)
            good = length == entry.size and blake3.blake3(view[:length]).digest() == entry.digest
            with write_lock:
                os.write(done, _DONE.pack(index, slot if good else _FAILED, length))
            if good and entry.blob:
                _store(entry, view[:length])

    for _ in range(_LOADER_THREADS):
        threading.Thread(target=worker, daemon=True).start()
    os.write(done, _DONE.pack(_FAILED, _FAILED, 0))  # started: the daemon may mount
    listen()


# -- the FUSE daemon ---------------------------------------------------------------------------


class _Chunks:
    """Verified chunks as views of the shared memory, and the requests to the loader."""

    def __init__(self, entries: list[Entry], memfd: int, requests: int) -> None:
        self.entries = entries
        self.shared = memoryview(mmap.mmap(memfd, SLOTS * CHUNK))
        self.requests = requests
        self.views: dict[int, memoryview] = {}
        self.ready = [threading.Event() for _ in entries]
        self.failed: set[int] = set()
        self.wanted = 0
        self.released = 0  # chunks before this one have given their slot back
        self._lock = threading.Lock()
        self._slots: dict[int, int] = {}

    def want(self, index: int) -> None:
        """The reader is at chunk ``index``: keep the loader ahead, free what is behind."""
        if index + AHEAD > self.wanted:
            self.wanted = min(index + AHEAD, len(self.entries))
            os.write(self.requests, _WORD.pack(_WANT | self.wanted))
        with self._lock:
            while self.released < index - BEHIND:
                old = self.released
                self.released += 1
                self.views.pop(old, None)
                if old in self._slots:
                    os.write(self.requests, _WORD.pack(self._slots.pop(old)))

    def receive(self, done: int, started: threading.Event) -> None:
        pending = b""
        while message := os.read(done, 4096):
            pending += message
            whole = len(pending) - len(pending) % _DONE.size
            for index, slot, length in _DONE.iter_unpack(pending[:whole]):
                if index == _FAILED:  # the loader's hello
                    started.set()
                    continue
                if slot == _FAILED:
                    self.failed.add(index)
                else:
                    self.views[index] = self.shared[slot * CHUNK : slot * CHUNK + length]
                    with self._lock:
                        self._slots[index] = slot
                self.ready[index].set()
            pending = pending[whole:]


class _Operations(pyfuse3.Operations):
    def __init__(self, chunks: _Chunks) -> None:
        super().__init__()
        self.chunks = chunks
        self.size = sum(entry.size for entry in chunks.entries)

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = 300
        attr.st_nlink = 1
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
        else:
            attr.st_mode = stat.S_IFREG | 0o644
            attr.st_size = self.size
        return attr

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if name != b"data.bin":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(pyfuse3.ROOT_INODE + 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        index, start = divmod(off, CHUNK)
        chunks = self.chunks
        if index >= len(chunks.entries):
            return b""
        chunks.want(index)
        if not chunks.ready[index].is_set():
            await trio.to_thread.run_sync(chunks.ready[index].wait)
        if index in chunks.failed:
            raise pyfuse3.FUSEError(errno.EIO)
        view = chunks.views[index]
        return view[start : start + size]  # type: ignore[return-value]  # pyfuse3 takes any buffer


def serve(mountpoint: Path, listing: Path) -> None:
    entries = read_list(listing)
    memfd = os.memfd_create("ideal-fuse-chunks")
    os.ftruncate(memfd, SLOTS * CHUNK)
    to_loader_r, to_loader_w = os.pipe()
    from_loader_r, from_loader_w = os.pipe()
    loader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.ideal_fuse",
            "load",
            str(memfd),
            str(to_loader_r),
            str(from_loader_w),
            str(listing),
        ],
        pass_fds=(memfd, to_loader_r, from_loader_w),
    )
    os.close(to_loader_r)
    os.close(from_loader_w)
    chunks = _Chunks(entries, memfd, to_loader_w)
    started = threading.Event()
    threading.Thread(target=chunks.receive, args=(from_loader_r, started), daemon=True).start()
    if not started.wait(timeout=30):
        raise SystemExit("ideal_fuse: the loader did not start")
    options = set(pyfuse3.default_options) | {"fsname=ideal", "ro"}
    pyfuse3.init(_Operations(chunks), str(mountpoint), options)
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
        os.close(to_loader_w)
        loader.wait(timeout=10)


def main(argv: list[str]) -> None:
    if argv[0] == "serve":
        serve(Path(argv[1]), Path(argv[2]))
    else:
        load(int(argv[1]), int(argv[2]), int(argv[3]), Path(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
