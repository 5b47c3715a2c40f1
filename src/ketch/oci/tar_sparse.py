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
map that references data the entry does not have). A layer's sparse files may have
``MAX_HOLE_BYTES`` of holes in all (64 GiB): Go has no bound, and a map of a few bytes
would have umoci write zeros until the disk fills. The old GNU ``S`` type is another
matter: umoci refuses it, and so does Ketch (``tar_header``).
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
#: bytes of holes one layer's sparse files may have in all: holes cost the layer nothing
#: but are read as zeros (hashed, chunked), so a map of a few bytes could otherwise ask
#: for terabytes of work; 64 GiB of holes convert in about 7 s (8 GiB took 0.9 s)
MAX_HOLE_BYTES = 64 << 30

Fragment = tuple[int, int]  # (offset in the real file, length)


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
    block_size: int,
) -> Iterator[bytes | memoryview]:
    """The real file's bytes, ``block_size`` at a time (the last block may be short):
    zeros for the holes, ``data(n)`` (the next ``n`` stored bytes, in pieces) for the
    fragments. A block made only of a hole is a view of one shared zero block."""
    zeros = memoryview(bytes(block_size))
    pending: list[bytes | memoryview] = []
    have = 0

    def pieces() -> Iterator[bytes | memoryview]:
        position = 0
        for offset, length in fragments:
            yield from _zeros(zeros, offset - position)
            yield from data(length)
            position = offset + length
        yield from _zeros(zeros, size - position)

    for piece in pieces():
        view = memoryview(piece)
        while view:
            take = min(len(view), block_size - have)
            pending.append(view[:take])
            have += take
            view = view[take:]
            if have == block_size:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, have = [], 0
    if have:
        yield b"".join(pending)


def _zeros(zeros: memoryview, count: int) -> Iterator[memoryview]:
    while count > 0:
        step = min(count, len(zeros))
        yield zeros[:step]
        count -= step
