"""Blob reads of a registry: size (``HEAD``), whole, ranged and streamed ``GET``.

A whole blob is checked against its digest; a range is not (the chunk reader checks it,
chunk by chunk); a stream is checked by its consumer and resumes with ``Range`` after a
dropped connection, under one budget of retries for the whole stream. A registry that
answers a ``Range`` read with the whole blob has it sliced up to
``RANGE_FALLBACK_LIMIT``; above it that is ``RangeIgnoredError`` (a ``StorageError``:
a cold pull-through cache does that until it has stored the blob).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import IO, Any

import httpx

from ketch.errors import IntegrityError, StorageError
from ketch.format.digests import sha256_hex
from ketch.storage.registry.auth import pull_scope
from ketch.storage.registry.transport import BLOCK, RegistryTransport
from ketch.storage.retry import CONNECTION, TIMEOUT, TransientError

#: a registry that ignores ``Range`` and sends a whole blob up to this size is sliced
RANGE_FALLBACK_LIMIT = 4 << 20


class RangeIgnoredError(StorageError):
    """The registry answered a ``Range`` read with a whole blob too large to slice."""


class BlobAPI(RegistryTransport):
    """Blob read requests."""

    def blob_size(self, repository: str, digest: str) -> int | None:
        """``HEAD`` a blob: its size, or None if the repository does not have it."""
        what = f"{self.where(repository)}: blob {digest}"
        response = self._request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scope=pull_scope(repository), what=what
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, what, "HTTP 200 or 404")
        length = response.headers.get("Content-Length", "")
        if not length.isdigit():
            raise StorageError(f"{what}: HEAD: expected a Content-Length, found {length!r}")
        return int(length)

    def _get_blob(
        self,
        repository: str,
        digest: str,
        what: str,
        headers: dict[str, str] | None = None,
        *,
        retry: bool = True,
    ) -> httpx.Response:
        """``GET`` a blob, streamed: the caller reads and closes the body."""
        return self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=pull_scope(repository),
            what=what,
            headers=headers,
            stream=True,
            retry=retry,
        )

    def read_range(self, repository: str, digest: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (unverified: the caller checks chunks)."""
        what = f"{self.where(repository)}: blob {digest} range [{offset}, {offset + length})"
        if length <= 0:
            return b""
        last = offset + length - 1
        self.ping()

        def attempt() -> bytes:
            response = self._get_blob(
                repository, digest, what, {"Range": f"bytes={offset}-{last}"}, retry=False
            )
            with contextlib.closing(response):
                return self._range_body(response, offset, length, what)

        data = self._attempts(what, attempt)
        self.stats.add(bytes_downloaded=len(data))
        return data

    def _range_body(self, response: httpx.Response, offset: int, length: int, what: str) -> bytes:
        status = response.status_code
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            first, last, _ = _content_range(content_range)
            if first != offset or last is None or last > offset + length - 1:
                raise StorageError(
                    f"{what}: Content-Range: expected bytes {offset}-{offset + length - 1}/..., "
                    f"found {content_range!r}"
                )
            # A range that ends past the blob comes back short: counted below.
            data = self._read_capped(response, length, what, transient=True)
        elif status == 200:
            # The registry ignored Range: a small blob is sliced, a large one refused.
            size = response.headers.get("Content-Length", "")
            if not size.isdigit() or int(size) > RANGE_FALLBACK_LIMIT:
                raise RangeIgnoredError(
                    f"{what}: expected HTTP 206 for a Range request, found 200 with "
                    f"{size or 'an unknown number of'} bytes (over {RANGE_FALLBACK_LIMIT})"
                )
            data = self._read_capped(response, RANGE_FALLBACK_LIMIT, what, transient=True)
            data = data[offset : offset + length]
        elif status == 416:
            # The range starts at or past the end: the blob is shorter than its reader
            # was told, as with a short read of a local file.
            _, _, total = _content_range(response.headers.get("Content-Range", ""))
            response.close()
            raise IntegrityError(
                f"{what}: expected {length} bytes, found 0 (HTTP 416: the blob has "
                f"{total if total is not None else 'fewer'} bytes)"
            )
        else:
            raise self._fail(response, what, "HTTP 206")
        if len(data) != length:
            raise IntegrityError(f"{what}: expected {length} bytes, found {len(data)}")
        return data

    def read_blob(self, repository: str, digest: str, max_size: int | None = None) -> bytes:
        """The whole blob, checked against its digest."""
        what = f"{self.where(repository)}: blob {digest}"
        self.ping()

        def attempt() -> bytes:
            response = self._get_blob(repository, digest, what, retry=False)
            with contextlib.closing(response):
                if response.status_code != 200:
                    raise self._fail(response, what, "HTTP 200")
                return self._read_capped(response, max_size, what, transient=True)

        data = self._attempts(what, attempt)
        self.stats.add(bytes_downloaded=len(data))
        found = sha256_hex(data)
        if found != digest:
            raise IntegrityError(f"{what}: digest: expected {digest}, found {found}")
        return data

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> IO[bytes]:
        """The blob from byte ``offset`` as a stream (the reader checks the digest); a
        dropped connection is resumed with ``Range`` from where it broke."""
        return io.BufferedReader(_BlobStream(self, repository, digest, offset), buffer_size=BLOCK)

    def _open_stream(self, repository: str, digest: str, offset: int) -> httpx.Response:
        what = f"{self.where(repository)}: blob {digest}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._get_blob(repository, digest, what, headers)
        expected = 206 if offset else 200
        if response.status_code != expected:
            raise self._fail(response, what, f"HTTP {expected}")
        return response


