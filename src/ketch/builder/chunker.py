"""Cut a file's byte stream into chunks: one class per chunker, one factory.

Fixed chunks cut at multiples of the chunk size; content-defined chunks (FastCDC) cut
where the data says, so an insertion shifts only the chunks around it.

A file's data may come with holes, as ``ZeroRun`` markers. The fixed chunker cuts them
where it would cut the same zeros written out, and hands the whole chunks of zeros on as
one ``ZeroChunks`` marker each run, so a hole costs its chunk records, never its bytes;
the chunks that a hole shares with data are cut from real zeros. The content-defined
chunker reads holes as zeros (where it cuts depends on every byte).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ketch.config import BUILD, check_chunk_size
from ketch.errors import UsageError
from ketch.format.codecs import MAX_CHUNK_SIZE
from ketch.oci.tar_sparse import Piece, ZeroRun, zero_filled

DEFAULT_CHUNK_SIZE = BUILD.chunk_size
Block = bytes | memoryview  # file data as read: views of decompressed blocks where possible


@dataclass(frozen=True, slots=True)
class ZeroChunks:
    """``count`` chunks of ``size`` zero bytes each, in a row, never materialized."""

    count: int
    size: int


Chunk = Block | ZeroChunks


class Chunker(abc.ABC):
    name: str

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = check_chunk_size(chunk_size)

    @abc.abstractmethod
    def chunkify(self, blocks: Iterable[Piece]) -> Iterator[Chunk]:
        """Chunks of the concatenated ``blocks``, in order, none empty."""


class FixedChunker(Chunker):
    name = "fixed"

    def chunkify(self, blocks: Iterable[Piece]) -> Iterator[Chunk]:
        size = self.chunk_size
        pending = bytearray()
        held: Block | None = None  # a short block kept as is, in case it is the last
        for block in blocks:
            if held is not None:
                pending += held
                held = None
            if isinstance(block, ZeroRun):
                run = block.size
                if pending:  # the chunk in progress takes zeros first
                    fill = min(run, size - len(pending))
                    pending += bytes(fill)
                    run -= fill
                    if len(pending) < size:
                        continue
                    yield bytes(pending)
                    pending.clear()
                if run >= size:
                    yield ZeroChunks(run // size, size)
                    run %= size
                pending += bytes(run)
                continue
            if not pending and len(block) == size:
                yield block  # the common case: no copy at all
                continue
            if not pending and len(block) < size:
                held = block
                continue
            pending += block
            while len(pending) >= size:
                yield bytes(pending[:size])
                del pending[:size]
        if held is not None:
            yield held  # a file smaller than a chunk: no copy either
        elif pending:
            yield bytes(pending)


class _BlockReader:
    """Adapts an iterable of blocks to the ``read(n)`` FastCDC pulls from."""

    def __init__(self, blocks: Iterable[Block]) -> None:
        self._blocks = iter(blocks)
        self._buffer = b""

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = next(self._blocks, None)
            if block is None:
                break
            self._buffer += block
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


class CdcChunker(Chunker):
    """FastCDC 2020: average ``chunk_size``, minimum a quarter, maximum four times."""

    name = "cdc"

    def __init__(self, chunk_size: int) -> None:
        # Imported here: every convert loads this module, few use content-defined chunks.
        from pyfastcdc import FastCDC  # noqa: PLC0415

        super().__init__(chunk_size)
        average = min(chunk_size, 4 << 20)
        self._cdc = FastCDC(
            average, min_size=min(average // 4, 1 << 20), max_size=min(average * 4, MAX_CHUNK_SIZE)
        )

    def chunkify(self, blocks: Iterable[Piece]) -> Iterator[Chunk]:
        for chunk in self._cdc.cut_stream(_BlockReader(zero_filled(blocks, 1 << 20))):
            # The view is only valid until the next chunk is cut.
            yield bytes(chunk.data)


def make_chunker(kind: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Chunker:
    if kind == "fixed":
        return FixedChunker(chunk_size)
    if kind == "cdc":
        return CdcChunker(chunk_size)
    raise UsageError(f"chunker {kind!r}: expected fixed or cdc")
