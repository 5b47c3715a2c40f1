"""Read an OCI tar layer as a stream of checked entries (image-spec ``layer.md``).

Paths are cleaned as umoci does (leading ``/`` dropped, ``.`` and ``..`` resolved, a
``..`` at the root stays at the root), so no path can leave the root. Whiteouts
(``.wh.NAME``) and opaque markers (``.wh..wh..opq``) become entries of their own kind.
Nothing here touches the local filesystem: entries and their data are only read.
"""

from __future__ import annotations

import base64
import binascii
import enum
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ketch.errors import BadLayerError, KetchError, UnsupportedError

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"

Path_ = tuple[bytes, ...]


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
    tarfile.REGTYPE: EntryKind.FILE,
    tarfile.AREGTYPE: EntryKind.FILE,
    tarfile.CONTTYPE: EntryKind.FILE,
    tarfile.GNUTYPE_SPARSE: EntryKind.FILE,
    tarfile.DIRTYPE: EntryKind.DIR,
    tarfile.SYMTYPE: EntryKind.SYMLINK,
    tarfile.LNKTYPE: EntryKind.HARDLINK,
    tarfile.CHRTYPE: EntryKind.CHAR,
    tarfile.BLKTYPE: EntryKind.BLOCK,
    tarfile.FIFOTYPE: EntryKind.FIFO,
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
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


def _mtime(info: tarfile.TarInfo) -> tuple[int, int]:
    """Seconds and nanoseconds; PAX mtime is parsed from its decimal text, not a float."""
    text = info.pax_headers.get("mtime")
    if text:
        whole, _, frac = text.strip().partition(".")
        try:
            sec = int(whole)
            nsec = int((frac + "000000000")[:9]) if frac else 0
        except ValueError:
            return int(info.mtime), 0
        if whole.startswith("-") and nsec:
            sec -= 1
            nsec = 1_000_000_000 - nsec
        return sec, nsec
    return int(info.mtime), 0


def _xattrs(info: tarfile.TarInfo, layer: str) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :].encode("utf-8", "surrogateescape")
            out[name] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = key[len("LIBARCHIVE.xattr.") :].encode("utf-8", "surrogateescape")
            try:
                out[name] = base64.b64decode(value + "=" * (-len(value) % 4))
            except binascii.Error:
                raise BadLayerError(
                    f"layer {layer}: {info.name}: xattr {key} is not base64"
                ) from None
    for name in out:
        if not name or len(name) > 255 or b"\0" in name:
            raise BadLayerError(f"layer {layer}: {info.name}: xattr name {name!r} is not valid")
    return out


def _entry(info: tarfile.TarInfo, layer: str) -> LayerEntry | None:
    raw_name = info.name.encode("utf-8", "surrogateescape")
    path = clean_path(raw_name)
    base = path[-1] if path else b""
    if base == OPAQUE_MARKER:
        return LayerEntry(path[:-1], EntryKind.OPAQUE)
    if base.startswith(WHITEOUT_PREFIX):
        victim = base[len(WHITEOUT_PREFIX) :]
        if victim in (b"", b".", b"..") or victim.startswith(WHITEOUT_PREFIX):
            raise BadLayerError(
                f"layer {layer}: whiteout {info.name!r} names {victim!r}, not an entry"
            )
        return LayerEntry((*path[:-1], victim), EntryKind.WHITEOUT)
    kind = _TYPES.get(info.type)
    if kind is None:
        if info.type in (
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
        ):
            return None
        raise UnsupportedError(
            f"layer {layer}: {info.name!r}: tar entry type {info.type!r} is not supported"
        )
    if not path and kind is not EntryKind.DIR:
        raise BadLayerError(
            f"layer {layer}: entry {info.name!r} replaces the root with a {kind.value}"
        )
    if info.size < 0:
        raise BadLayerError(f"layer {layer}: {info.name!r}: size {info.size} is negative")
    sec, nsec = _mtime(info)
    entry = LayerEntry(
        path=path,
        kind=kind,
        mode=_FILE_TYPE_BITS.get(kind, 0) | (info.mode & 0o7777),
        uid=info.uid,
        gid=info.gid,
        size=info.size if kind is EntryKind.FILE else 0,
        mtime_sec=sec,
        mtime_nsec=nsec,
        xattrs=_xattrs(info, layer),
    )
    if kind is EntryKind.SYMLINK:
        entry.link_target = info.linkname.encode("utf-8", "surrogateescape")
        if not entry.link_target or b"\0" in entry.link_target:
            raise BadLayerError(f"layer {layer}: symlink {info.name!r} has an empty target")
        entry.size = len(entry.link_target)
    elif kind is EntryKind.HARDLINK:
        target = info.linkname.encode("utf-8", "surrogateescape")
        entry.link_path = clean_path(target)
        if not entry.link_path:
            raise BadLayerError(f"layer {layer}: hardlink {info.name!r} points at the root")
    elif kind in (EntryKind.CHAR, EntryKind.BLOCK):
        entry.rdev = _makedev(info.devmajor, info.devminor)
    return entry


