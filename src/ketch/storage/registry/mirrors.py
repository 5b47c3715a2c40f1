"""A registry repository read through registry mirrors, with the origin as fallback.

A mirror is a registry serving the origin's repositories under the same names: a
``docker-registry`` pull-through cache (``proxy.remoteurl``), Harbor's proxy cache, or
Dragonfly's dfdaemon, whose registry mirror answers from the P2P network. This is how
Dragonfly plugs into Ketch: the lazy read path's range reads are plain blob ``GET``\\s
with ``Range``, which a mirror serves as it would for ``docker pull``.

What goes where:

- blob reads (``read_range``, ``read_range_verified``, ``read_blob``, ``open_blob``,
  ``blob_size``, ``has_blob``) go to the first *healthy* mirror, in the order given, and
  to the origin when every mirror fails, misses or is skipped;
- manifests, tags, referrers and every write go to the origin only (a mirror may be
  stale, and is read-only).

A mirror attempt ends in one of three ways:

- *served*: counted in ``mirror_reads``;
- *missed* (HTTP 404, or a large ``Range`` read answered with the whole blob, as a cold
  pull-through cache does until it has stored the blob): the next source is tried and
  the mirror stays healthy (``mirror_misses``);
- *failed* (connection refused or reset, timeout, 5xx, any other unexpected answer, or
  bytes that are not what their digest says): the next source is tried and the mirror
  is skipped for ``health_check_interval`` seconds, then tried again by the next read
  (``mirror_failures``; one log line each).

Wrong bytes are never served: whole blobs are checked against their digest, and range
reads through ``read_range_verified`` are checked by the reader's own callback (the
chunk reader decompresses and verifies each chunk) before the bytes leave this store; a
failed check makes the next source read the range again. Plain ``read_range`` cannot
be checked here (its caller checks what it gets). A blob stream (``open_blob``) from a
mirror that breaks is continued from the origin at the same offset; its digest is
checked as it ends, and a mismatch raises IntegrityError (the stream's consumer checks
it too, as the ``ImageStore`` contract says) and marks the mirror unhealthy, so that the
next attempt reads the origin.

Mirrors get no retries (the origin is their retry) and no ``--creds`` (those are the
origin's): credentials for a mirror come from the Docker config entry for its host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from ketch.config import RegistryConfig, RegistryOptions
from ketch.errors import IntegrityError, KetchError, NotFoundError, UsageError
from ketch.format.digests import oci_digest
from ketch.storage.registry.blobs import RangeIgnoredError
from ketch.storage.registry.client import RegistryClient
from ketch.storage.registry.store import RegistryStore
from ketch.storage.registry.transport import BLOCK
from ketch.storage.retry import FaultStats

log = logging.getLogger("ketch.storage.mirrors")

T = TypeVar("T")

DEFAULT_HEALTH_CHECK_INTERVAL = RegistryConfig().health_check_interval  # ketch.config
#: a mirror that does not accept a connection within this many seconds has failed
MIRROR_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class MirrorStats:
    """A consistent snapshot of a MirroredRegistryStore's counters."""

    #: blob reads a mirror served
    mirror_reads: int
    #: blob reads the origin served after a mirror failed, missed or was skipped
    origin_fallbacks: int
    #: mirror attempts that failed (each one makes the mirror skipped for a while)
    mirror_failures: int
    #: mirror attempts that found nothing (404, or a cold cache ignoring ``Range``)
    mirror_misses: int


class Mirror:
    """One mirror of the repository and its health."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store
        self.name = store.name
        #: ``clock()`` value before which the mirror is skipped
        self.unhealthy_until = 0.0
        self.failures = 0
        self.last_error: str | None = None


def mirror_client(url: str, options: RegistryOptions) -> RegistryClient:
    """A client of the mirror at ``url`` (``http[s]://HOST[:PORT]``), reached as the URL
    says, with ``options`` minus retries and ``creds``, and a short connect timeout."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"mirror {url!r}: expected a URL such as http://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise UsageError(
            f"mirror {url!r}: expected only a scheme, host and port (a registry root), found more"
        )
    mirror_options = dataclasses.replace(
        options,
        creds=None,
        retries=0,
        connect_timeout=min(options.connect_timeout, MIRROR_CONNECT_TIMEOUT),
    )
    return RegistryClient(parts.netloc, mirror_options, scheme=parts.scheme, fallback=True)


