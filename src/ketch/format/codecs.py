"""Chunk compressors, one class per codec with a one-byte wire id (docs/format.md §1).

Compression is deterministic for a given library version and level: the builder's
reproducibility rests on it.
"""

from __future__ import annotations

import abc
import enum
import threading
from typing import ClassVar

import lz4.block
import zstandard

from ketch.config import BUILD
from ketch.errors import IntegrityError, UsageError

#: the largest chunk (§1): a fixed chunk size is at most this, and so is a CDC chunk
MAX_CHUNK_SIZE = 16 << 20


class CodecId(enum.IntEnum):
    NONE = 0
    ZSTD = 1
    LZ4 = 2


class Codec(abc.ABC):
    """Compresses and decompresses one chunk at a time."""

    codec_id: ClassVar[CodecId]

    @abc.abstractmethod
    def compress(self, data: bytes | memoryview) -> bytes: ...

    def decompress(self, data: bytes | memoryview, size: int) -> bytes:
        """Decompress to exactly ``size`` bytes or raise IntegrityError. ``size`` comes
        from a record: it is checked against the largest chunk before anything is
        allocated for it."""
        if not 0 <= size <= MAX_CHUNK_SIZE:
            raise IntegrityError(f"chunk size: expected at most {MAX_CHUNK_SIZE}, found {size}")
        return self._decompress(data, size)

    @abc.abstractmethod
    def _decompress(self, data: bytes | memoryview, size: int) -> bytes: ...


class NoneCodec(Codec):
    codec_id = CodecId.NONE

    def compress(self, data: bytes | memoryview) -> bytes:
        return bytes(data)

    def _decompress(self, data: bytes | memoryview, size: int) -> bytes:
        if len(data) != size:
            raise IntegrityError(f"stored chunk: expected {size} bytes, found {len(data)}")
        return bytes(data)


_UNKNOWN_CONTENT_SIZE = -1  # zstandard.frame_content_size of a frame that does not say


class ZstdCodec(Codec):
    codec_id = CodecId.ZSTD

    def __init__(self, level: int = BUILD.compression_level) -> None:
        self._level = level
        # zstandard contexts are not thread-safe: one per thread.
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        ctx = getattr(self._local, "c", None)
        if ctx is None:
            # No checksum, no content size: the chunk table already records both.
            ctx = zstandard.ZstdCompressor(
                level=self._level, write_checksum=False, write_content_size=True
            )
            self._local.c = ctx
        return ctx

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        ctx = getattr(self._local, "d", None)
        if ctx is None:
            ctx = zstandard.ZstdDecompressor()
            self._local.d = ctx
        return ctx

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._compressor().compress(data)

    def _decompress(self, data: bytes | memoryview, size: int) -> bytes:
        try:
            # zstandard allocates what the frame header declares: check it first.
            declared = zstandard.frame_content_size(data)
            if declared not in (size, _UNKNOWN_CONTENT_SIZE):
                raise IntegrityError(
                    f"zstd chunk: expected {size} bytes, its frame declares {declared}"
                )
            out = self._decompressor().decompress(data, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"zstd chunk does not decompress: {exc}") from None
        if len(out) != size:
            raise IntegrityError(f"zstd chunk: expected {size} bytes, found {len(out)}")
        return out


class Lz4Codec(Codec):
    codec_id = CodecId.LZ4

    def compress(self, data: bytes | memoryview) -> bytes:
        return lz4.block.compress(data, store_size=False)  # type: ignore[no-any-return]

    def _decompress(self, data: bytes | memoryview, size: int) -> bytes:
        try:
            out: bytes = lz4.block.decompress(data, uncompressed_size=size)
        except lz4.block.LZ4BlockError as exc:
            raise IntegrityError(f"lz4 chunk does not decompress: {exc}") from None
        if len(out) != size:
            raise IntegrityError(f"lz4 chunk: expected {size} bytes, found {len(out)}")
        return out


_NAMES = {"none": CodecId.NONE, "zstd": CodecId.ZSTD, "lz4": CodecId.LZ4}
_DECODERS: dict[CodecId, Codec] = {
    CodecId.NONE: NoneCodec(),
    CodecId.ZSTD: ZstdCodec(),
    CodecId.LZ4: Lz4Codec(),
}


def codec_by_name(name: str, level: int | None = None) -> Codec:
    """The compressor a user names on the command line."""
    codec_id = _NAMES.get(name.lower())
    if codec_id is None:
        raise UsageError(f"unknown compressor {name!r}: expected one of {', '.join(_NAMES)}")
    if codec_id is CodecId.ZSTD and level is not None:
        return ZstdCodec(level)
    return _DECODERS[codec_id]


def decoder(codec_id: int) -> Codec:
    """The codec that reads chunks written with ``codec_id``."""
    try:
        return _DECODERS[CodecId(codec_id)]
    except ValueError:
        raise IntegrityError(f"chunk codec: expected one of 0, 1, 2, found {codec_id}") from None
