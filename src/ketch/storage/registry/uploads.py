"""Blob uploads to a registry (distribution spec: "Pushing blobs").

Monolithic (``POST`` then ``PUT ?digest=``) up to ``chunk_size``, chunked (``POST``,
``PATCH`` with ``Content-Range`` per chunk, ``PUT ?digest=``) above it, and
cross-repository mount (``POST ?mount=&from=``: 201 mounted, 202 an upload follows).
An upload is one attempt of the retry policy: a failure restarts it from a new session.
The bytes are hashed on the way and the upload is cancelled (``DELETE``) before it
commits if they are not the digest, so a registry never stores wrong bytes from us.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import IO

import httpx

from ketch.errors import IntegrityError, KetchError, StorageError
from ketch.format.digests import oci_digest
from ketch.storage.registry.auth import pull_scope, push_scope
from ketch.storage.registry.transport import BLOCK, RegistryTransport
from ketch.storage.retry import TransientError

_UPLOAD_CONTENT_TYPE = "application/octet-stream"


class UploadAPI(RegistryTransport):
    """Blob upload requests."""

    def push_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        open_source: Callable[[], IO[bytes]],
        *,
        mount_from: str | None = None,
        source_name: str | None = None,
    ) -> str:
        """Upload a blob from a stream (opened again for each attempt); first try a
        cross-repository mount from ``mount_from``. Returns "mounted" or "uploaded".

        The bytes are hashed on the way: if they are not ``digest`` the upload is
        cancelled before it completes, so nothing is stored. That is an IntegrityError
        naming ``source_name`` when the bytes came from another store, else a
        StorageError (the local file was not what its caller said)."""
        what = f"{self.where(repository)}: pushing blob {digest}"
        scope = push_scope(repository)
        if mount_from:
            scope = f"{scope} {pull_scope(mount_from)}"
        self.ping()

        def attempt() -> str:
            location = self._start_upload(repository, digest, mount_from, scope, what)
            if location is None:
                self.stats.add(blobs_mounted=1)
                return "mounted"
            with open_source() as source:
                check = _DigestCheck(digest, what, source_name)
                if size <= self.options.chunk_size:
                    self._upload_monolithic(location, source, size, scope, check)
                else:
                    self._upload_chunked(location, source, size, scope, check)
            self.stats.add(blobs_uploaded=1)
            return "uploaded"

        return self._attempts(what, attempt)

    def _start_upload(
        self, repository: str, digest: str, mount_from: str | None, scope: str, what: str
    ) -> httpx.URL | None:
        url = self._url(f"/v2/{repository}/blobs/uploads/")
        if mount_from:
            url = url.copy_merge_params({"mount": digest, "from": mount_from})
        response = self._request(
            "POST", url, scope=scope, what=what, headers={"Content-Length": "0"}, retry=False
        )
        if response.status_code == 201 and mount_from:
            return None
        if response.status_code != 202:
            raise self._fail(response, what, "HTTP 202 (upload started)")
        return self._location(response, what)

    def _location(self, response: httpx.Response, what: str) -> httpx.URL:
        location = response.headers.get("Location")
        if not location:
            raise StorageError(f"{what}: HTTP {response.status_code} without a Location")
        return response.request.url.join(location)

    def _upload_monolithic(
        self, location: httpx.URL, source: IO[bytes], size: int, scope: str, check: _DigestCheck
    ) -> None:
        data = _read_exactly(source, size, check.what)
        check.update(data)
        self._verify_before_commit(location, scope, check)
        response = self._request(
            "PUT",
            location.copy_merge_params({"digest": check.digest}),
            scope=scope,
            what=check.what,
            headers={"Content-Type": _UPLOAD_CONTENT_TYPE, "Content-Length": str(size)},
            body=data,
            retry=False,
        )
        self._finish_upload(response, check.digest, check.what)
        self.stats.add(bytes_uploaded=size)

    def _upload_chunked(
        self, location: httpx.URL, source: IO[bytes], size: int, scope: str, check: _DigestCheck
    ) -> None:
        what = check.what
        offset = 0
        while offset < size:
            data = _read_exactly(source, min(self.options.chunk_size, size - offset), what)
            check.update(data)
            end = offset + len(data) - 1
            response = self._request(
                "PATCH",
                location,
                scope=scope,
                what=what,
                headers={
                    "Content-Type": _UPLOAD_CONTENT_TYPE,
                    "Content-Range": f"{offset}-{end}",
                    "Content-Length": str(len(data)),
                },
                body=data,
                retry=False,
            )
            if response.status_code != 202:
                raise self._fail(response, what, f"HTTP 202 for bytes {offset}-{end}")
            received = response.headers.get("Range")
            if received and received != f"0-{end}":
                raise StorageError(f"{what}: upload Range: expected 0-{end}, found {received}")
            location = self._location(response, what)
            offset = end + 1
            self.stats.add(bytes_uploaded=len(data))
        self._verify_before_commit(location, scope, check)
        response = self._request(
            "PUT",
            location.copy_merge_params({"digest": check.digest}),
            scope=scope,
            what=what,
            headers={"Content-Length": "0"},
            retry=False,
        )
        self._finish_upload(response, check.digest, what)

    def _verify_before_commit(self, location: httpx.URL, scope: str, check: _DigestCheck) -> None:
        """Cancel the upload (``DELETE``, best effort) if the bytes are not the digest."""
        error = check.mismatch()
        if error is None:
            return
        with contextlib.suppress(KetchError, TransientError):
            self._request("DELETE", location, scope=scope, what=check.what, retry=False).close()
        raise error

    def _finish_upload(self, response: httpx.Response, digest: str, what: str) -> None:
        if response.status_code == 400 and "DIGEST_INVALID" in response.text:
            raise StorageError(f"{what}: the registry found the uploaded bytes have another digest")
        if response.status_code != 201:
            raise self._fail(response, what, "HTTP 201 (blob created)")
        found = response.headers.get("Docker-Content-Digest")
        if found and found != digest:
            raise IntegrityError(f"{what}: registry digest: expected {digest}, found {found}")


class _DigestCheck:
    """The sha256 of an upload's bytes, compared with the digest before it commits."""

    def __init__(self, digest: str, what: str, source_name: str | None) -> None:
        self.digest = digest
        self.what = what
        self.source_name = source_name
        self._sha = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._sha.update(data)

    def mismatch(self) -> KetchError | None:
        found = oci_digest(self._sha)
        if found == self.digest:
            return None
        if self.source_name:
            return IntegrityError(
                f"{self.source_name}: blob {self.digest}: digest: expected {self.digest}, "
                f"found {found}"
            )
        return StorageError(f"{self.what}: the data has digest {found}")


def _read_exactly(source: IO[bytes], size: int, what: str) -> bytes:
    out = bytearray()
    while len(out) < size:
        block = source.read(min(BLOCK, size - len(out)))
        if not block:
            raise IntegrityError(f"{what}: source: expected {size} bytes, found {len(out)}")
        out += block
    return bytes(out)