class _BlobStream(io.RawIOBase):
    """A blob GET as a raw stream; resumes with ``Range`` after a dropped connection."""

    def __init__(self, client: BlobAPI, repository: str, digest: str, offset: int = 0) -> None:
        super().__init__()
        self._client = client
        self._repository = repository
        self._digest = digest
        self._position = offset
        self._size: int | None = None
        # One budget of attempts for the whole stream, however many times it breaks.
        self._attempts = client.retry.start(f"{client.where(repository)}: blob {digest}")
        self._response: httpx.Response | None = None
        self._blocks: Iterator[bytes] | None = None
        self._pending = b""
        self._open()

    def _open(self) -> None:
        response = self._client._open_stream(self._repository, self._digest, self._position)
        if self._size is None:  # the first answer: the blob from _position to its end
            length = response.headers.get("Content-Length", "")
            self._size = self._position + int(length) if length.isdigit() else None
        self._response = response
        self._blocks = response.iter_bytes(BLOCK)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            if self._blocks is None:
                return 0
            try:
                self._pending = next(self._blocks)
            except StopIteration:
                if self._size is not None and self._position < self._size:
                    self._resume(f"ended at byte {self._position} of {self._size}", CONNECTION)
                    continue
                self._close_response()
                return 0
            except httpx.TimeoutException as exc:
                self._resume(f"timed out at byte {self._position}: {exc}", TIMEOUT)
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                self._resume(f"connection lost at byte {self._position}: {exc}", CONNECTION)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._position += n
        self._client.stats.add(bytes_downloaded=n)
        return n

    def _resume(self, why: str, cause: str) -> None:
        """Open the stream again from where it broke, under the retry policy."""
        self._close_response()
        self._attempts.failed(TransientError(why, cause))  # raises when none is left
        self._client.stats.add(retries=1)
        self._open()

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
        self._response = None
        self._blocks = None

    def close(self) -> None:
        self._close_response()
        super().close()


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """``bytes FIRST-LAST/TOTAL`` (or ``bytes */TOTAL``) as numbers; None where absent."""
    unit, _, spec = value.strip().partition(" ")
    if unit != "bytes":
        return None, None, None
    span, _, total_text = spec.partition("/")
    first_text, _, last_text = span.partition("-")
    total = int(total_text) if total_text.isdigit() else None
    if not (first_text.isdigit() and last_text.isdigit()):
        return None, None, total
    return int(first_text), int(last_text), total
