"""A client of the OCI distribution spec (registry API v2), on httpx.

What it speaks:

- ``GET /v2/`` ping, which also learns the auth scheme (``registry_auth``);
- manifests and indexes (OCI and Docker schema 2) by tag or digest, GET/HEAD/PUT, with a
  platform chosen from an index (linux/amd64 unless told);
- blobs: HEAD, GET whole (checked against the digest), GET with ``Range`` (checked later,
  chunk by chunk, by the reader), streamed GET that resumes with ``Range`` after a
  dropped connection; redirects followed by hand (registries send blob reads to object
  stores), never carrying ``Authorization`` to another host;
- uploads: monolithic (``POST`` then ``PUT ?digest=``) up to ``chunk_size``, chunked
  (``POST``, ``PATCH`` with ``Content-Range`` per chunk, ``PUT ?digest=``) above it, and
  cross-repository mount (``POST ?mount=&from=``: 201 mounted, 202 an upload follows);
- the referrers API (``GET /v2/<name>/referrers/<digest>``) and, where a registry lacks it
  (404), the fallback tag schema: an index tagged ``sha256-<hex>`` of the subject.

Hosts on loopback (localhost, 127.0.0.0/8, ::1) are plain HTTP, as Docker treats them;
elsewhere HTTPS, verified against the system trust store plus ``ca_file``, unless
``tls_verify`` is False (then HTTP is tried when HTTPS cannot connect, as skopeo does).
A ``scheme`` given to the client (a mirror's URL says it) is used as it is. With
``proxy`` every request goes through that HTTP proxy (httpx's ``proxy=``; plain HTTP is
forwarded, HTTPS tunnelled with ``CONNECT``).

Failures: 429, 5xx, connection errors, resets, answers cut short and timeouts are
retried ``retries`` times by the one policy of ``retry.py`` (exponential backoff and
jitter, ``Retry-After`` honoured up to ``max_retry_wait``), for every kind of request:
ping, token, manifest and tag reads, blob reads whole, ranged or streamed (a stream
resumes with ``Range``), tags, referrers and uploads (an upload restarts from a new
session). Then ``StorageError``; ``fault_stats()`` counts what was met, by cause.
404 is ``NotFoundError``,
401/403 ``UsageError`` (with a hint), digest mismatches ``IntegrityError``; a
registry that answers a large ``Range`` read with the whole blob is ``RangeIgnoredError``
(a ``StorageError``: a cold pull-through cache does that until it has stored the blob).
Every message names the registry, repository and digest, and what was expected and found.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import io
import ipaddress
import json
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import httpx

from ketch.config import RegistryOptions
from ketch.errors import IntegrityError, KetchError, NotFoundError, StorageError, UsageError
from ketch.oci import mediatypes as mt
from ketch.oci.index import choose_platform
from ketch.oci.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    Platform,
    canonical_json,
    media_type_of,
    parse_index,
)
from ketch.storage.registry_auth import (
    Authenticator,
    Credentials,
    find_credentials,
    pull_scope,
    push_scope,
)
from ketch.storage.retry import (
    CONNECTION,
    TIMEOUT,
    FaultCounters,
    FaultStats,
    RetryPolicy,
    TransientError,
)

T = TypeVar("T")

MANIFEST_ACCEPT = ", ".join(
    (mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
)
#: a registry that ignores ``Range`` and sends a whole blob up to this size is sliced
RANGE_FALLBACK_LIMIT = 4 << 20
MAX_REDIRECTS = 5
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_BLOCK = 1 << 20
_UPLOAD_CONTENT_TYPE = "application/octet-stream"


@dataclass(slots=True)
class TransferStats:
    requests: int = 0
    retries: int = 0
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


@dataclass(frozen=True, slots=True)
class PushedManifest:
    descriptor: Descriptor
    subject_indexed: bool  # the registry answered OCI-Subject: it keeps referrers itself


class RangeIgnoredError(StorageError):
    """The registry answered a ``Range`` read with a whole blob too large to slice."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name[:port]``, ``[v6]:port``) is this machine's loopback."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _api_host(registry: str) -> str:
    return "registry-1.docker.io" if registry in ("docker.io", "index.docker.io") else registry