class MirroredRegistryStore(RegistryStore):
    """A ``RegistryStore`` on the origin whose blob reads try ``mirrors`` first.

    It is a RegistryStore of the origin (its ``client``, ``repository`` and ``name`` are
    the origin's), so writes, manifests and cross-repository mounts work unchanged.
    """

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        mirrors: Sequence[RegistryClient],
        *,
        health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client, repository)
        self.mirrors = [Mirror(RegistryStore(m, repository)) for m in mirrors]
        self.health_check_interval = health_check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._mirror_reads = 0
        self._origin_fallbacks = 0
        self._mirror_failures = 0
        self._mirror_misses = 0

    def close(self) -> None:
        for mirror in self.mirrors:
            mirror.store.close()
        super().close()

    # -- counters and health --------------------------------------------------------------

    def stats(self) -> MirrorStats:
        with self._lock:
            return MirrorStats(
                self._mirror_reads,
                self._origin_fallbacks,
                self._mirror_failures,
                self._mirror_misses,
            )

    @property
    def mirror_reads(self) -> int:
        return self.stats().mirror_reads

    @property
    def origin_fallbacks(self) -> int:
        return self.stats().origin_fallbacks

    @property
    def mirror_failures(self) -> int:
        return self.stats().mirror_failures

    @property
    def mirror_misses(self) -> int:
        return self.stats().mirror_misses

    def fault_stats(self) -> FaultStats:
        """The origin's request faults and every mirror's, together."""
        total = RegistryStore.fault_stats(self)
        for mirror in self.mirrors:
            total = total + mirror.store.fault_stats()
        return total

    def healthy(self, mirror: Mirror) -> bool:
        """Whether ``mirror`` is to be tried now (never failed, or failed long enough ago)."""
        with self._lock:
            return self._clock() >= mirror.unhealthy_until

    def _served(self, mirror: Mirror | None, fell_back: bool) -> None:
        with self._lock:
            if mirror is not None:
                self._mirror_reads += 1
            elif fell_back:
                self._origin_fallbacks += 1

    def _missed(self, mirror: Mirror, what: str, exc: KetchError) -> None:
        with self._lock:
            self._mirror_misses += 1
        log.debug("mirror %s: %s: %s; trying the next source", mirror.name, what, exc)

    def _failed(self, mirror: Mirror, what: str, exc: KetchError) -> None:
        with self._lock:
            self._mirror_failures += 1
            mirror.failures += 1
            mirror.last_error = str(exc)
            mirror.unhealthy_until = self._clock() + self.health_check_interval
        log.warning(
            "mirror %s failed: %s: %s; skipped for %gs, reading from %s",
            mirror.name,
            what,
            exc,
            self.health_check_interval,
            self.name,
        )

    # -- trying the sources in turn --------------------------------------------------------

    def _from_sources(
        self,
        what: str,
        read: Callable[[RegistryStore], T],
        from_origin: Callable[[], T] | None = None,
    ) -> tuple[T, Mirror | None]:
        """``read(store)`` from the first mirror that serves it, else from the origin
        (``from_origin()`` if given, else ``read(self)``); and the mirror that served."""
        fell_back = False
        for mirror in self.mirrors:
            if not self.healthy(mirror):
                fell_back = True
                continue
            try:
                result = read(mirror.store)
            except (NotFoundError, RangeIgnoredError) as exc:
                self._missed(mirror, what, exc)
                fell_back = True
                continue
            except KetchError as exc:
                self._failed(mirror, what, exc)
                fell_back = True
                continue
            self._served(mirror, fell_back)
            return result, mirror
        result = from_origin() if from_origin is not None else read(self)
        self._served(None, fell_back)
        return result, None

    # -- the read path ----------------------------------------------------------------------

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        what = f"blob {digest} range [{offset}, {offset + length})"
        return self._from_sources(
            what, lambda store: RegistryStore.read_range(store, digest, offset, length)
        )[0]

    def read_range_verified(
        self, digest: str, offset: int, length: int, verify: Callable[[bytes], None]
    ) -> bytes:
        def read(store: RegistryStore) -> bytes:
            data = RegistryStore.read_range(store, digest, offset, length)
            verify(data)  # IntegrityError: a mirror failed, the origin's error is the reader's
            return data

        return self._from_sources(f"blob {digest} range [{offset}, {offset + length})", read)[0]

    def blob_size(self, digest: str) -> int:
        return self._from_sources(
            f"blob {digest} size", lambda store: RegistryStore.blob_size(store, digest)
        )[0]

    def has_blob(self, digest: str) -> bool:
        def read(store: RegistryStore) -> bool:
            if not RegistryStore.has_blob(store, digest):
                raise NotFoundError(f"{store.name}: blob {digest} not found")
            return True

        return self._from_sources(
            f"blob {digest} presence", read, lambda: RegistryStore.has_blob(self, digest)
        )[0]

    def read_blob(self, digest: str, max_size: int | None = None) -> bytes:
        return self._from_sources(
            f"blob {digest}", lambda store: RegistryStore.read_blob(store, digest, max_size)
        )[0]

    def open_blob(self, digest: str) -> IO[bytes]:
        stream, mirror = self._from_sources(
            f"blob {digest} stream", lambda store: RegistryStore.open_blob(store, digest)
        )
        if mirror is None:
            return stream
        return io.BufferedReader(_MirrorStream(self, mirror, digest, stream), buffer_size=BLOCK)


