"""A regular file of an image as a read-only binary file object (``io.RawIOBase``).

Each read fetches only the chunks it covers, through the image's chunk source, and each
chunk is verified before a byte of it is returned: a chunk that fails verification is a
``ChunkReadError`` (an ``OSError`` with errno EIO) naming the file, never bytes.
``Image.open`` wraps this in an ``io.BufferedReader``, as the builtin ``open`` does.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from ketch.errors import ChunkReadError, IntegrityError
from ketch.fs.image_fs import ImageFS

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class ImageFile(io.RawIOBase):
    """The bytes of one regular file (inode ``ino``, ``size`` bytes) of an image."""

    def __init__(self, fs: ImageFS, ino: int, size: int, name: str) -> None:
        super().__init__()
        self._fs = fs
        self._ino = ino
        self._size = size
        self._position = 0
        self.name = name
        self.mode = "rb"

    def readable(self) -> bool:
        self._check_open()
        return True

    def seekable(self) -> bool:
        self._check_open()
        return True

    def writable(self) -> bool:
        self._check_open()
        return False

    def tell(self) -> int:
        self._check_open()
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._position + offset
        elif whence == os.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def _read(self, size: int) -> bytes:
        self._check_open()
        if size < 0 or self._position + size > self._size:
            size = max(self._size - self._position, 0)
        if size == 0:
            return b""
        try:
            data = self._fs.read(self._ino, self._position, size)
        except IntegrityError as exc:
            raise ChunkReadError(f"{self.name}: {exc.message}", self.name) from exc
        self._position += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._read(-1 if size is None else size)

    def readall(self) -> bytes:
        return self._read(-1)

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._read(len(view))
        view[: len(data)] = data
        return len(data)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
