"""Every kind of registry request meets every kind of fault, through ``FaultProxy`` used
as the client's HTTP proxy in front of a real ``docker-registry`` with bearer tokens (so
token requests pass it too): each is retried once by the one retry policy, counted by
cause, and logged at WARNING; one given up on is an ERROR line (issue 16, defects 5, 6)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.config import RegistryOptions
from ketch.errors import StorageError
from ketch.oci import mediatypes as mt
from ketch.oci.manifest import Descriptor, Manifest, canonical_json
from ketch.storage.registry.client import RegistryClient
from ketch.storage.registry.store import RegistryStore
from tests.fixtures.registry import (  # noqa: F401 (fixtures)
    FaultProxy,
    RunningRegistry,
    manifest_get,
    registry_token_fixture,
)

pytestmark = pytest.mark.integration

REPOSITORY = "faults/kinds"
READ_TIMEOUT = 1.0


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(size: int, seed: str) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@dataclass(frozen=True, slots=True)
class Pushed:
    blob: bytes
    manifest: Descriptor
    manifest_bytes: bytes


@pytest.fixture(scope="module")
def pushed(registry_token: RunningRegistry) -> Pushed:
    """A blob and an image manifest tagged ``v1`` (pushed without the proxy)."""
    client = RegistryClient(registry_token.host, RegistryOptions(creds=registry_token.creds))
    store = RegistryStore(client, REPOSITORY)
    blob = _blob(300_000, "kinds")
    store.push_blob_bytes(blob, _digest(blob))
    config = canonical_json({"architecture": "amd64", "os": "linux"})
    store.push_blob_bytes(config, _digest(config))
    manifest = Manifest(
        mt.OCI_MANIFEST,
        Descriptor(mt.OCI_CONFIG, _digest(config), len(config)),
        [Descriptor(mt.OCI_LAYER_TAR, _digest(blob), len(blob))],
        {"test": "kinds"},
    )
    data = manifest.to_bytes()
    descriptor = store.put_manifest(data, mt.OCI_MANIFEST, "v1")
    store.close()
    return Pushed(blob, descriptor, data)


@pytest.fixture
def proxy(registry_token: RunningRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(registry_token.host, stall=2 * READ_TIMEOUT + 0.5) as running:
        yield running


def _store(registry: RunningRegistry, proxy: FaultProxy, **options: object) -> RegistryStore:
    settings: dict[str, object] = {
        "creds": registry.creds,
        "proxy": f"http://{proxy.host}",
        "read_timeout": READ_TIMEOUT,
        "connect_timeout": READ_TIMEOUT,
    }
    settings.update(options)
    client = RegistryClient(
        registry.host,
        RegistryOptions(**settings),  # type: ignore[arg-type]
        sleep=lambda seconds: None,
    )
    return RegistryStore(client, REPOSITORY)


Request = Callable[[RegistryStore, Pushed, str], None]


def _ping(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    store.client.ping()


def _token(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    assert store.has_blob(_digest(pushed.blob))


def _manifest(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    descriptor, _, raw = store.resolve("v1")
    assert raw == pushed.manifest_bytes and descriptor.digest == pushed.manifest.digest


def _blob_get(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    assert store.read_blob(_digest(pushed.blob)) == pushed.blob


def _range(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    assert store.read_range(_digest(pushed.blob), 1000, 100_000) == pushed.blob[1000:101_000]


def _stream(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    with store.open_blob(_digest(pushed.blob)) as stream:
        assert stream.read() == pushed.blob


def _referrers(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    assert store.referrers(pushed.manifest.digest) == []


def _tags(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    assert "v1" in store.client.tags(REPOSITORY)


def _upload(store: RegistryStore, pushed: Pushed, seed: str) -> None:
    data = _blob(5000, seed)
    store.push_blob_bytes(data, _digest(data))
    assert store.read_blob(_digest(data)) == data


#: request kind -> (what it does, which of its requests gets the fault)
KINDS: dict[str, tuple[Request, Callable[[str, str], bool]]] = {
    "ping": (_ping, lambda method, path: path.endswith("/v2/")),
    "token": (_token, lambda method, path: "/token?" in path),
    "manifest": (_manifest, manifest_get),
    "blob": (_blob_get, lambda method, path: method == "GET" and "/blobs/sha256:" in path),
    "range": (_range, lambda method, path: method == "GET" and "/blobs/sha256:" in path),
    "stream": (_stream, lambda method, path: method == "GET" and "/blobs/sha256:" in path),
    "referrers": (_referrers, lambda method, path: "/referrers/" in path),
    "tags": (_tags, lambda method, path: "/tags/list" in path),
    "upload": (_upload, lambda method, path: method == "PUT" and "/blobs/uploads/" in path),
}
#: fault -> the cause the client counts it under
FAULTS = {
    "503": "http_503",
    "429": "http_429",
    "reset": "connection",
    "reset-body": "connection",
    "truncate": "connection",
    "stall": "timeout",
}
#: an upload's answers have no body to cut
NO_BODY = {"upload"}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_request_kind_is_retried_after_each_fault(
    kind: str,
    fault: str,
    registry_token: RunningRegistry,
    pushed: Pushed,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seed = f"{kind}-{fault}"
    if kind in NO_BODY and fault in ("reset-body", "truncate"):
        fault = "reset"
    request, match = KINDS[kind]
    store = _store(registry_token, proxy)
    caplog.set_level(logging.WARNING, logger="ketch")
    proxy.plan([fault], match=match)
    request(store, pushed, seed)
    assert proxy.pending == 0, f"no {kind} request was made"
    assert proxy.injected[fault] == 1
    stats = store.fault_stats()
    assert stats.retries == {FAULTS[fault]: 1} and stats.failures == {}
    assert stats.timeouts == (1 if fault == "stall" else 0)
    retried = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retried) == 1 and retried[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    store.close()


@pytest.mark.parametrize("fault", ["truncate", "reset-body"])
def test_a_manifest_cut_short_is_retried_and_says_how_much_arrived(
    fault: str,
    registry_token: RunningRegistry,
    pushed: Pushed,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _store(registry_token, proxy, retries=2)
    caplog.set_level(logging.WARNING, logger="ketch")
    proxy.plan([fault] * 3, match=manifest_get)
    half = len(pushed.manifest_bytes) // 2
    with pytest.raises(StorageError, match=rf"manifest v1: .*after {half} bytes.*3 attempts"):
        store.resolve("v1")
    assert store.fault_stats().retries == {"connection": 2}
    assert store.fault_stats().failures == {"connection": 1}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "gave up" in errors[0].getMessage()
    store.close()


def test_a_client_of_a_mirror_gives_up_with_a_warning(
    registry_token: RunningRegistry, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A mirror's failures are tried again at the next source: no ERROR line."""
    client = RegistryClient(
        registry_token.host,
        RegistryOptions(creds=registry_token.creds, proxy=f"http://{proxy.host}", retries=0),
        fallback=True,
    )
    caplog.set_level(logging.WARNING, logger="ketch")
    proxy.plan(["503"], match=lambda method, path: "/tags/list" in path)
    with pytest.raises(StorageError, match="HTTP 503"):
        client.tags(REPOSITORY)
    assert client.fault_stats().failures == {"http_503": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    client.close()


def test_the_seed_replays_the_same_faults(registry_token: RunningRegistry, tmp_path: Path) -> None:
    """``inject`` draws from its seed: the same seed, the same faults for the same requests."""
    drawn: list[list[str | None]] = []
    for _ in range(2):
        with FaultProxy(registry_token.host) as proxy:
            proxy.inject(1234, 0.5, ["503", "429", "reset"], match=lambda m, p: "/tags/" in p)
            store = _store(registry_token, proxy, retries=20)
            for _ in range(5):
                store.client.tags(REPOSITORY)
            drawn.append([r.fault for r in proxy.seen if "/tags/" in r.path])
            store.close()
    assert drawn[0] == drawn[1] and any(drawn[0])
