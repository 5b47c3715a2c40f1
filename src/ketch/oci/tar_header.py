"""Tar archives as a stream of headers: POSIX ustar and pax, GNU (``L``/``K``) and V7.

Written from POSIX.1-2017 ``pax`` (ustar interchange format, pax extended headers) and
the GNU tar manual's "Basic Tar Format", with Go's ``archive/tar`` (which umoci uses) as
the tie-breaker where the specifications leave room. ``TarHeaderReader`` reads 512-byte
header blocks straight from a forward-only stream and yields one ``TarHeader`` per real
entry, with its pax records, GNU long names and ustar prefix already applied; the
entry's data is then read with ``read_data`` or skipped by the next ``next``.

A header block is decoded with one ``struct.Struct`` (``HEADER``). Numbers are octal
text (leading and trailing spaces and NULs ignored) or GNU base-256 (high bit of the
first byte set: a big-endian two's complement number in the rest of the field). The
checksum is the unsigned sum of the block with its checksum field read as spaces; the
historic signed sum is accepted too.

Pax records (``LEN KEY=VALUE\\n``) of an ``x`` header apply to the next entry, those of a
``g`` header to every following one; an empty value keeps the header's own field. Keys
used: ``path``, ``linkpath``, ``size``, ``uid``, ``gid``, ``mtime`` (decimal seconds with
a fraction, kept exact to the nanosecond), ``SCHILY.xattr.NAME`` (raw value) and
``LIBARCHIVE.xattr.NAME`` (base64 value), and ``GNU.sparse.*``: GNU sparse files in pax
form (``tar_sparse``), whose data reads with its holes as runs of zeros, as Go reads
it. The old GNU ``S`` sparse type is refused, as umoci refuses it. A GNU long name or
link name wins over pax, as in Go; a sparse file's ``GNU.sparse.name`` wins over both.

Every way an archive can be broken is a ``BadLayerError`` naming the layer and the
offset: a block failing its checksum, a zero block followed by data, a stream ending
inside a header or inside data, a negative size, malformed pax records, a long name or a
pax header over 1 MiB (so memory stays bounded). A stream that ends exactly at a header
boundary ends the archive, as it does for Go and GNU tar; an empty stream is an empty
archive.

Performance notes: this runs on the convert's main thread, once per entry. The block's
byte sum is taken with ``zlib.adler32`` on each half of the block: its low 16 bits are
one plus the byte sum modulo 65521, and a half sums to at most 256 * 255 = 65280, so
the result is exact. The numeric fields of the usual header are all octal text, which
one ``bytes.translate`` checks before ``int(..., 8)`` reads them. Skipped data is read,
not seeked over: ``LayerStream.seek`` reads anyway, and only a read tells a stream that
ends early.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO
from zlib import adler32

from ketch.errors import BadLayerError, UnsupportedError
from ketch.oci import tar_sparse

BLOCK_SIZE = 512
ZERO_BLOCK = bytes(BLOCK_SIZE)
MAX_META_SIZE = 1 << 20  # a pax header's records, a GNU long name or link name
_MAX_GLOBAL_PAX = 1 << 20  # all global pax records kept at once
_SKIP_PIECE = 1 << 20  # skipped data is read (and dropped) this much at a time
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# Type flags (POSIX ustar; pax x and g; GNU L, K and S).
REGULAR = b"0"
REGULAR_OLD = b"\0"  # V7: a directory when the name ends in "/"
HARDLINK = b"1"
SYMLINK = b"2"
CHAR = b"3"
BLOCK = b"4"
DIRECTORY = b"5"
FIFO = b"6"
CONTIGUOUS = b"7"  # a regular file
PAX_LOCAL = b"x"  # pax records for the next entry
PAX_GLOBAL = b"g"  # pax records for every following entry
GNU_LONGNAME = b"L"  # the next entry's name, as data
GNU_LONGLINK = b"K"  # the next entry's link name, as data
GNU_SPARSE = b"S"

# Entries that have no data, whatever their size field says (POSIX; Go agrees).
_HEADER_ONLY = frozenset({HARDLINK, SYMLINK, CHAR, BLOCK, DIRECTORY, FIFO})
_DEVICES = frozenset({CHAR, BLOCK})
_REGULAR_TYPES = frozenset({REGULAR, REGULAR_OLD, CONTIGUOUS})
_META = frozenset({PAX_LOCAL, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK})

HEADER = struct.Struct(
    "100s"  # name: NUL-terminated unless it fills the field
    "8s"  # mode: octal
    "8s"  # uid: octal or base-256
    "8s"  # gid: octal or base-256
    "12s"  # size: octal or base-256, bytes of data after the header
    "12s"  # mtime: octal or base-256, seconds since the epoch
    "8s"  # chksum: octal, the sum of the block with this field as spaces
    "c"  # typeflag
    "100s"  # linkname: NUL-terminated unless it fills the field
    "6s"  # magic: b"ustar\0" (POSIX), b"ustar " (GNU, with version b" \0"), else V7
    "2s"  # version
    "32s"  # uname: not used, OCI layers own files by number
    "32s"  # gname: not used
    "8s"  # devmajor: octal or base-256
    "8s"  # devminor: octal or base-256
    "155s"  # prefix: POSIX only, joined to the name with "/"
    "12x"  # padding to 512
)
_USTAR_MAGIC = b"ustar\0"
_STAR_TRAILER = b"tar\0"  # star's ustar variant: the prefix field is 131 bytes
_STAR_PREFIX = 131
_NUMERIC = slice(100, 156)  # mode, uid, gid, size, mtime, chksum: one contiguous run
_DEVICE_NUMBERS = slice(329, 345)  # devmajor, devminor
_OCTAL_TEXT = b"01234567 \0"
_HIGH_BYTES = bytes(range(128, 256))
_CHKSUM_AS_SPACES = 8 * 0x20

_PAX_TIME = re.compile(rb"([+-]?)([0-9]{1,19})(?:\.([0-9]*))?")
_SCHILY_XATTR = b"SCHILY.xattr."
_LIBARCHIVE_XATTR = b"LIBARCHIVE.xattr."
_PAX_STRINGS = (b"path", b"linkpath", b"uname", b"gname")  # values without NUL


class HeaderError(ValueError):
    """A field that does not decode; the reader adds the layer and the offset."""


@dataclass(slots=True)
class TarHeader:
    """One real entry, with pax records, GNU long names and the ustar prefix applied."""

    typeflag: bytes  # one byte; b"\0" with a name ending in "/" is already DIRECTORY
    name: bytes  # raw, as the archive has it
    linkname: bytes  # raw
    mode: int
    uid: int
    gid: int
    size: int  # bytes of data that follow (0 for header-only types)
    mtime_sec: int
    mtime_nsec: int  # 0..999_999_999, from a pax mtime only
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes]  # from SCHILY.xattr.* and LIBARCHIVE.xattr.* records


# -- fields ---------------------------------------------------------------------------------


def parse_number(field: bytes) -> int:
    """A numeric field: GNU base-256 if the high bit of its first byte is set, else octal.

    Base-256 is big-endian two's complement over the field with that marker bit taken
    out (bit 6 of the first byte is the sign), and must fit in 64 bits. Octal text may
    be padded with spaces and NULs on either side and ends at a NUL.
    """
    if field and field[0] & 0x80:
        bits = 8 * len(field) - 1
        value = int.from_bytes(field, "big") & ((1 << bits) - 1)
        if field[0] & 0x40:
            value -= 1 << bits
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise HeaderError(f"base-256 number {field.hex()} does not fit in 64 bits")
        return value
    return parse_octal(field)


def parse_octal(field: bytes) -> int:
    text = field.strip(b" \0")
    nul = text.find(b"\0")
    if nul >= 0:
        text = text[:nul]
    if not text:
        return 0
    if text.translate(None, b"01234567"):
        raise HeaderError(f"{bytes(field)!r} is not an octal number")
    return int(text, 8)


def block_sum(block: bytes) -> int:
    """The unsigned byte sum of a 512-byte block (see the module notes)."""
    view = memoryview(block)
    return (adler32(view[:256]) & 0xFFFF) + (adler32(view[256:]) & 0xFFFF) - 2


def checksum_matches(block: bytes, field: bytes, expected: int) -> bool:
    """``expected`` is the unsigned sum of ``block`` with ``field`` (the checksum) as spaces,
    or the historic signed sum (bytes over 127 counted negative)."""
    unsigned = block_sum(block) - sum(field) + _CHKSUM_AS_SPACES
    if unsigned == expected:
        return True
    high = len(block) - len(block.translate(None, _HIGH_BYTES))
    high -= len(field) - len(field.translate(None, _HIGH_BYTES))
    return unsigned - 256 * high == expected


def cstring(field: bytes) -> bytes:
    nul = field.find(b"\0")
    return field if nul < 0 else field[:nul]


def parse_pax_records(data: bytes) -> dict[bytes, bytes]:
    """``LEN KEY=VALUE\\n`` records, LEN counting the whole record; the last of a key wins,
    but for GNU sparse 0.0's repeated offset and length keys, which are joined in order
    into one ``GNU.sparse.map`` value (as Go does)."""
    records: dict[bytes, bytes] = {}
    sparse_pairs: list[bytes] = []  # GNU sparse 0.0 repeats two keys: kept in order
    pos, end = 0, len(data)
    while pos < end:
        space = data.find(b" ", pos, min(end, pos + 8))
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise HeaderError(
                f"pax record at {pos}: expected a decimal length, found {data[pos : pos + 8]!r}"
            )
        stop = pos + int(digits)
        if stop > end or stop <= space + 2 or data[stop - 1] != 0x0A:
            raise HeaderError(
                f"pax record at {pos}: length {int(digits)} does not end at a newline "
                f"within the {end} bytes of records"
            )
        key, equals, value = data[space + 1 : stop - 1].partition(b"=")
        if not equals or not key or b"\0" in key:
            raise HeaderError(f"pax record at {pos}: expected KEY=VALUE, found {key[:64]!r}")
        if key in _PAX_STRINGS and b"\0" in value:
            raise HeaderError(f"pax record {key.decode()!r} has a NUL in its value")
        if key in (tar_sparse.OFFSET, tar_sparse.NUMBYTES):
            sparse_pairs.append(value)
        else:
            records[key] = value
        pos = stop
    if sparse_pairs:
        records[tar_sparse.MAP] = b",".join(sparse_pairs)
    return records


def parse_pax_decimal(value: bytes) -> int:
    """A pax size, uid or gid: a non-negative decimal integer that fits in 64 bits."""
    text = value.strip()
    if not text.isdigit() or len(text) > 19 or int(text) > _INT64_MAX:
        raise HeaderError(f"{value[:40]!r} is not a non-negative decimal integer")
    return int(text)


def parse_pax_time(value: bytes) -> tuple[int, int]:
    """Seconds and nanoseconds (0..999_999_999) of a pax time, read from its text
    (never through a float); digits past the ninth fractional one are dropped."""
    match = _PAX_TIME.fullmatch(value.strip())
    if match is None:
        raise HeaderError(f"{value[:40]!r} is not a decimal time")
    sign, whole, fraction = match.groups()
    sec = int(whole)
    nsec = int(fraction[:9].ljust(9, b"0")) if fraction else 0
    if sign == b"-":
        sec, nsec = (-sec - 1, 1_000_000_000 - nsec) if nsec else (-sec, 0)
    if not _INT64_MIN <= sec <= _INT64_MAX:
        raise HeaderError(f"time {value[:40]!r} does not fit in 64 bits")
    return sec, nsec


def pax_xattrs(records: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Extended attributes from ``SCHILY.xattr.NAME`` (raw) and ``LIBARCHIVE.xattr.NAME``
    (base64) records, in record order."""
    out: dict[bytes, bytes] = {}
    for key, value in records.items():
        if key.startswith(_SCHILY_XATTR):
            out[key[len(_SCHILY_XATTR) :]] = value
        elif key.startswith(_LIBARCHIVE_XATTR):
            try:
                out[key[len(_LIBARCHIVE_XATTR) :]] = base64.b64decode(
                    value + b"=" * (-len(value) % 4)
                )
            except binascii.Error:
                raise HeaderError(f"xattr {key.decode(errors='replace')} is not base64") from None
    return out


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "surrogateescape"))


