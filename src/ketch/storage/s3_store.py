"""ImageStore over an OCI image layout kept under a prefix of an S3 bucket.

``s3://BUCKET/PREFIX`` holds exactly what ``oci:DIR`` holds on disk::

    PREFIX/oci-layout               {"imageLayoutVersion": "1.0.0"}
    PREFIX/index.json               the tags: descriptors with a ref.name annotation
    PREFIX/blobs/sha256/<hex>       every blob, manifests and configs included

so a layout can be copied between a directory and a bucket with ``aws s3 sync`` and
still be read by either store. Reads are ranged GETs (the lazy read path), whole GETs
checked against the digest, and HEADs.

Write order and what S3 does not give
-------------------------------------
S3 has no rename: an object appears whole when its PUT (or the completion of its
multipart upload) succeeds, and not before, so a blob is never seen half-written
under its digest. The order that keeps a tag from naming missing blobs is the
caller's and this store's: data blobs first, then the manifest blob, then
``index.json`` replaced last (``put_manifest``).

Moving a tag is a read-modify-write of ``index.json``. Two writers tagging the same
layout at the same time race: the last PUT wins and the other's tag is lost (never
half-written: the loser's manifest and blobs stay stored, just untagged). Ketch does
not lock; serialise writers to one prefix, or give each its own prefix.

Configuration is boto3's: the endpoint is the ``endpoint_url`` argument, else
``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL`` (the AWS CLI's spelling), else
AWS itself; region and credentials come from the usual ``AWS_*`` variables and
``~/.aws`` files. A custom endpoint is addressed path-style (``http://host/bucket/key``)
as S3-compatible servers expect. Requests are retried a bounded number of times
(botocore's ``standard`` mode) with connect and read timeouts. Creating the bucket is
not Ketch's job: a missing bucket is a clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import boto3
import botocore.config
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from ketch.config import RegistryConfig
from ketch.errors import (
    IntegrityError,
    KetchError,
    NotFoundError,
    StorageError,
    UnsupportedError,
)
from ketch.format.digests import oci_digest, sha256_hex
from ketch.oci import mediatypes as mt
from ketch.oci.index import empty_index, find_tag, follow_to_manifest, index_with_tag, tag_names
from ketch.oci.layout import digest_hex
from ketch.oci.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    Platform,
    canonical_json,
    load_json,
    parse_index,
)
from ketch.storage.store import ImageStore, copy_blob_checked
from ketch.temp_area import local_spool_area

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

_REGISTRY = RegistryConfig()  # the defaults: timeouts and retries, as the registry's
#: multipart uploads above this size, in parts of this size (S3's minimum part is 5 MiB)
DEFAULT_PART_SIZE = 64 << 20
MIN_PART_SIZE = 5 << 20
#: botocore retries each request this many times in all ("standard" mode: backoff, and
#: retries on throttling, 5xx and connection errors)
MAX_ATTEMPTS = _REGISTRY.retries + 1
CONNECT_TIMEOUT = _REGISTRY.connect_timeout
READ_TIMEOUT = _REGISTRY.timeout
MAX_CONNECTIONS = 32
#: an index may name an index; stop at a sane depth
#: a body that breaks off while it is read (after botocore's own retries are over) is
#: fetched again this many times in all
BODY_ATTEMPTS = 3
_BODY_ERRORS = (
    ResponseStreamingError,
    ReadTimeoutError,
    IncompleteReadError,
    ConnectionClosedError,
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_COPY_BLOCK = 1 << 20


def make_client(
    endpoint_url: str | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
    max_attempts: int = MAX_ATTEMPTS,
    region: str | None = None,
) -> S3Client:
    """An S3 client configured as the module docstring says; ``max_attempts`` counts
    the first try; ``region`` (else boto3's own choice) is ``[s3] region``."""
    endpoint = (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    config = botocore.config.Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=MAX_CONNECTIONS,
        tcp_keepalive=True,
        s3={"addressing_style": "path"} if endpoint else None,
    )
    try:
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
    except (BotoCoreError, ValueError) as exc:
        raise StorageError(f"S3 endpoint {endpoint or '(AWS)'}: {exc}") from exc


class S3Store(ImageStore):
    """One OCI image layout under ``s3://bucket/prefix``; see the module docstring."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise UnsupportedError(
                f"S3 multipart part size: expected >= {MIN_PART_SIZE}, found {part_size}"
            )
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint = str(client.meta.endpoint_url)
        self.transfer = TransferConfig(
            multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=4
        )
        self._scratch: Path | None = None

    @classmethod
    def open(
        cls,
        bucket: str,
        prefix: str,
        *,
        create: bool = False,
        endpoint_url: str | None = None,
        client: S3Client | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
        region: str | None = None,
    ) -> S3Store:
        """The layout at ``s3://bucket/prefix``; ``create`` writes ``oci-layout`` and an
        empty ``index.json`` where they are missing (never the bucket). Without a
        ``client``, one is made by ``make_client`` with the endpoint, timeouts and
        attempts given."""
        if client is None:
            client = make_client(
                endpoint_url,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_attempts=max_attempts,
                region=region,
            )
        store = cls(client, bucket, prefix, part_size=part_size)
        store._check_layout(create)
        return store

    # -- keys and errors --------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _blob_key(self, digest: str) -> str:
        return self._key(f"blobs/sha256/{digest_hex(digest)}")

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _error(self, exc: Exception, action: str, key: str, what: str | None) -> KetchError:
        url = self._url(key)
        if isinstance(exc, ClientError):
            error: dict[str, Any] = dict(exc.response.get("Error") or {})
            code = _code(exc)
            message = str(error.get("Message") or exc)
            if code == "NoSuchBucket":
                return NotFoundError(
                    f"s3://{self.bucket}: no such bucket at {self.endpoint} "
                    "(Ketch does not create buckets: create it first)"
                )
            if code in _NOT_FOUND_CODES:
                return NotFoundError(f"{url}: {what} not found" if what else f"{url}: not found")
            return StorageError(f"{url}: {action}: {code or 'error'}: {message}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"{url}: {action}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
        return StorageError(f"{url}: {action}: {exc}")

    @contextlib.contextmanager
    def _errors(self, action: str, key: str, what: str | None = None) -> Iterator[None]:
        """Map boto3's exceptions to Ketch's, naming bucket and key in one line."""
        try:
            yield
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise self._error(exc, action, key, what) from exc

    # -- the layout itself ------------------------------------------------------------

    def _check_layout(self, create: bool) -> None:
        layout_key = self._key("oci-layout")
        has_layout = self._exists(layout_key, via_get=True)
        has_index = self._exists(self._key("index.json"))
        if has_layout and has_index:
            return
        if not create:
            raise NotFoundError(
                f"{self.name}: not an OCI image layout (no oci-layout or index.json)"
            )
        if not has_layout:
            self._put(
                layout_key,
                canonical_json({"imageLayoutVersion": mt.OCI_LAYOUT_VERSION}),
                "application/json",
            )
        if not has_index:
            self._write_index([])

    def _exists(self, key: str, *, via_get: bool = False) -> bool:
        """Whether ``key`` exists. A HEAD answers 404 for a missing bucket too; a GET
        (``via_get``, for small objects) tells the two apart."""
        with self._errors("checking", key):
            try:
                if via_get:
                    self._fetch(key)
                else:
                    self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND_CODES:
                    return False
                raise
        return True

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        with self._errors("writing", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def _fetch(self, key: str, byte_range: str | None = None, max_size: int | None = None) -> bytes:
        """A whole object or a range of it, fetched again if its body breaks off; raises
        boto3's exceptions (callers map them with ``_errors``), and ``IntegrityError``
        for an object larger than ``max_size`` (before its body is read)."""
        for attempt in range(BODY_ATTEMPTS):
            response = (
                self.client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
                if byte_range
                else self.client.get_object(Bucket=self.bucket, Key=key)
            )
            body = response["Body"]
            try:
                with contextlib.closing(body):
                    size = int(response["ContentLength"])
                    if max_size is not None and size > max_size:
                        raise IntegrityError(
                            f"{self._url(key)}: size: expected <= {max_size}, found {size}"
                        )
                    return body.read()
            except _BODY_ERRORS:
                if attempt == BODY_ATTEMPTS - 1:
                    raise
        raise StorageError(f"{self._url(key)}: reading: gave up")  # pragma: no cover

    def _get(self, key: str, what: str | None = None, max_size: int | None = None) -> bytes:
        with self._errors("reading", key, what):
            return self._fetch(key, max_size=max_size)

    # -- the read path ----------------------------------------------------------------

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        key = self._blob_key(digest)
        where = f"{self.name}: blob {digest} range [{offset}, {offset + length})"
        if offset < 0 or length < 0:
            raise IntegrityError(f"{where}: expected offset and length >= 0")
        if length == 0:
            size = self.blob_size(digest)
            if offset > size:
                raise IntegrityError(f"{where}: expected offset <= {size}, found {offset}")
            return b""
        with self._errors("reading", key, f"blob {digest}"):
            try:
                data = self._fetch(key, f"bytes={offset}-{offset + length - 1}")
            except ClientError as exc:
                if _code(exc) != "InvalidRange":
                    raise
                data = b""  # the range starts at or past the end of the blob
        if len(data) != length:
            raise IntegrityError(f"{where}: expected {length} bytes, found {len(data)}")
        return data

    def blob_size(self, digest: str) -> int:
        key = self._blob_key(digest)
        with self._errors("checking", key, f"blob {digest}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def open_blob(self, digest: str) -> IO[bytes]:
        key = self._blob_key(digest)
        with self._errors("reading", key, f"blob {digest}"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return io.BufferedReader(_BodyStream(body, self._url(key)), buffer_size=_COPY_BLOCK)

    def read_blob(self, digest: str, max_size: int | None = None) -> bytes:
        key = self._blob_key(digest)
        data = self._get(key, f"blob {digest}", max_size)
        found = sha256_hex(data)
        if found != digest:
            raise IntegrityError(
                f"{self._url(key)}: blob {digest}: digest: expected {digest}, found {found}"
            )
        return data

    def has_blob(self, digest: str) -> bool:
        return self._exists(self._blob_key(digest))

    def resolve(
        self, tag: str, platform: Platform | None = None
    ) -> tuple[Descriptor, Manifest, bytes]:
        return follow_to_manifest(
            lambda digest: self.read_blob(digest, max_size=MAX_MANIFEST_SIZE),
            self._tagged(tag),
            platform,
            f"{self.name}:{tag}",
        )

    # -- tags (index.json) ------------------------------------------------------------

    def _index_doc(self) -> dict[str, Any]:
        key = self._key("index.json")
        return load_json(self._get(key, "index.json"), self._url(key))

    def tags(self) -> list[str]:
        return tag_names(self._descriptors())

    def _descriptors(self) -> list[Descriptor]:
        key = self._key("index.json")
        return parse_index(canonical_json(self._index_doc()), self._url(key))

    def _tagged(self, tag: str) -> Descriptor:
        return find_tag(self._descriptors(), tag, self.name)

    def _set_tag(self, tag: str, descriptor: Descriptor) -> None:
        """Point ``tag`` at ``descriptor``: one PUT of index.json (racy, see the module)."""
        self._put(
            self._key("index.json"),
            index_with_tag(self._index_doc(), tag, descriptor),
            mt.OCI_INDEX,
        )

    def _write_index(self, manifests: list[Any]) -> None:
        # Byte for byte what OciLayout writes on disk.
        self._put(self._key("index.json"), empty_index(manifests), mt.OCI_INDEX)

    # -- the write path ---------------------------------------------------------------

    def scratch_dir(self) -> Path:
        """A local temporary directory (removed with the store): S3 has nowhere to spool."""
        if self._scratch is None:
            path = Path(tempfile.mkdtemp(prefix="s3-", dir=local_spool_area().own_dir()))
            weakref.finalize(self, shutil.rmtree, path, True)
            self._scratch = path
        return self._scratch

    def _in_scratch(self, path: Path) -> bool:
        return self._scratch is not None and path.parent.resolve() == self._scratch.resolve()

    def push_blob_file(self, path: Path, digest: str) -> None:
        key = self._blob_key(digest)
        if self.has_blob(digest):
            path.unlink(missing_ok=True)
            return
        if not self._in_scratch(path):
            # Files from our scratch dir were digested while they were written; others
            # are checked first, since an upload cannot be taken back once it completes.
            found = _file_digest(path)
            if found != digest:
                raise StorageError(f"{self.name}: pushing {digest}: file has digest {found}")
        # One PUT, or a multipart upload that S3 publishes whole on completion (and that
        # the transfer manager aborts on failure).
        with self._errors("uploading", key):
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={"ContentType": "application/octet-stream"},
                Config=self.transfer,
            )
        path.unlink(missing_ok=True)

    def push_blob_bytes(self, data: bytes, digest: str) -> None:
        found = sha256_hex(data)
        if found != digest:
            raise StorageError(f"{self.name}: pushing {digest}: data has digest {found}")
        if not self.has_blob(digest):
            self._put(self._blob_key(digest), data, "application/octet-stream")

    def copy_blob_from(self, other: ImageStore, digest: str) -> None:
        if self.has_blob(digest):
            return
        key = self._blob_key(digest)
        if (
            isinstance(other, S3Store)
            and other.endpoint == self.endpoint
            and other.bucket == self.bucket
        ):
            # Same bucket, same trust: a server-side copy, no bytes through this host.
            source: CopySourceTypeDef = {"Bucket": other.bucket, "Key": other._blob_key(digest)}
            with self._errors("copying", key, f"blob {digest} in {other.name}"):
                self.client.copy(source, self.bucket, key, Config=self.transfer)
            return
        # Anywhere else: spooled locally while its digest is checked, then uploaded, so
        # a blob that is not what its name says is never stored under that name.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.scratch_dir())
        try:
            with os.fdopen(fd, "wb") as out:
                copy_blob_checked(other, digest, out)
            self.push_blob_file(Path(tmp), digest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put_manifest(self, data: bytes, media_type: str, tag: str) -> Descriptor:
        digest = sha256_hex(data)
        if not self.has_blob(digest):
            self._put(self._blob_key(digest), data, media_type)
        descriptor = Descriptor(media_type, digest, len(data))
        self._set_tag(tag, descriptor)  # last: the tag never names what is not stored
        return descriptor


class _BodyStream(io.RawIOBase):
    """A GET's streaming body as a raw stream whose errors are Ketch's."""

    def __init__(self, body: StreamingBody, url: str) -> None:
        self._body = body
        self._url = url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"{self._url}: reading: {exc}") from exc
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _code(exc: ClientError) -> str:
    return str((exc.response.get("Error") or {}).get("Code") or "")


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_COPY_BLOCK):
            sha.update(block)
    return oci_digest(sha)
