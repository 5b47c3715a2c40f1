"""Read an OCI tar layer as a stream of checked entries (image-spec ``layer.md``).

Paths are cleaned as umoci does (leading ``/`` dropped, ``.`` and ``..`` resolved, a
``..`` at the root stays at the root), so no path can leave the root. Whiteouts
(``.wh.NAME``) and opaque markers (``.wh..wh..opq``) become entries of their own kind.
Nothing here touches the local filesystem: entries and their data are only read. The tar
format itself (headers, pax records, GNU long names, the end of the archive) is read by
``tar_header``; this module gives its entries their OCI meaning.
"""

from __future__ import annotations

import enum
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ketch.errors import BadLayerError, UnsupportedError
from ketch.oci import tar_header as th
from ketch.oci.tar_header import TarHeader, TarHeaderReader
from ketch.oci.tar_sparse import Piece

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"

Path_ = tuple[bytes, ...]
_UINT32_MAX = (1 << 32) - 1  # uid_t and gid_t


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    WHITEOUT = "whiteout"  # path names the lower entry to delete
    OPAQUE = "opaque"  # path names the directory whose lower entries to hide


_TYPES = {
    th.REGULAR: EntryKind.FILE,
    th.REGULAR_OLD: EntryKind.FILE,
    th.CONTIGUOUS: EntryKind.FILE,
    th.DIRECTORY: EntryKind.DIR,
    th.SYMLINK: EntryKind.SYMLINK,
    th.HARDLINK: EntryKind.HARDLINK,
    th.CHAR: EntryKind.CHAR,
    th.BLOCK: EntryKind.BLOCK,
    th.FIFO: EntryKind.FIFO,
}
_FILE_TYPE_BITS = {
    EntryKind.FILE: stat.S_IFREG,
    EntryKind.DIR: stat.S_IFDIR,
    EntryKind.SYMLINK: stat.S_IFLNK,
    EntryKind.CHAR: stat.S_IFCHR,
    EntryKind.BLOCK: stat.S_IFBLK,
    EntryKind.FIFO: stat.S_IFIFO,
}


@dataclass(slots=True)
class LayerEntry:
    path: Path_  # cleaned components below the root; () is the root itself
    kind: EntryKind
    mode: int = 0  # st_mode with type bits (none for hardlinks and whiteouts)
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_sec: int = 0
    mtime_nsec: int = 0
    link_target: bytes = b""  # symlink target, raw
    link_path: Path_ = ()  # hardlink target, cleaned
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return "/" + b"/".join(self.path).decode(errors="replace")


def clean_path(raw: bytes) -> Path_:
    """Clean as ``filepath.Clean("/" + raw)``: '..' above the root stays at the root."""
    parts = [part for part in raw.split(b"/") if part and part != b"."]
    if b".." not in parts:
        return tuple(parts)
    out: list[bytes] = []
    for part in parts:
        if part != b"..":
            out.append(part)
        elif out:
            out.pop()
    return tuple(out)


def _show(name: bytes) -> str:
    """A raw name as messages have always shown it (tarfile's str, repr'd)."""
    return repr(name.decode("utf-8", "surrogateescape"))


def _check_xattrs(xattrs: dict[bytes, bytes], name: bytes, layer: str) -> None:
    for key in xattrs:
        if not key or len(key) > 255 or b"\0" in key:
            shown = name.decode("utf-8", "surrogateescape")
            raise BadLayerError(f"layer {layer}: {shown}: xattr name {key!r} is not valid")


