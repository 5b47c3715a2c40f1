"""GNU sparse files in pax form: formats 0.0, 0.1 and 1.0, read as Go's archive/tar reads
them (umoci and Docker unpack layers with it).

GNU tar (``--sparse --format=posix``) stores a sparse file as a regular entry whose data
is only the file's non-hole fragments, back to back; pax records say where they go:

- **0.0**: ``GNU.sparse.size`` (the real size), ``GNU.sparse.numblocks`` and repeated
  ``GNU.sparse.offset`` / ``GNU.sparse.numbytes`` records, one pair per fragment (the pax
  parser joins them into a ``GNU.sparse.map`` value, as Go does);
- **0.1**: the same, with the pairs as one ``GNU.sparse.map`` record
  (``OFFSET,LENGTH,OFFSET,LENGTH...``) and the real name in ``GNU.sparse.name``;
- **1.0**: ``GNU.sparse.major=1``, ``GNU.sparse.minor=0``, ``GNU.sparse.realsize`` and
  ``GNU.sparse.name``; the map is at the start of the data, as decimal numbers each
  ended by a newline (the fragment count, then an offset and a length per fragment),
  padded to a whole 512-byte block.

The format is told as Go tells it: ``major.minor`` if both are given, else 0.1 if a name
and a map are, else 0.0 if a size is. Another version is not a sparse file (Go reads
such an entry as a regular file, and so does Ketch). Everything between fragments, and
after the last up to the real size, reads as zeros.

A map must list fragments in order, without overlap, inside the real size, and must
account for the stored data exactly (Go refuses data the map does not reference, and a
map that references data the entry does not have). The old GNU ``S`` type is another
matter: umoci refuses it, and so does Ketch (``tar_header``).

Holes are handed on as ``ZeroRun`` markers, never as zero bytes: a map of a few bytes
may describe petabytes of holes, so what a hole costs is for the consumer to bound (the
layer builder bounds the chunk references a build's holes make:
``layer_builder.MAX_HOLE_CHUNKS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

#: pax keys, and the one that 0.0's repeated pairs are joined into
OFFSET = b"GNU.sparse.offset"
NUMBYTES = b"GNU.sparse.numbytes"
MAP = b"GNU.sparse.map"
_NUMBLOCKS = b"GNU.sparse.numblocks"
_NAME = b"GNU.sparse.name"
_MAJOR = b"GNU.sparse.major"
_MINOR = b"GNU.sparse.minor"
_SIZE = b"GNU.sparse.size"
_REALSIZE = b"GNU.sparse.realsize"

_BLOCK = 512
_INT64_MAX = (1 << 63) - 1

Fragment = tuple[int, int]  # (offset in the real file, length)


@dataclass(frozen=True, slots=True)
class ZeroRun:
    """``size`` bytes of zeros (a hole), not materialized."""

    size: int


#: a file's data as read: bytes, or runs of zeros for its holes
Piece = bytes | memoryview | ZeroRun


class SparseError(ValueError):
    """A sparse map that does not decode or does not fit; the reader adds the layer,
    the entry and the offset."""


@dataclass(frozen=True, slots=True)
class SparseHeader:
    """What an entry's pax records say of it as a sparse file."""

    version: str  # "0.0", "0.1" or "1.0"
    name: bytes | None  # the real name (``GNU.sparse.name``), if given
    size: int | None  # the real size, if given
    #: the fragments, for 0.x; None for 1.0, whose map starts the entry's data
    fragments: tuple[Fragment, ...] | None


def sparse_header(records: dict[bytes, bytes]) -> SparseHeader | None:
    """The entry's sparse description from its pax records, or None for a plain file."""
    major, minor = records.get(_MAJOR), records.get(_MINOR)
    if major is not None and minor is not None:
        version = (major + b"." + minor).decode("ascii", "replace")
    elif _NAME in records and MAP in records:
        version = "0.1"
    elif _SIZE in records:
        version = "0.0"
    else:
        return None
    if version not in ("0.0", "0.1", "1.0"):
        return None  # unknown to Go too: a regular file
    size: int | None = None
    if _SIZE in records:
        size = _decimal(records[_SIZE], "GNU.sparse.size")
    elif _REALSIZE in records:
        size = _decimal(records[_REALSIZE], "GNU.sparse.realsize")
    fragments = None if version == "1.0" else _map_0x(records)
    return SparseHeader(version, records.get(_NAME), size, fragments)


