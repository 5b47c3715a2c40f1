"""A local directory as the entries of one layer, walked depth-first with sorted names.

A sparse file (fewer blocks allocated than its size needs) is read extent by extent
(``SEEK_DATA``/``SEEK_HOLE``): its holes are handed on as ``ZeroRun`` markers, never
read, so a ``truncate -s 1T`` file costs its chunk records, not a terabyte of reads. The
chunks are the same as if the zeros were read (the chunker cuts holes as zeros).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from ketch.builder.layer_builder import DataSource
from ketch.errors import NotFoundError
from ketch.oci.tar_layer import EntryKind, LayerEntry
from ketch.oci.tar_sparse import Piece, ZeroRun

_KINDS = {
    stat.S_IFREG: EntryKind.FILE,
    stat.S_IFDIR: EntryKind.DIR,
    stat.S_IFLNK: EntryKind.SYMLINK,
    stat.S_IFCHR: EntryKind.CHAR,
    stat.S_IFBLK: EntryKind.BLOCK,
    stat.S_IFIFO: EntryKind.FIFO,
}


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in names:
        if name == "security.selinux":
            continue  # a property of the build host, not of the image
        out[name.encode("utf-8", "surrogateescape")] = os.getxattr(
            path, name, follow_symlinks=False
        )
    return out


def _reader(path: bytes, size: int, sparse: bool) -> DataSource:
    def read(block: int) -> Iterable[Piece]:
        with open(path, "rb") as f:
            fd = f.fileno()
            position = 0
            while position < size:
                start, end = _extent(fd, position, size) if sparse else (position, size)
                if start > position:
                    yield ZeroRun(start - position)
                position = start
                while position < end:
                    data = os.pread(fd, min(block, end - position), position)
                    if not data:
                        raise NotFoundError(f"{os.fsdecode(path)}: shrank while being read")
                    position += len(data)
                    yield data
            if sparse and os.fstat(fd).st_size < size:  # its end was not read: holes
                raise NotFoundError(f"{os.fsdecode(path)}: shrank while being read")

    return read


def _extent(fd: int, position: int, size: int) -> tuple[int, int]:
    """The next stretch of data at or after ``position``: (start, end), both at most
    ``size``; (position, size) where the filesystem cannot tell holes."""
    try:
        start = os.lseek(fd, position, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole from here on
            return size, size
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return position, size
        raise
    if start >= size:
        return size, size
    end = os.lseek(fd, start, os.SEEK_HOLE)
    return start, min(end, size)


def directory_entries(root: Path) -> Iterator[tuple[LayerEntry, DataSource | None]]:
    """Entries of the tree below ``root`` (root itself as the entry with the empty path)."""
    if not root.is_dir():
        raise NotFoundError(f"{root}: not a directory")
    base = os.fsencode(root)
    seen_inodes: dict[tuple[int, int], tuple[bytes, ...]] = {}

    def entries(rel: tuple[bytes, ...]) -> Iterator[tuple[LayerEntry, DataSource | None]]:
        """The entry at ``rel``: nothing for a socket, a hardlink for a name of an
        inode met before."""
        full = os.path.join(base, *rel) if rel else base
        st = os.lstat(full)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return  # sockets cannot be part of an image
        entry = LayerEntry(
            path=rel,
            kind=kind,
            mode=stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_sec=st.st_mtime_ns // 1_000_000_000,
            mtime_nsec=st.st_mtime_ns % 1_000_000_000,
            xattrs=_xattrs(full),
        )
        if kind is EntryKind.FILE and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in seen_inodes:
                yield (
                    LayerEntry(path=rel, kind=EntryKind.HARDLINK, link_path=seen_inodes[key]),
                    None,
                )
                return
            seen_inodes[key] = rel
        if kind is EntryKind.FILE:
            entry.size = st.st_size
            sparse = st.st_blocks * 512 < st.st_size
            yield entry, _reader(full, st.st_size, sparse)
        elif kind is EntryKind.SYMLINK:
            entry.link_target = os.readlink(full)
            entry.size = len(entry.link_target)
            yield entry, None
        elif kind is EntryKind.DIR:
            yield entry, None
            # Depth-first with a stack of our own: a tree may be deeper than the
            # interpreter's recursion limit.
            pending.extend((*rel, name) for name in sorted(os.listdir(full), reverse=True))
        else:
            entry.rdev = st.st_rdev
            yield entry, None

    pending: list[tuple[bytes, ...]] = [()]  # paths still to visit, the next one last
    while pending:
        yield from entries(pending.pop())
