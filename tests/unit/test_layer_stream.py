"""A layer stream whose decompression thread fails unexpectedly ends its reader."""

from __future__ import annotations

import hashlib
import io
import threading

import pytest

from ketch.oci.layer_stream import LayerStream


class _FailingBlob(io.RawIOBase):
    """A blob stream whose library raises something no one wrapped, after some bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._data.readinto(buffer)
        if not n:
            raise RuntimeError("the backend library failed")
        return n


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_an_unexpected_error_in_the_decompression_thread_reaches_the_reader(
    compression: str,
) -> None:
    data = b"\0" * 4096
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    stream = LayerStream(_FailingBlob(data), compression, digest)  # type: ignore[arg-type]
    raised: list[BaseException] = []

    def read_all() -> None:
        try:
            stream.finish()
        except BaseException as exc:
            raised.append(exc)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(timeout=20)
    stream.close()
    assert not reader.is_alive(), "the reader waits forever for a thread that has died"
    assert [str(exc) for exc in raised] == ["the backend library failed"]
