"""Decompress a layer blob in a background thread, checking its digest on the way.

The tar parser reads from ``LayerStream`` like a file. Decompression (gzip, zstd, none,
chosen by media type) runs in its own thread, so that it overlaps parsing and chunk
hashing; zlib and zstd release the GIL while they work. Output blocks are bounded, so a
decompression bomb costs time, never memory.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from typing import IO, Protocol, cast

import zstandard
from isal import igzip, igzip_lib

from ketch.errors import BadLayerError, IntegrityError, KetchError, UnsupportedError
from ketch.format.digests import oci_digest

BLOCK = 1 << 20  # raw (compressed) reads
# Decompressed blocks: entry data is handed on as views of them, and only a read that
# spans two blocks is copied (on the consumer's thread, holding the GIL), so the larger
# the block, the fewer such copies. Bounded: the queue holds _QUEUE_BLOCKS of them.
OUT_BLOCK = 4 << 20
# isal's stubs declare its error as an instance, not a class.
_ISAL_ERROR = cast("type[Exception]", igzip_lib.IsalError)
_QUEUE_BLOCKS = 4


class _ZstdFraming:
    """Follows zstd frame and block headers (RFC 8878 §3.1) through the raw bytes.

    zstandard's stream reader returns short, without an error, when its input ends inside
    a frame; this tells a stream cut inside a frame from one that ends between frames.
    It only counts header and block sizes: decoding and its errors stay with zstandard.
    """

    _MAGIC = 0xFD2FB528
    _SKIPPABLE = 0x184D2A50  # 0x184D2A50..0x184D2A5F
    _DICT_ID_SIZES = (0, 1, 2, 4)
    _CONTENT_SIZE_SIZES = (0, 2, 4, 8)  # flag 0 with the single-segment flag: 1
    _RLE_BLOCK = 1

    def __init__(self) -> None:
        self._state = "magic"  # which header ``_header`` is collecting
        self._want = 4  # its length
        self._header = bytearray()
        self._skip = 0  # payload bytes to pass over before the next header
        self._checksum = False  # the current frame ends with a 4-byte checksum
        self._lost = False  # not a frame magic: zstandard reports that itself

    @property
    def between_frames(self) -> bool:
        return self._lost or (self._state == "magic" and not self._header and not self._skip)

    def feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and not self._lost:
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._want - len(self._header), len(data) - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == self._want:
                header = bytes(self._header)
                self._header.clear()
                self._next(header)

    def _expect(self, state: str, size: int) -> None:
        self._state, self._want = state, size

    def _next(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        if self._state == "magic":
            if value == self._MAGIC:
                self._expect("descriptor", 1)
            elif value & ~0xF == self._SKIPPABLE:
                self._expect("skippable size", 4)
            else:
                self._lost = True
        elif self._state == "skippable size":
            self._skip = value
            self._expect("magic", 4)
        elif self._state == "descriptor":
            single_segment = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            content_size = self._CONTENT_SIZE_SIZES[value >> 6] or int(single_segment)
            rest = int(not single_segment) + self._DICT_ID_SIZES[value & 0x03] + content_size
            if rest:
                self._expect("frame header", rest)
            else:
                self._expect("block", 3)
        elif self._state == "frame header":
            self._expect("block", 3)
        elif self._state == "block":
            block_type, block_size = (value >> 1) & 0x03, value >> 3
            self._skip = 1 if block_type == self._RLE_BLOCK else block_size
            if not value & 0x01:
                self._expect("block", 3)
            elif self._checksum:
                self._expect("checksum", 4)
            else:
                self._expect("magic", 4)
        else:  # the checksum ends the frame
            self._expect("magic", 4)


class _ReadInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class BufferPool:
    """Decompression buffers, reused: a fresh buffer costs the kernel a page fault per
    4 KiB of output. One pool can serve the layers of a whole build, one after another.

    Whoever still holds data of a buffer (the queue, the consumer, a chunk being hashed
    or written) holds a view of it, and a bytearray with views cannot be resized: that
    tells a buffer in use from a free one.
    """

    def __init__(self, size: int = OUT_BLOCK) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._buffers: list[bytearray] = []

    def take(self) -> bytearray:
        with self._lock:
            for buffer in self._buffers:
                try:
                    del buffer[-1:]
                except BufferError:
                    continue
                buffer.append(0)
                return buffer
            buffer = bytearray(self.size)
            self._buffers.append(buffer)
            return buffer


class _HashingReader:
    """Counts and hashes every byte the decompressor pulls from the raw blob."""

    def __init__(self, raw: IO[bytes], framing: _ZstdFraming | None = None) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0
        self.framing = framing
        # Straight into the decompressor's buffer where the blob's stream allows it.
        self._raw_readinto = getattr(raw, "readinto", None) if framing is None else None

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.count += len(data)
        if self.framing is not None:
            self.framing.feed(data)
        return data

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self._raw_readinto is None:
            data = self.read(len(buf))
            buf[: len(data)] = data
            return len(data)
        n: int = self._raw_readinto(buf) or 0
        with memoryview(buf) as view, view[:n] as got:
            self.sha.update(got)
        self.count += n
        return n

    def readable(self) -> bool:
        return True


class LayerStream:
    """A file-like view of a layer's uncompressed tar bytes."""

    def __init__(
        self,
        raw: IO[bytes],
        compression: str,
        digest: str,
        *,
        size: int | None = None,
        buffers: BufferPool | None = None,
    ) -> None:
        if compression not in ("gzip", "zstd", "none"):
            raise UnsupportedError(
                f"layer {digest}: compression {compression!r} is not gzip, zstd or none"
            )
        self.digest = digest
        self._compression = compression
        self._expected_size = size
        self._framing = _ZstdFraming() if compression == "zstd" else None
        self._hashing = _HashingReader(raw, self._framing)
        self._queue: queue.Queue[memoryview | BaseException | None] = queue.Queue(_QUEUE_BLOCKS)
        self._stop = threading.Event()
        self._buffer = memoryview(b"")
        self._eof = False
        self.uncompressed_bytes = 0
        self._buffers = buffers if buffers is not None else BufferPool()
        self._thread = threading.Thread(
            target=self._run, name=f"decompress-{digest[7:19]}", daemon=True
        )
        self._thread.start()

    # -- producer thread --------------------------------------------------------------

    def _decompressor(self) -> IO[bytes]:
        source = cast(IO[bytes], self._hashing)
        if self._compression == "gzip":
            # ISA-L's inflate is about 2.5x zlib's; same format, same error behaviour.
            return cast(IO[bytes], igzip.IGzipFile(fileobj=source, mode="rb"))  # type: ignore[no-untyped-call]
        if self._compression == "zstd":
            return cast(
                IO[bytes],
                zstandard.ZstdDecompressor().stream_reader(
                    source, read_size=BLOCK, read_across_frames=True
                ),
            )
        return source

    def _put(self, item: memoryview | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self._decompress()
        except Exception as exc:  # a bug, passed on as it is: the reader must not wait forever
            self._put(exc)

    def _decompress(self) -> None:
        try:
            reader = cast(_ReadInto, self._decompressor())
            while True:
                with memoryview(self._buffers.take()) as view:
                    filled, size = 0, len(view)
                    while filled < size and (n := reader.readinto(view[filled:])):
                        filled += n
                    if not filled:
                        break
                    if not self._put(view[:filled]):
                        return
            # Whatever follows the compressed stream still counts toward the digest.
            self._drain()
            self._verify()
            if self._framing is not None and not self._framing.between_frames:
                raise BadLayerError(
                    f"layer {self.digest}: zstd stream is broken: expected the end of a frame, "
                    f"found the end of the data after {self._hashing.count} bytes"
                )
            self._put(None)
        except KetchError as exc:
            self._put(exc)
        except (EOFError, OSError, zlib.error, _ISAL_ERROR, zstandard.ZstdError) as exc:
            self._put(self._broken(exc))

    def _drain(self) -> None:
        """Read the raw blob to its end (unless the consumer has gone), for the digest."""
        while not self._stop.is_set() and self._hashing.read(BLOCK):
            pass

    def _broken(self, exc: BaseException) -> KetchError:
        """The error for a stream that failed to decompress: bytes that are not the blob
        the manifest names explain the breakage, so a digest mismatch wins."""
        try:
            self._drain()
            self._verify()
        except KetchError as integrity:
            return integrity
        except OSError:
            pass
        return BadLayerError(f"layer {self.digest}: {self._compression} stream is broken: {exc}")

    def _verify(self) -> None:
        found = oci_digest(self._hashing.sha)
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
        """Exactly ``n`` bytes (all that is left if negative), fewer only at the end."""
        if n is None or n < 0:
            n = 1 << 62
        if len(self._buffer) >= n:  # the common case: one slice of the current block
            data = bytes(self._buffer[:n])
            self._buffer = self._buffer[n:]
        else:
            parts = [self._buffer]
            got = len(self._buffer)
            self._buffer = memoryview(b"")
            while got < n and self._next_block():
                piece = self._buffer[: n - got]
                parts.append(piece)
                got += len(piece)
                self._buffer = self._buffer[len(piece) :]
            data = b"".join(parts)  # one copy, of views into the blocks
        self.uncompressed_bytes += len(data)
        return data

    def read_view(self, n: int) -> bytes | memoryview:
        """Like ``read``, but bytes inside one decompressed block come back as a view of
        it, not a copy (hashing and compressing take views as they are)."""
        if 0 <= n <= len(self._buffer):
            view = self._buffer[:n]
            self._buffer = self._buffer[n:]
            self.uncompressed_bytes += n
            return view
        return self.read(n)

    def tell(self) -> int:
        return self.uncompressed_bytes

    def seek(self, offset: int, whence: int = 0) -> int:
        """Forward only: skips bytes. tarfile seeks to where it already is, or past data."""
        if whence == 1:
            offset += self.uncompressed_bytes
        elif whence != 0:
            raise OSError(f"layer {self.digest}: stream cannot seek from its end")
        if offset < self.uncompressed_bytes:
            raise OSError(
                f"layer {self.digest}: stream cannot seek back to {offset} from {self.uncompressed_bytes}"
            )
        while self.uncompressed_bytes < offset:
            if not self.read(min(offset - self.uncompressed_bytes, BLOCK)):
                break
        return self.uncompressed_bytes

    def finish(self) -> None:
        """Read to the end, so that the digest check has run; raises what it found."""
        while self._buffer or self._next_block():
            self._buffer = memoryview(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