# -- the stream -----------------------------------------------------------------------------


class TarHeaderReader:
    """The entries of one tar stream, forward only.

    ``next`` returns each real entry's header (``None`` at the end), having skipped what
    was left of the previous entry's data; ``read_data`` reads the current entry's data.
    Offsets are counted from where the stream was when the reader was made.
    """

    def __init__(self, stream: IO[bytes], layer: str) -> None:
        self._read = stream.read
        # Entry data as views of the decompressed blocks where the stream offers them.
        self._read_data = getattr(stream, "read_view", stream.read)
        self._layer = layer
        self._pos = 0  # bytes consumed from the stream
        self._next = 0  # where the next header block starts
        self._data_left = 0  # bytes of the current entry's data not read yet
        self._name = b""  # of the current entry, for messages
        self._globals: dict[bytes, bytes] = {}
        self._globals_size = 0
        self._done = False
        #: the current entry's sparse fragments and real size, if it is a sparse file
        self._sparse: tuple[tuple[tar_sparse.Fragment, ...], int] | None = None

    # -- reading ------------------------------------------------------------------------

    def _bad(self, offset: int, what: str) -> BadLayerError:
        return BadLayerError(f"layer {self._layer}: broken tar: at offset {offset}: {what}")

    def _read_exact(self, n: int) -> bytes:
        """``n`` bytes, fewer only where the stream ends (short reads are retried)."""
        data = self._read(n)
        if len(data) < n and data:
            parts = [data]
            got = len(data)
            while got < n and (more := self._read(n - got)):
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self._pos += len(data)
        return data

    def _skip_to(self, offset: int) -> None:
        """Move forward to ``offset`` (a header's), reading what lies between.

        Reading, not seeking: ``LayerStream.seek`` reads anyway, and a read is what tells
        a stream that ends early, which seeking past the end of a file does not.
        """
        while self._pos < offset:
            if not self._read_exact(min(offset - self._pos, _SKIP_PIECE)):
                raise self._bad(
                    self._pos,
                    f"truncated: the stream ends inside the data of {_show(self._name)}, "
                    f"expected {offset - self._pos} more bytes",
                )

    def _header_block(self) -> bytes | None:
        """The block at ``self._next``; ``None`` if the stream ends exactly there."""
        gap = self._next - self._pos
        if 0 < gap < _SKIP_PIECE:
            # The usual case, data padding then the next header: one read.
            data = self._read_exact(gap + BLOCK_SIZE)
            if len(data) == gap + BLOCK_SIZE:
                return data[gap:]
            if len(data) < gap:
                raise self._bad(
                    self._pos,
                    f"truncated: the stream ends inside the data of {_show(self._name)}, "
                    f"expected {gap - len(data)} more bytes",
                )
            block = data[gap:]
        else:
            self._skip_to(self._next)
            block = self._read_exact(BLOCK_SIZE)
        if len(block) == BLOCK_SIZE:
            return block
        if not block:
            return None
        raise self._bad(
            self._next,
            f"truncated: the stream ends {len(block)} bytes into a header block, expected 512",
        )

    def _end(self, offset: int) -> None:
        """A zero block at ``offset``: the next must be zero too, or the end of the stream."""
        after = self._read_exact(BLOCK_SIZE)
        if after and after != ZERO_BLOCK:
            if len(after) < BLOCK_SIZE:
                raise self._bad(
                    offset + BLOCK_SIZE,
                    f"truncated: the stream ends {len(after)} bytes into the second "
                    "end-of-archive block, expected 512",
                )
            raise self._bad(
                offset,
                "zero block followed by data: expected a second zero block (the end of "
                "the archive) or the end of the stream",
            )
        self._done = True

    def _meta_data(self, offset: int, size: int, what: str) -> bytes:
        if size > MAX_META_SIZE:
            raise self._bad(offset, f"{what} of {size} bytes: expected at most {MAX_META_SIZE}")
        data = self._read_exact(size)
        if len(data) < size:
            raise self._bad(
                offset, f"truncated: the stream ends inside the data of a {what} header"
            )
        return data

    # -- headers ------------------------------------------------------------------------

    def next(self) -> TarHeader | None:
        """The next real entry's header, or ``None`` at the end of the archive."""
        self._data_left = 0  # the rest is skipped on the way to the next header
        self._sparse = None
        if self._done:
            return None
        local: dict[bytes, bytes] | None = None
        long_name = long_link = b""
        while True:
            offset = self._next
            block = self._header_block()
            if block is None:
                self._done = True  # the stream ends at a header boundary
                return None
            if block == ZERO_BLOCK:
                self._end(offset)
                return None
            typeflag, name, linkname, mode, uid, gid, size, sec, major, minor = self._decode(
                offset, block
            )
            data_offset = offset + BLOCK_SIZE
            if typeflag in _META:
                self._name = _META_NAMES[typeflag].encode()
                data = self._meta_data(offset, size, _META_NAMES[typeflag])
                self._next = data_offset + size + (-size % BLOCK_SIZE)
                if typeflag == PAX_LOCAL:
                    local = self._pax(offset, data)
                elif typeflag == PAX_GLOBAL:
                    self._add_globals(offset, self._pax(offset, data))
                elif typeflag == GNU_LONGNAME:
                    long_name = cstring(data)
                else:
                    long_link = cstring(data)
                continue

            nsec = 0
            xattrs: dict[bytes, bytes] = {}
            records = {**self._globals, **local} if local is not None else self._globals
            if records:
                name, linkname, uid, gid, size, sec, nsec, xattrs = self._apply_pax(
                    offset, records, name, linkname, uid, gid, size, sec
                )
            if long_name:
                name = long_name
            if long_link:
                linkname = long_link
            if typeflag == REGULAR_OLD and name.endswith(b"/"):
                typeflag = DIRECTORY
            elif typeflag == GNU_SPARSE:
                raise UnsupportedError(
                    f"layer {self._layer}: {_show(name)}: GNU sparse files (tar type 'S') "
                    "are not supported"
                )
            if typeflag in _HEADER_ONLY:
                size = 0
            if typeflag not in _DEVICES:
                major = minor = 0
            self._name = name
            self._data_left = size
            self._next = data_offset + size + (-size % BLOCK_SIZE)
            if records and typeflag in _REGULAR_TYPES:
                sparse = self._sparse_header(offset, records, name)
                if sparse is not None:
                    name, size = self._open_sparse(offset, sparse, name, size)
            return TarHeader(
                typeflag, name, linkname, mode, uid, gid, size, sec, nsec, major, minor, xattrs
            )

    def _decode(
        self, offset: int, block: bytes
    ) -> tuple[bytes, bytes, bytes, int, int, int, int, int, int, int]:
        """A header block's fields, checked: typeflag, name (with the ustar prefix),
        linkname, mode, uid, gid, size, mtime, devmajor, devminor."""
        (
            name,
            mode,
            uid,
            gid,
            size,
            mtime,
            chksum,
            typeflag,
            linkname,
            magic,
            _version,
            _uname,
            _gname,
            devmajor,
            devminor,
            prefix,
        ) = HEADER.unpack(block)
        numbers: tuple[int, ...] | None = None
        if not block[_NUMERIC].translate(None, _OCTAL_TEXT):
            try:
                numbers = (
                    int(mode.strip(b" \0") or b"0", 8),
                    int(uid.strip(b" \0") or b"0", 8),
                    int(gid.strip(b" \0") or b"0", 8),
                    int(size.strip(b" \0") or b"0", 8),
                    int(mtime.strip(b" \0") or b"0", 8),
                    int(chksum.strip(b" \0") or b"0", 8),
                )
            except ValueError:
                numbers = None  # a NUL or a space inside a field: the careful way
        expected = numbers[5] if numbers is not None else self._checksum_field(offset, chksum)
        view = memoryview(block)  # block_sum, inline: this runs once per entry
        found = (adler32(view[:256]) & 0xFFFF) + (adler32(view[256:]) & 0xFFFF) - 2
        found += _CHKSUM_AS_SPACES - sum(chksum)
        if found != expected and not checksum_matches(block, chksum, expected):
            raise self._bad(
                offset,
                f"header checksum: expected {expected} (its checksum field), found {found} "
                "(the sum of the block): not a tar header",
            )
        if numbers is None:
            numbers = self._numbers(offset, mode, uid, gid, size, mtime)
        n_mode, n_uid, n_gid, n_size, n_mtime = numbers[:5]
        if n_size < 0:
            raise self._bad(offset, f"header size {n_size} is negative")
        major = minor = 0
        if typeflag in _DEVICES or block[_DEVICE_NUMBERS].translate(None, _OCTAL_TEXT):
            # Read from every header, as Go does; only a device keeps them.
            try:
                major, minor = parse_number(devmajor), parse_number(devminor)
            except HeaderError as exc:
                raise self._bad(offset, f"header device number: {exc}") from None
        if (nul := name.find(b"\0")) >= 0:
            name = name[:nul]
        if magic == _USTAR_MAGIC and prefix[0]:
            if block[508:] == _STAR_TRAILER:
                prefix = prefix[:_STAR_PREFIX]
            name = cstring(prefix) + b"/" + name
        if (nul := linkname.find(b"\0")) >= 0:
            linkname = linkname[:nul]
        return typeflag, name, linkname, n_mode, n_uid, n_gid, n_size, n_mtime, major, minor

    def _checksum_field(self, offset: int, field: bytes) -> int:
        try:
            return parse_octal(field)
        except HeaderError as exc:
            raise self._bad(offset, f"header checksum field: {exc}: not a tar header") from None

    def _numbers(self, offset: int, *fields: bytes) -> tuple[int, ...]:
        values: list[int] = []
        for label, field in zip(_NUMBER_NAMES, fields, strict=True):
            try:
                values.append(parse_number(field))
            except HeaderError as exc:
                raise self._bad(offset, f"header {label}: {exc}") from None
        return tuple(values)

    def _pax(self, offset: int, data: bytes) -> dict[bytes, bytes]:
        try:
            return parse_pax_records(data)
        except HeaderError as exc:
            raise self._bad(offset, f"pax header: {exc}") from None

    def _add_globals(self, offset: int, records: dict[bytes, bytes]) -> None:
        self._globals = {**self._globals, **records}
        self._globals_size = sum(len(k) + len(v) for k, v in self._globals.items())
        if self._globals_size > _MAX_GLOBAL_PAX:
            raise self._bad(
                offset,
                f"global pax records total {self._globals_size} bytes: expected at most "
                f"{_MAX_GLOBAL_PAX}",
            )

    def _apply_pax(
        self,
        offset: int,
        records: dict[bytes, bytes],
        name: bytes,
        linkname: bytes,
        uid: int,
        gid: int,
        size: int,
        sec: int,
    ) -> tuple[bytes, bytes, int, int, int, int, int, dict[bytes, bytes]]:
        """The header's fields with the pax records applied; an empty value keeps the
        header's field."""
        nsec = 0
        try:
            if value := records.get(b"path"):
                name = value
            if value := records.get(b"linkpath"):
                linkname = value
            if value := records.get(b"uid"):
                uid = parse_pax_decimal(value)
            if value := records.get(b"gid"):
                gid = parse_pax_decimal(value)
            if value := records.get(b"size"):
                size = parse_pax_decimal(value)
            if value := records.get(b"mtime"):
                sec, nsec = parse_pax_time(value)
            xattrs = pax_xattrs(records)
        except HeaderError as exc:
            raise self._bad(offset, f"pax header of {_show(name)}: {exc}") from None
        return name, linkname, uid, gid, size, sec, nsec, xattrs

    def _sparse_header(
        self, offset: int, records: dict[bytes, bytes], name: bytes
    ) -> tar_sparse.SparseHeader | None:
        try:
            return tar_sparse.sparse_header(records)
        except tar_sparse.SparseError as exc:
            raise self._bad(offset, f"{_show(name)}: {exc}") from None

    def _open_sparse(
        self, offset: int, sparse: tar_sparse.SparseHeader, name: bytes, stored: int
    ) -> tuple[bytes, int]:
        """Make the current entry read as its sparse file; its real name and size."""
        if sparse.name:
            name = self._name = sparse.name
        size = sparse.size if sparse.size is not None else stored
        try:
            fragments = sparse.fragments
            if fragments is None:  # 1.0: the map starts the data
                fragments, used = tar_sparse.read_map_1x0(
                    self._map_block, min(MAX_META_SIZE, stored)
                )
                self._data_left -= used
            tar_sparse.check_fragments(fragments, size, self._data_left)
        except tar_sparse.SparseError as exc:
            raise self._bad(offset, f"{_show(name)}: {exc}") from None
        self._sparse = (fragments, size)
        return name, size

    def _map_block(self) -> bytes:
        block = self._read_exact(BLOCK_SIZE)
        if len(block) < BLOCK_SIZE:
            raise self._bad(
                self._pos,
                f"truncated: the stream ends inside the sparse map of {_show(self._name)}",
            )
        return block

    # -- data ---------------------------------------------------------------------------

    def read_data(self, block_size: int) -> Iterator[tar_sparse.Piece]:
        """What is left of the current entry's data, ``block_size`` bytes at a time (the
        last block may be short); a sparse file's holes as ``ZeroRun`` markers, its
        fragments in pieces of at most ``block_size``."""
        if self._sparse is not None:
            fragments, size = self._sparse
            return tar_sparse.expand(fragments, size, lambda count: self._stored(count, block_size))
        return self._stored(self._data_left, block_size)

    def _stored(self, count: int, block_size: int) -> Iterator[bytes | memoryview]:
        """The next ``count`` bytes of the entry's data as stored, in pieces of at most
        ``block_size``."""
        read = self._read_data
        end = self._data_left - count
        while (left := self._data_left) > end:
            want = block_size if left - end > block_size else left - end
            block = read(want)
            got = len(block)
            if not got:
                raise self._bad(
                    self._pos,
                    f"truncated: {_show(self._name)}: data ends {left} bytes early",
                )
            self._pos += got
            self._data_left = left - got
            yield block


_META_NAMES = {
    PAX_LOCAL: "pax header",
    PAX_GLOBAL: "global pax header",
    GNU_LONGNAME: "GNU long name",
    GNU_LONGLINK: "GNU long link name",
}
_NUMBER_NAMES = ("mode", "uid", "gid", "size", "mtime")