class RegistryClient:
    """One registry: connections, auth state, retries. Safe to share between threads."""

    def __init__(
        self,
        registry: str,
        options: RegistryOptions | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        credentials: Credentials | None = None,
        sleep: Callable[[float], None] = time.sleep,
        scheme: str | None = None,
        fallback: bool = False,
    ) -> None:
        """``scheme`` ("http" or "https") overrides the loopback rule and the plain-HTTP
        fallback: a mirror configured by URL is reached exactly as its URL says.
        ``fallback``: the caller reads from another source when this one gives up (a
        mirror), so giving up is logged as a WARNING."""
        self.registry = registry
        self.options = options or RegistryOptions()
        self.stats = TransferStats()
        opts = self.options
        self.faults = FaultCounters()
        self.retry = RetryPolicy(
            opts.retries,
            opts.backoff,
            opts.max_retry_wait,
            sleep=sleep,
            counters=self.faults,
            fallback=fallback,
        )
        if credentials is None:
            credentials = find_credentials(registry, opts.creds, opts.docker_config)
        self.auth = Authenticator(registry, credentials, self._fetch_token)
        host = _api_host(registry)
        self._schemes = ["http"] if is_loopback(host) else ["https"]
        if not opts.tls_verify and not is_loopback(host):
            self._schemes.append("http")
        if scheme is not None:
            if scheme not in ("http", "https"):
                raise UsageError(f"{registry}: scheme: expected http or https, found {scheme!r}")
            self._schemes = [scheme]
        self.base_url = f"{self._schemes[0]}://{host}"
        verify: ssl.SSLContext | bool = False
        if opts.tls_verify:
            context = ssl.create_default_context()
            if opts.ca_file is not None:
                try:
                    context.load_verify_locations(cafile=str(opts.ca_file))
                except (OSError, ssl.SSLError) as exc:
                    raise UsageError(
                        f"{opts.ca_file}: cannot load CA certificates: {exc}"
                    ) from None
            verify = context
        try:
            self._http = httpx.Client(
                timeout=httpx.Timeout(opts.read_timeout, connect=opts.connect_timeout),
                verify=verify,
                follow_redirects=False,
                transport=transport,
                headers={"User-Agent": "ketch"},
                proxy=opts.proxy or None,
            )
        except (ValueError, httpx.InvalidURL) as exc:
            raise UsageError(
                f"proxy {opts.proxy!r}: expected a URL such as http://HOST:PORT ({exc})"
            ) from None
        self._finalizer = weakref.finalize(self, self._http.close)
        self._pinged = False
        self._ping_lock = threading.Lock()

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fault_stats(self) -> FaultStats:
        """Retries, failures by cause and timeouts of this client's requests so far."""
        return self.faults.snapshot()

    def where(self, repository: str | None = None) -> str:
        return (
            f"docker://{self.registry}/{repository}" if repository else f"docker://{self.registry}"
        )

    # -- requests, retries, auth, redirects ---------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: the registry answers, and says which auth it wants."""
        with self._ping_lock:
            if self._pinged:
                return
            what = f"{self.where()}: GET /v2/"
            for number, scheme in enumerate(self._schemes):
                self.base_url = f"{scheme}://{_api_host(self.registry)}"
                final = number == len(self._schemes) - 1
                try:
                    response = self._request(
                        "GET", "/v2/", scope=None, what=what, ping=True, retry=final
                    )
                except TransientError:
                    continue  # HTTPS did not connect; tls_verify=False: try plain HTTP
                with contextlib.closing(response):
                    if response.status_code == 401:
                        self.auth.learn(response.headers.get("WWW-Authenticate"))
                    elif response.status_code != 200:
                        raise StorageError(
                            f"{self.where()}: GET /v2/: expected 200 or 401 from a registry, "
                            f"found HTTP {response.status_code}"
                        )
                self._pinged = True
                return

    def _url(self, path: str) -> httpx.URL:
        return httpx.URL(self.base_url).join(path)

    def _same_origin(self, url: httpx.URL) -> bool:
        base = httpx.URL(self.base_url)
        return (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)

    def _request(
        self,
        method: str,
        path: str | httpx.URL,
        *,
        scope: str | None,
        what: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        stream: bool = False,
        retry: bool = True,
        ping: bool = False,
    ) -> httpx.Response:
        """Send, with auth, redirects and (if ``retry``) the retry policy; the final
        response, any status. Without ``retry`` a transient failure raises
        ``TransientError`` (the caller's own attempt is retried as a whole)."""
        if not ping:
            self.ping()
        if not retry:
            return self._send_once(method, path, scope, what, headers, body, stream)
        return self._attempts(
            what, lambda: self._send_once(method, path, scope, what, headers, body, stream)
        )

    def _attempts(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()`` under the retry policy, each retry counted in ``stats``."""

        def counted() -> T:
            if attempts:
                self.stats.add(retries=1)
            attempts.append(None)
            return attempt()

        attempts: list[None] = []
        return self.retry.run(what, counted)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """How long to wait before attempt ``attempt + 1`` (``RetryPolicy.wait``)."""
        return self.retry.wait(attempt, retry_after)

    def _send_once(
        self,
        method: str,
        path: str | httpx.URL,
        scope: str | None,
        what: str,
        headers: dict[str, str] | None,
        body: bytes | None,
        stream: bool,
    ) -> httpx.Response:
        url = path if isinstance(path, httpx.URL) else self._url(path)
        reauthorized = False
        redirects = 0
        while True:
            request_headers = dict(headers or {})
            sent_auth: str | None = None
            if self._same_origin(url) and scope is not None:
                try:
                    sent_auth = self.auth.authorization(scope)
                except KetchError as exc:  # fetching a token failed
                    raise type(exc)(f"{what}: {exc}") from None
                if sent_auth:
                    request_headers["Authorization"] = sent_auth
            request = self._http.build_request(method, url, headers=request_headers, content=body)
            self.stats.add(requests=1)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise TransientError(
                    f"{method} {url}: timed out ({type(exc).__name__})", TIMEOUT
                ) from None
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise TransientError(
                    f"{method} {url}: connection failed: {exc or type(exc).__name__}", CONNECTION
                ) from None
            except httpx.TransportError as exc:
                raise StorageError(f"{what}: {method} {url}: {exc or type(exc).__name__}") from None
            status = response.status_code
            if status in _REDIRECT_STATUS and method in ("GET", "HEAD"):
                location = response.headers.get("Location")
                response.close()
                if not location:
                    raise StorageError(f"{what}: HTTP {status} redirect without a Location")
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise StorageError(f"{what}: more than {MAX_REDIRECTS} redirects")
                url = url.join(location)
                continue
            if status == 401 and scope is not None and self._same_origin(url) and not reauthorized:
                challenge = response.headers.get("WWW-Authenticate")
                response.close()
                try:
                    self.auth.challenged(challenge, scope, sent_auth)
                except KetchError as exc:
                    raise type(exc)(f"{what}: {exc}") from None
                reauthorized = True
                continue
            if status in _RETRY_STATUS:
                retry_after = _retry_after(response.headers.get("Retry-After"))
                detail = _error_detail(response)
                raise TransientError(
                    f"{method} {url}: HTTP {status}{detail}", f"http_{status}", retry_after
                )
            if not stream:
                try:
                    response.read()
                except httpx.TimeoutException as exc:
                    response.close()
                    raise TransientError(
                        f"{method} {url}: timed out reading after "
                        f"{response.num_bytes_downloaded} bytes ({type(exc).__name__})",
                        TIMEOUT,
                    ) from None
                except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                    response.close()
                    raise TransientError(
                        f"{method} {url}: connection lost after "
                        f"{response.num_bytes_downloaded} bytes: {exc or type(exc).__name__}",
                        CONNECTION,
                    ) from None
            return response

    def _fail(self, response: httpx.Response, what: str, expected: str) -> KetchError:
        """The error for an unexpected final status (the response is closed)."""
        status = response.status_code
        detail = _error_detail(response)
        response.close()
        if status == 404:
            return NotFoundError(f"{what}: not found (HTTP 404{detail})")
        if status == 401:
            return UsageError(
                f"{what}: unauthorized (HTTP 401{detail}); give --creds USER:PASSWORD"
            )
        if status == 403:
            return UsageError(
                f"{what}: forbidden (HTTP 403{detail}); the credentials lack this permission"
            )
        return StorageError(f"{what}: expected {expected}, found HTTP {status}{detail}")

    def _fetch_token(
        self, realm: str, service: str | None, scopes: list[str], creds: Credentials | None
    ) -> tuple[str, float]:
        """GET a bearer token from the realm (distribution token auth spec)."""
        params: list[tuple[str, str | int | float | bool | None]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        url = httpx.URL(realm).copy_merge_params(params)
        headers = {"Authorization": creds.basic_header()} if creds else {}
        what = f"token from {realm}"
        response = self._request("GET", url, scope=None, what=what, headers=headers, ping=True)
        if response.status_code in (401, 403):
            response.close()
            who = f"for {creds.username!r}" if creds else "anonymously"
            hint = "check --creds USER:PASSWORD" if creds else "give --creds USER:PASSWORD"
            raise UsageError(
                f"{what}: the token server refused {who} (HTTP {response.status_code}); {hint}"
            )
        if response.status_code != 200:
            raise self._fail(response, what, "HTTP 200 with a token")
        try:
            doc = json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise StorageError(f"{what}: expected JSON with a token, found none")
        lifetime = doc.get("expires_in") if isinstance(doc, dict) else None
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = 60.0
        return token, float(lifetime)

    # -- manifests ----------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> tuple[Descriptor, bytes]:
        """A manifest or index by tag or digest, checked against the digest."""
        what = f"{self.where(repository)}: manifest {reference}"
        self.ping()

        def attempt() -> tuple[httpx.Response, bytes]:
            response = self._request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                scope=pull_scope(repository),
                what=what,
                headers={"Accept": MANIFEST_ACCEPT},
                stream=True,
                retry=False,
            )
            with contextlib.closing(response):
                if response.status_code != 200:
                    raise self._fail(response, what, "HTTP 200")
                return response, self._read_capped(
                    response, MAX_MANIFEST_SIZE, what, transient=True
                )

        response, data = self._attempts(what, attempt)
        found = "sha256:" + hashlib.sha256(data).hexdigest()
        expected = reference if reference.startswith("sha256:") else None
        expected = expected or response.headers.get("Docker-Content-Digest")
        if expected and expected.startswith("sha256:") and expected != found:
            raise IntegrityError(f"{what}: digest: expected {expected}, found {found}")
        kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        if kind not in mt.MANIFEST_TYPES + mt.INDEX_TYPES:
            kind = media_type_of(data, what)
        return Descriptor(kind, found, len(data)), data

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        what = f"{self.where(repository)}: manifest {reference}"
        response = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scope=pull_scope(repository),
            what=what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, what, "HTTP 200 or 404")
        digest = response.headers.get("Docker-Content-Digest", "")
        size = response.headers.get("Content-Length", "")
        kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest.startswith("sha256:") or not size.isdigit():
            raise StorageError(
                f"{what}: HEAD: expected Docker-Content-Digest and Content-Length, "
                f"found {digest or 'no digest'} and {size or 'no length'}"
            )
        return Descriptor(kind, digest, int(size))

    def resolve(
        self, repository: str, reference: str, platform: Platform | None = None
    ) -> tuple[Descriptor, Manifest, bytes]:
        """The image manifest ``reference`` names, choosing ``platform`` from an index."""
        where = f"{self.where(repository)}:{reference}"
        try:
            descriptor, data = self.get_manifest(repository, reference)
        except NotFoundError:
            if reference.startswith("sha256:"):
                raise
            raise NotFoundError(f"{where}: no such tag ({self._tags_hint(repository)})") from None
        for _ in range(4):  # an index may name an index; stop at a sane depth
            kind = descriptor.media_type or media_type_of(data, where)
            if kind not in mt.INDEX_TYPES:
                return descriptor, Manifest.parse(data, f"{where} manifest", kind), data
            chosen = choose_platform(parse_index(data, f"{where} index"), platform, where)
            child, data = self.get_manifest(repository, chosen.digest)
            if child.size != chosen.size:
                raise IntegrityError(
                    f"{where}: manifest {chosen.digest}: size: expected {chosen.size}, "
                    f"found {child.size}"
                )
            descriptor = Descriptor(
                chosen.media_type or child.media_type,
                child.digest,
                child.size,
                platform=chosen.platform,
            )
        raise StorageError(f"{where}: image indexes nested too deep")

    def put_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str
    ) -> PushedManifest:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        what = f"{self.where(repository)}: pushing manifest {digest} as {reference}"
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=push_scope(repository),
            what=what,
            headers={"Content-Type": media_type},
            body=data,
        )
        if response.status_code not in (200, 201):
            raise self._fail(response, what, "HTTP 201")
        found = response.headers.get("Docker-Content-Digest")
        if found and found != digest:
            raise IntegrityError(f"{what}: registry digest: expected {digest}, found {found}")
        return PushedManifest(
            Descriptor(media_type, digest, len(data)), "OCI-Subject" in response.headers
        )

    def _tags_hint(self, repository: str) -> str:
        """``tags: a, b`` for a message (referrers fallback tags left out), best effort."""
        try:
            tags = [t for t in self.tags(repository) if not t.startswith("sha256-")]
        except KetchError:
            return "tags: unknown"
        return f"tags: {', '.join(tags) or 'none'}"

    def tags(self, repository: str) -> list[str]:
        """The repository's tags (``GET /v2/<name>/tags/list``, every page); none if the
        repository does not exist."""
        what = f"{self.where(repository)}: tags"
        url = self._url(f"/v2/{repository}/tags/list")
        found: list[str] = []
        for _ in range(1000):  # pages
            response = self._request("GET", url, scope=pull_scope(repository), what=what)
            if response.status_code == 404:
                return found
            if response.status_code != 200:
                raise self._fail(response, what, "HTTP 200")
            try:
                doc = json.loads(response.content)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise StorageError(f"{what}: expected JSON, found invalid data") from None
            tags = doc.get("tags") if isinstance(doc, dict) else None
            found.extend(t for t in tags or [] if isinstance(t, str))
            next_url = _next_link(response.headers.get("Link"))
            if next_url is None:
                break
            url = url.join(next_url)
        return found

    # -- referrers ------------------------------------------------------------------------

    def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``digest``: the referrers API, else the
        fallback tag ``sha256-<hex>`` (an index), else none."""
        what = f"{self.where(repository)}: referrers of {digest}"
        url = self._url(f"/v2/{repository}/referrers/{digest}")
        if artifact_type:
            url = url.copy_merge_params({"artifactType": artifact_type})
        found: list[Descriptor] = []
        for _ in range(100):  # pages
            response = self._request(
                "GET",
                url,
                scope=pull_scope(repository),
                what=what,
                headers={"Accept": mt.OCI_INDEX},
            )
            if response.status_code == 404 and not found:
                found = self._fallback_referrers(repository, digest)
                break
            if response.status_code != 200:
                raise self._fail(response, what, "HTTP 200")
            found.extend(parse_index(response.content, what))
            next_url = _next_link(response.headers.get("Link"))
            if next_url is None:
                break
            url = url.join(next_url)
        if artifact_type:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    def _fallback_referrers(self, repository: str, digest: str) -> list[Descriptor]:
        try:
            _, data = self.get_manifest(repository, fallback_tag(digest))
        except NotFoundError:
            return []
        return parse_index(data, f"{self.where(repository)}:{fallback_tag(digest)}")

    def add_referrer_fallback(self, repository: str, subject: str, referrer: Descriptor) -> None:
        """Add ``referrer`` to the fallback tag index of ``subject`` (distribution spec,
        "Pushing Manifests with Subject", for registries without the referrers API)."""
        tag = fallback_tag(subject)
        try:
            _, data = self.get_manifest(repository, tag)
            entries = parse_index(data, f"{self.where(repository)}:{tag}")
        except NotFoundError:
            entries = []
        if any(d.digest == referrer.digest for d in entries):
            return
        entries.append(referrer)
        doc = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [d.to_json() for d in entries],
        }
        self.put_manifest(repository, tag, canonical_json(doc), mt.OCI_INDEX)

    # -- blobs: reads -------------------------------------------------------------------

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

    def read_range(self, repository: str, digest: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (unverified: the caller checks chunks)."""
        what = f"{self.where(repository)}: blob {digest} range [{offset}, {offset + length})"
        if length <= 0:
            return b""
        last = offset + length - 1
        self.ping()

        def attempt() -> bytes:
            response = self._request(
                "GET",
                f"/v2/{repository}/blobs/{digest}",
                scope=pull_scope(repository),
                what=what,
                headers={"Range": f"bytes={offset}-{last}"},
                stream=True,
                retry=False,
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
            response = self._request(
                "GET",
                f"/v2/{repository}/blobs/{digest}",
                scope=pull_scope(repository),
                what=what,
                stream=True,
                retry=False,
            )
            with contextlib.closing(response):
                if response.status_code != 200:
                    raise self._fail(response, what, "HTTP 200")
                return self._read_capped(response, max_size, what, transient=True)

        data = self._attempts(what, attempt)
        self.stats.add(bytes_downloaded=len(data))
        found = "sha256:" + hashlib.sha256(data).hexdigest()
        if found != digest:
            raise IntegrityError(f"{what}: digest: expected {digest}, found {found}")
        return data

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> IO[bytes]:
        """The blob from byte ``offset`` as a stream (the reader checks the digest); a
        dropped connection is resumed with ``Range`` from where it broke."""
        return io.BufferedReader(_BlobStream(self, repository, digest, offset), buffer_size=_BLOCK)

    def _open_stream(self, repository: str, digest: str, offset: int) -> httpx.Response:
        what = f"{self.where(repository)}: blob {digest}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=pull_scope(repository),
            what=what,
            headers=headers,
            stream=True,
        )
        expected = 206 if offset else 200
        if response.status_code != expected:
            raise self._fail(response, what, f"HTTP {expected}")
        return response

    def _read_capped(
        self, response: httpx.Response, limit: int | None, what: str, *, transient: bool = False
    ) -> bytes:
        """The body of a streamed response, refusing more than ``limit`` bytes."""
        out = bytearray()
        try:
            for block in response.iter_bytes(_BLOCK):
                out += block
                if limit is not None and len(out) > limit:
                    raise IntegrityError(f"{what}: size: expected <= {limit} bytes, found more")
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            # Bytes that arrived, not bytes handed out (those come in blocks of _BLOCK).
            arrived = response.num_bytes_downloaded
            timed_out = isinstance(exc, httpx.TimeoutException)
            message = (
                f"{'timed out' if timed_out else 'connection lost'} after {arrived} bytes: "
                f"{exc or type(exc).__name__}"
            )
            if transient:
                raise TransientError(message, TIMEOUT if timed_out else CONNECTION) from None
            raise StorageError(f"{what}: {message}") from None
        return bytes(out)

    # -- blobs: writes ------------------------------------------------------------------

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
        found = "sha256:" + self._sha.hexdigest()
        if found == self.digest:
            return None
        if self.source_name:
            return IntegrityError(
                f"{self.source_name}: blob {self.digest}: digest: expected {self.digest}, "
                f"found {found}"
            )
        return StorageError(f"{self.what}: the data has digest {found}")


class _BlobStream(io.RawIOBase):
    """A blob GET as a raw stream; resumes with ``Range`` after a dropped connection."""

    def __init__(
        self, client: RegistryClient, repository: str, digest: str, offset: int = 0
    ) -> None:
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
        self._blocks = response.iter_bytes(_BLOCK)

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


def fallback_tag(digest: str) -> str:
    """The referrers fallback tag of a digest: ``sha256:<hex>`` -> ``sha256-<hex>``."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}"[:128]


def _read_exactly(source: IO[bytes], size: int, what: str) -> bytes:
    out = bytearray()
    while len(out) < size:
        block = source.read(min(_BLOCK, size - len(out)))
        if not block:
            raise IntegrityError(f"{what}: source: expected {size} bytes, found {len(out)}")
        out += block
    return bytes(out)


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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_detail(response: httpx.Response) -> str:
    """`` CODE: message`` from a registry's JSON error body, if it has one."""
    data = bytearray()
    try:
        for block in response.iter_bytes(65536):
            data += block
            if len(data) >= 65536:
                break
    except (httpx.HTTPError, httpx.StreamError):
        return ""
    if not data:
        return ""
    try:
        doc = json.loads(data[:65536])
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = data[:120].decode("utf-8", "replace").strip()
        return f": {' '.join(text.split())}" if text else ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code", "")
        message = errors[0].get("message", "")
        return f" {code}: {message}".rstrip(": ")
    return ""


def _next_link(header: str | None) -> str | None:
    """The ``rel="next"`` target of a ``Link`` header."""
    if not header:
        return None
    for part in header.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return target.strip().strip("<>")
    return None
