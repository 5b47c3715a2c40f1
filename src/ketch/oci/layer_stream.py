"""Decompress a layer blob in a background thread, checking its digest on the way.

The tar parser reads from ``LayerStream`` like a file. Decompression (gzip, zstd, none,
chosen by media type) runs in its own thread, so that it overlaps parsing and chunk
hashing; zlib and zstd release the GIL while they work. Output blocks are bounded, so a
decompression bomb costs time, never memory.
"""

from __future__ import annotations

import gzip
import hashlib
import queue
import threading
import zlib
from typing import IO, cast

import zstandard

from ketch.errors import BadLayerError, IntegrityError, KetchError, UnsupportedError

BLOCK = 1 << 20
_QUEUE_BLOCKS = 8


class _HashingReader:
    """Counts and hashes every byte the decompressor pulls from the raw blob."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data

    def readinto(self, buf: memoryview | bytearray) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class LayerStream:
    """A file-like view of a layer's uncompressed tar bytes."""

    def __init__(
        self, raw: IO[bytes], compression: str, digest: str, *, size: int | None = None
    ) -> None:
        if compression not in ("gzip", "zstd", "none"):
            raise UnsupportedError(
                f"layer {digest}: compression {compression!r} is not gzip, zstd or none"
            )
        self.digest = digest
        self._compression = compression
        self._expected_size = size
        self._hashing = _HashingReader(raw)
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_BLOCKS)
        self._stop = threading.Event()
        self._buffer = memoryview(b"")
        self._eof = False
        self.uncompressed_bytes = 0
        self._thread = threading.Thread(
            target=self._run, name=f"decompress-{digest[7:19]}", daemon=True
        )
        self._thread.start()

    # -- producer thread --------------------------------------------------------------

    def _decompressor(self) -> IO[bytes]:
        source = cast(IO[bytes], self._hashing)
        if self._compression == "gzip":
            return cast(IO[bytes], gzip.GzipFile(fileobj=source, mode="rb"))
        if self._compression == "zstd":
            return cast(
                IO[bytes],
                zstandard.ZstdDecompressor().stream_reader(
                    source, read_size=BLOCK, read_across_frames=True
                ),
            )
        return source

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            reader = self._decompressor()
            while True:
                block = reader.read(BLOCK)
                if not block:
                    break
                if not self._put(block):
                    return
            # Whatever follows the compressed stream still counts toward the digest.
            while self._hashing.read(BLOCK):
                pass
            self._verify()
            self._put(None)
        except KetchError as exc:
            self._put(exc)
        except (EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
            self._put(
                BadLayerError(f"layer {self.digest}: {self._compression} stream is broken: {exc}")
            )

    def _verify(self) -> None:
        found = "sha256:" + self._hashing.sha.hexdigest()
        if found != self.digest:
            raise IntegrityError(
                f"layer {self.digest}: digest: expected {self.digest}, found {found}"
            )
        if self._expected_size is not None and self._hashing.count != self._expected_size:
            raise IntegrityError(
                f"layer {self.digest}: size: expected {self._expected_size}, found {self._hashing.count}"
            )

    # -- consumer side ----------------------------------------------------------------

    def _next_block(self) -> bool:
        if self._eof:
            return False
        item = self._queue.get()
        if item is None:
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._buffer = memoryview(item)
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [bytes(self._buffer)]
            self._buffer = memoryview(b"")
            while self._next_block():
                parts.append(bytes(self._buffer))
            self._buffer = memoryview(b"")
            data = b"".join(parts)
            self.uncompressed_bytes += len(data)
            return data
        while not self._buffer:
            if not self._next_block():
                return b""
        data = bytes(self._buffer[:n])
        self._buffer = self._buffer[n:]
        self.uncompressed_bytes += len(data)
        return data

    def finish(self) -> None:
        """Read to the end, so that the digest check has run; raises what it found."""
        while self._buffer or self._next_block():
            self._buffer = memoryview(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