class _MirrorStream(io.RawIOBase):
    """A blob stream from a mirror: continued from the origin where the mirror breaks,
    hashed all along, and checked against the digest at its end."""

    def __init__(
        self, owner: MirroredRegistryStore, mirror: Mirror, digest: str, stream: IO[bytes]
    ) -> None:
        super().__init__()
        self._owner = owner
        self._mirror = mirror
        self._digest = digest
        self._stream: IO[bytes] | None = stream
        self._on_mirror = True
        self._position = 0
        self._mirror_bytes = 0  # how many of the bytes handed out came from the mirror
        self._sha = hashlib.sha256()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if self._stream is None:
                return 0
            try:
                data = self._stream.read(len(view))
            except KetchError as exc:
                if not self._on_mirror:
                    raise
                self._continue_from_origin(exc)
                continue
            if not data:
                self._check()
                return 0
            n = len(data)
            view[:n] = data
            self._sha.update(data)
            self._position += n
            if self._on_mirror:
                self._mirror_bytes += n
            return n

    def _continue_from_origin(self, exc: KetchError) -> None:
        owner = self._owner
        owner._failed(self._mirror, f"blob {self._digest} at byte {self._position}", exc)
        self._close_stream()
        self._on_mirror = False
        if self._position == 0:
            self._stream = RegistryStore.open_blob(owner, self._digest)
        else:
            self._stream = owner.client.open_blob(owner.repository, self._digest, self._position)
        owner._served(None, fell_back=True)

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        found = oci_digest(self._sha)
        if found == self._digest:
            return
        if not self._mirror_bytes:  # every byte came from the origin: its error alone
            raise IntegrityError(
                f"{self._owner.name}: blob {self._digest}: digest: expected {self._digest}, "
                f"found {found}"
            )
        error = IntegrityError(
            f"{self._mirror.name}: blob {self._digest}: digest: expected {self._digest}, "
            f"found {found}"
        )
        self._owner._failed(self._mirror, f"blob {self._digest} stream", error)
        raise IntegrityError(
            f"{error.message} (a mirror's bytes; the mirror is now skipped, a new read "
            f"comes from {self._owner.name})"
        )

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = None

    def close(self) -> None:
        self._close_stream()
        super().close()