# tarfile's HeaderError leaves; typeshed does not declare them.
_EOF_HEADER: type[tarfile.HeaderError] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_INVALID_HEADER: type[tarfile.HeaderError] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_TRUNCATED_HEADER: type[tarfile.HeaderError] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]


class _StrictTarInfo(tarfile.TarInfo):
    """A header block that does not parse is a broken archive, never its end.

    ``TarFile.next`` takes an invalid or truncated header after the first for the end of
    the archive, so a size field that lies by a block or more, or a stream cut inside a
    header, would silently drop the rest of the layer. Go's archive/tar (umoci) reports
    both, and a zero block followed by a non-zero one; so do we, as ``ReadError``.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _StrictTarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except _EOF_HEADER:
            after = tarfile_.fileobj.read(tarfile.BLOCKSIZE)
            if after.strip(b"\0"):
                raise tarfile.ReadError(
                    f"zero block at offset {tarfile_.offset}: expected a second zero block "
                    "(end of archive), found data"
                ) from None
            raise
        except (_INVALID_HEADER, _TRUNCATED_HEADER) as exc:
            if tarfile_.offset == 0:
                raise  # tarfile reports a bad first header itself
            raise tarfile.ReadError(
                f"{exc} at offset {tarfile_.offset}: expected a header or the end of the archive"
            ) from None


def _makedev(major: int, minor: int) -> int:
    # Linux's encoding, as os.makedev computes it, without the host's limits.
    return (
        ((major & 0xFFFFF000) << 32)
        | ((major & 0xFFF) << 8)
        | ((minor & 0xFFFFFF00) << 12)
        | (minor & 0xFF)
    )


class LayerReader:
    """Iterate the entries of one uncompressed tar stream.

    For a FILE entry, ``read_data`` yields its bytes in blocks; it must be consumed (or
    skipped) before the next entry, as a stream can't seek back.
    """

    def __init__(self, stream: IO[bytes], layer: str) -> None:
        self.layer = layer
        self._current: tarfile.TarInfo | None = None
        self._tar: tarfile.TarFile | None
        self._stream = stream
        try:
            # "r:" (not the stream mode "r|"): tarfile then reads headers and data straight
            # from our stream, which moves forward only; "r|" re-buffers every read.
            self._tar = tarfile.open(  # noqa: SIM115 - lives as long as the reader
                fileobj=stream, mode="r:", tarinfo=_StrictTarInfo
            )
        except tarfile.ReadError as exc:
            if "empty file" in str(exc):
                self._tar = None  # an empty layer is valid and has no entries
            else:
                raise BadLayerError(f"layer {layer}: not a tar archive: {exc}") from None
        except (EOFError, OSError) as exc:
            raise BadLayerError(f"layer {layer}: not a tar archive: {exc}") from None

    def entries(self) -> Iterator[LayerEntry]:
        if self._tar is None:
            return
        try:
            while (info := self._tar.next()) is not None:
                # tarfile keeps every member it has read; a stream needs none of them.
                self._tar.members.clear()  # type: ignore[attr-defined]
                self._current = info
                entry = _entry(info, self.layer)
                if entry is not None:
                    yield entry
        except KetchError:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as exc:
            where = f" after {self._current.name!r}" if self._current is not None else ""
            raise BadLayerError(f"layer {self.layer}: broken tar{where}: {exc}") from None

    def read_data(self, block_size: int) -> Iterator[bytes]:
        """The current FILE entry's bytes, ``block_size`` at a time (the last may be short)."""
        info = self._current
        if self._tar is None or info is None:
            return
        try:
            if info.sparse is None:
                # Plain data: read it straight from the stream, no extra buffering.
                self._stream.seek(info.offset_data)
                data: IO[bytes] | None = self._stream
            else:
                data = self._tar.extractfile(info)
            if data is None:
                return
            remaining = info.size
            while remaining > 0:
                block = data.read(min(block_size, remaining))
                if not block:
                    raise BadLayerError(
                        f"layer {self.layer}: {info.name!r}: data ends {remaining} bytes early"
                    )
                remaining -= len(block)
                yield block
        except KetchError:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise BadLayerError(f"layer {self.layer}: {info.name!r}: broken data: {exc}") from None