def _decimal(value: bytes, what: str) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 19 or int(text) > _INT64_MAX:
        raise SparseError(f"{what} {value[:40]!r} is not a non-negative decimal integer")
    return int(text)


def _pairs(numbers: list[int]) -> tuple[Fragment, ...]:
    return tuple(zip(numbers[0::2], numbers[1::2], strict=True))


def _map_0x(records: dict[bytes, bytes]) -> tuple[Fragment, ...]:
    """The fragments of a 0.0 or 0.1 entry; ``GNU.sparse.numblocks`` must count them."""
    count = _decimal(records.get(_NUMBLOCKS, b""), "GNU.sparse.numblocks")
    text = records.get(MAP, b"")
    fields = text.split(b",") if text else []
    if len(fields) != 2 * count:
        raise SparseError(
            f"sparse map: expected {2 * count} numbers for {count} fragments "
            f"(GNU.sparse.numblocks), found {len(fields)}"
        )
    return _pairs([_decimal(field, "sparse map number") for field in fields])


def read_map_1x0(read_block: Callable[[], bytes], limit: int) -> tuple[tuple[Fragment, ...], int]:
    """A 1.0 map from the start of the entry's data, a 512-byte block at a time (never a
    block more than the map needs); the fragments and the bytes of data it took.

    ``read_block`` returns the next block, raising at the end of the stream; ``limit``
    bounds the map's bytes, so a map that never ends costs bounded memory.
    """
    text = bytearray()
    used = 0
    newlines = 0

    def feed(wanted: int) -> None:
        nonlocal used, newlines
        while newlines < wanted:
            if used + _BLOCK > limit:
                raise SparseError(f"sparse map over {limit} bytes")
            block = read_block()
            used += _BLOCK
            text.extend(block)
            newlines += block.count(b"\n")

    feed(1)
    tokens = iter(bytes(text).split(b"\n"))
    count = _decimal(next(tokens), "sparse map fragment count")
    feed(1 + 2 * count)
    tokens = iter(bytes(text).split(b"\n"))
    next(tokens)
    numbers = [_decimal(next(tokens), "sparse map number") for _ in range(2 * count)]
    return _pairs(numbers), used


def check_fragments(fragments: tuple[Fragment, ...], size: int, stored: int) -> None:
    """Go's rules: in order, no overlap, inside the real size; the stored data is
    exactly what the fragments take."""
    end = 0
    total = 0
    for offset, length in fragments:
        if offset < end:
            raise SparseError(
                f"sparse map: fragment at {offset} overlaps or precedes the one ending at {end}"
            )
        end = offset + length
        if end > size:
            raise SparseError(
                f"sparse map: fragment {offset}+{length} ends past the real size {size}"
            )
        total += length
    if total != stored:
        raise SparseError(
            f"sparse map: its fragments hold {total} bytes, the entry stores {stored}"
        )


def expand(
    fragments: tuple[Fragment, ...],
    size: int,
    data: Callable[[int], Iterable[bytes | memoryview]],
) -> Iterator[Piece]:
    """The real file's contents: a ``ZeroRun`` for each hole (between fragments, and
    after the last up to ``size``), and ``data(n)`` (the next ``n`` stored bytes, in
    pieces) for each fragment. No run is empty."""
    position = 0
    for offset, length in fragments:
        if offset > position:
            yield ZeroRun(offset - position)
        yield from data(length)
        position = offset + length
    if size > position:
        yield ZeroRun(size - position)


def zero_filled(pieces: Iterable[Piece], block_size: int) -> Iterator[bytes | memoryview]:
    """``pieces`` with each ``ZeroRun`` as zeros, ``block_size`` at most at a time (views
    of one shared zero block): for consumers that need every byte."""
    zeros: memoryview | None = None
    for piece in pieces:
        if not isinstance(piece, ZeroRun):
            yield piece
            continue
        if zeros is None:
            zeros = memoryview(bytes(block_size))
        count = piece.size
        while count > 0:
            step = min(count, block_size)
            yield zeros[:step]
            count -= step