def _entry(header: TarHeader, layer: str) -> LayerEntry:
    name = header.name
    path = clean_path(name)
    base = path[-1] if path else b""
    if base.startswith(WHITEOUT_PREFIX):
        if base == OPAQUE_MARKER:
            return LayerEntry(path[:-1], EntryKind.OPAQUE)
        victim = base[len(WHITEOUT_PREFIX) :]
        if victim in (b"", b".", b"..") or victim.startswith(WHITEOUT_PREFIX):
            raise BadLayerError(
                f"layer {layer}: whiteout {_show(name)} names {victim!r}, not an entry"
            )
        return LayerEntry((*path[:-1], victim), EntryKind.WHITEOUT)
    kind = _TYPES.get(header.typeflag)
    if kind is None:
        raise UnsupportedError(
            f"layer {layer}: {_show(name)}: tar entry type {header.typeflag!r} is not supported"
        )
    if not path and kind is not EntryKind.DIR:
        raise BadLayerError(
            f"layer {layer}: entry {_show(name)} replaces the root with a {kind.value}"
        )
    if not (0 <= header.uid <= _UINT32_MAX and 0 <= header.gid <= _UINT32_MAX):
        raise BadLayerError(
            f"layer {layer}: {_show(name)}: owner {header.uid}:{header.gid}: expected ids "
            f"from 0 to {_UINT32_MAX}"
        )
    xattrs = header.xattrs
    if xattrs:
        _check_xattrs(xattrs, name, layer)
    entry = LayerEntry(
        path,
        kind,
        _FILE_TYPE_BITS.get(kind, 0) | (header.mode & 0o7777),
        header.uid,
        header.gid,
        header.size if kind is EntryKind.FILE else 0,
        header.mtime_sec,
        header.mtime_nsec,
        xattrs=xattrs,
    )
    if kind is EntryKind.SYMLINK:
        entry.link_target = header.linkname
        if not entry.link_target:
            raise BadLayerError(f"layer {layer}: symlink {_show(name)} has an empty target")
        entry.size = len(entry.link_target)
    elif kind is EntryKind.HARDLINK:
        entry.link_path = clean_path(header.linkname)
        if not entry.link_path:
            raise BadLayerError(f"layer {layer}: hardlink {_show(name)} points at the root")
    elif kind is EntryKind.CHAR or kind is EntryKind.BLOCK:
        entry.rdev = _makedev(header.devmajor, header.devminor)
    return entry


def _makedev(major: int, minor: int) -> int:
    # Linux's encoding, as os.makedev computes it, without the host's limits.
    return (
        ((major & 0xFFFFF000) << 32)
        | ((major & 0xFFF) << 8)
        | ((minor & 0xFFFFFF00) << 12)
        | (minor & 0xFF)
    )


class LayerReader:
    """Iterate the entries of one uncompressed tar stream (``tar_header`` reads the tar).

    For a FILE entry, ``read_data`` yields its bytes in blocks; it must be consumed (or
    left: the next entry skips the rest) before the next entry, as a stream can't seek
    back. Errors surface while iterating, never from the constructor.
    """

    def __init__(self, stream: IO[bytes], layer: str) -> None:
        self.layer = layer
        self._tar = TarHeaderReader(stream, layer)

    def entries(self) -> Iterator[LayerEntry]:
        next_header = self._tar.next
        layer = self.layer
        try:
            while (header := next_header()) is not None:
                yield _entry(header, layer)
        except (EOFError, OSError) as exc:  # from the stream; a KetchError passes as is
            raise BadLayerError(f"layer {layer}: broken tar: {exc}") from None

    def read_data(self, block_size: int) -> Iterator[Piece]:
        """The current FILE entry's bytes, ``block_size`` at a time (the last may be short),
        a sparse file's holes as ``ZeroRun`` markers (``tar_sparse.zero_filled`` makes
        them bytes).

        Each block is exactly ``block_size`` bytes but the last, as ``LayerStream.read``
        returns what it is asked for: with ``block_size`` equal to the chunk size, the
        fixed chunker passes blocks on without copying them.
        """
        try:
            yield from self._tar.read_data(block_size)
        except (EOFError, OSError) as exc:
            raise BadLayerError(f"layer {self.layer}: broken data: {exc}") from None
