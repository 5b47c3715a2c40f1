"""The transport under every request of the registry client: one HTTP client per
registry, auth, redirects and retries.

Hosts on loopback (localhost, 127.0.0.0/8, ::1) are plain HTTP, as Docker treats them;
elsewhere HTTPS, verified against the system trust store plus ``ca_file``, unless
``tls_verify`` is False (then HTTP is tried when HTTPS cannot connect, as skopeo does).
A ``scheme`` given to the client (a mirror's URL says it) is used as it is. With
``proxy`` every request goes through that HTTP proxy (httpx's ``proxy=``; plain HTTP is
forwarded, HTTPS tunnelled with ``CONNECT``). ``GET /v2/`` (the ping, once per client)
learns the auth scheme (``auth.py``). Redirects are followed by hand (registries send
blob reads to object stores), never carrying ``Authorization`` to another host.

Failures: 429, 5xx, connection errors, resets, answers cut short and timeouts are
retried ``retries`` times by the one policy of ``retry.py`` (exponential backoff and
jitter, ``Retry-After`` honoured up to ``max_retry_wait``), for every kind of request.
A request made of several (a streamed read, an upload) is one attempt of that policy as
a whole. Then ``StorageError``; ``fault_stats()`` counts what was met, by cause. 404 is
``NotFoundError``, 401/403 ``UsageError`` (with a hint), digest mismatches
``IntegrityError``. Every message names the registry, repository and digest, and what
was expected and found.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import json
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self, TypeVar

import httpx

from ketch.config import RegistryOptions
from ketch.errors import IntegrityError, KetchError, NotFoundError, StorageError, UsageError
from ketch.oci.reference import registry_api_host
from ketch.storage.registry.auth import Authenticator, Credentials, find_credentials
from ketch.storage.retry import (
    CONNECTION,
    TIMEOUT,
    FaultCounters,
    FaultStats,
    RetryPolicy,
    TransientError,
)

T = TypeVar("T")

MAX_REDIRECTS = 5
#: bytes read from (or written to) the network at a time
BLOCK = 1 << 20
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


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


class RegistryTransport:
    """One registry: connections, auth state, retries. Safe to share between threads.

    The parts of the API (``manifests.py``, ``blobs.py``, ``uploads.py``,
    ``referrers.py``) are subclasses of it, put together in ``client.py``."""

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
        host = registry_api_host(registry)
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

    def __enter__(self) -> Self:
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
                self.base_url = f"{scheme}://{registry_api_host(self.registry)}"
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
        except (ValueError, RecursionError):  # a hostile server's answer
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise StorageError(f"{what}: expected JSON with a token, found none")
        lifetime = doc.get("expires_in") if isinstance(doc, dict) else None
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = 60.0
        return token, float(lifetime)

    def _read_capped(
        self, response: httpx.Response, limit: int | None, what: str, *, transient: bool = False
    ) -> bytes:
        """The body of a streamed response, refusing more than ``limit`` bytes."""
        out = bytearray()
        try:
            for block in response.iter_bytes(BLOCK):
                out += block
                if limit is not None and len(out) > limit:
                    raise IntegrityError(f"{what}: size: expected <= {limit} bytes, found more")
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            # Bytes that arrived, not bytes handed out (those come in blocks of BLOCK).
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
    except (ValueError, RecursionError):
        text = data[:120].decode("utf-8", "replace").strip()
        return f": {' '.join(text.split())}" if text else ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code", "")
        message = errors[0].get("message", "")
        return f" {code}: {message}".rstrip(": ")
    return ""


def next_link(header: str | None) -> str | None:
    """The ``rel="next"`` target of a ``Link`` header."""
    if not header:
        return None
    for part in header.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return target.strip().strip("<>")
    return None
