"""Mirrors and proxy, fast: the options (command line, configuration, daemon command
line), and ``MirroredRegistryStore`` over in-memory registries (``httpx.MockTransport``)
with a hand-moved clock: which source serves, misses, failures, health-check intervals,
wrong bytes never served, and the chunk reader verifying each chunk once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from ketch.cli.main import build_parser
from ketch.cli.store_options import store_options
from ketch.config import RegistryOptions, StoreOptions, from_json, parse_config, to_json
from ketch.errors import IntegrityError, NotFoundError, StorageError, UsageError
from ketch.format.codecs import CodecId, ZstdCodec
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import ChunkRecord
from ketch.storage.blobs import BlobRef
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.oci_layout_store import OciLayoutStore
from ketch.storage.open import open_store
from ketch.storage.registry import mirrors
from ketch.storage.registry.client import RegistryClient
from ketch.storage.registry.mirrors import MirroredRegistryStore, MirrorStats, mirror_client
from ketch.storage.registry.store import RegistryStore

REPOSITORY = "team/app"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- options ------------------------------------------------------------------------------


def test_defaults_agree() -> None:
    assert StoreOptions().health_check_interval == mirrors.DEFAULT_HEALTH_CHECK_INTERVAL
    assert StoreOptions().health_check_interval == parse_config("").registry.health_check_interval


CONFIG = """
[registry]
proxy = "http://proxy.example:3128"
health_check_interval = 2.5
[[registry.mirrors]]
url = "http://any-mirror:5000"
[[registry.mirrors]]
url = "http://for-origin:5000"
host = "origin.example"
[[registry.mirrors]]
url = "http://for-other:5000"
host = "other.example"
[[registry.mirrors]]
url = "http://for-hub:5000"
host = "docker.io"
"""


def test_configured_mirrors_for_the_image_registry() -> None:
    config = parse_config(CONFIG)
    args = build_parser().parse_args(["mount", "docker://origin.example/app:1", "/mnt"])
    options = store_options(args, config)
    assert options.mirrors == ("http://any-mirror:5000", "http://for-origin:5000")
    assert (options.registry.proxy, options.health_check_interval) == (
        "http://proxy.example:3128",
        2.5,
    )
    hub = build_parser().parse_args(["run", "docker://index.docker.io/library/alpine:3"])
    assert store_options(hub, config).mirrors == ("http://any-mirror:5000", "http://for-hub:5000")
    local = build_parser().parse_args(["mount", "oci:/images:1", "/mnt"])
    assert store_options(local, config).mirrors == ()


def test_convert_sides_get_the_mirrors_of_their_own_registry() -> None:
    config = parse_config(CONFIG)
    args = build_parser().parse_args(
        ["convert", "docker://other.example/src:1", "docker://origin.example/dst:1"]
    )
    assert store_options(args, config, "src").mirrors[1:] == ("http://for-other:5000",)
    assert store_options(args, config, "dest").mirrors[1:] == ("http://for-origin:5000",)


def test_command_line_beats_the_configuration() -> None:
    config = parse_config(CONFIG)
    args = build_parser().parse_args(
        [
            "mount",
            "docker://origin.example/app:1",
            "/mnt",
            "--mirror",
            "http://m1:1",
            "--mirror",
            "https://m2",
            "--proxy",
            "http://p:8",
            "--health-check-interval",
            "0.5",
        ]
    )
    options = store_options(args, config)
    assert options.mirrors == ("http://m1:1", "https://m2")
    assert (options.registry.proxy, options.health_check_interval) == ("http://p:8", 0.5)


def test_the_daemon_request_carries_proxy_and_mirrors() -> None:
    options = StoreOptions(
        RegistryOptions(proxy="http://p:8"),
        mirrors=("http://m1:1", "https://m2"),
        health_check_interval=3.0,
    )
    again = from_json(StoreOptions, json.loads(json.dumps(to_json(options))), "options")
    assert (again.registry.proxy, again.mirrors, again.health_check_interval) == (
        "http://p:8",
        ("http://m1:1", "https://m2"),
        3.0,
    )


@pytest.mark.parametrize(
    "url",
    ["127.0.0.1:5000", "ftp://m:1", "http://", "http://m:1/prefix", "http://u:p@m:1", "http://m?x"],
)
def test_a_mirror_is_a_registry_root_url(url: str) -> None:
    with pytest.raises(UsageError, match="mirror"):
        mirror_client(url, RegistryOptions())


def test_a_mirror_client_has_no_retries_and_no_origin_credentials() -> None:
    client = mirror_client("https://mirror.example:5000", RegistryOptions(creds="u:p", retries=9))
    try:
        assert client.options.retries == 0 and client.options.creds is None
        assert client.base_url == "https://mirror.example:5000"
        assert client.options.connect_timeout <= mirrors.MIRROR_CONNECT_TIMEOUT
    finally:
        client.close()
    # A mirror's URL says its scheme, loopback or not.
    plain = mirror_client("http://mirror.example:5000", RegistryOptions())
    try:
        assert plain.base_url == "http://mirror.example:5000"
    finally:
        plain.close()


def test_a_bad_proxy_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="proxy"):
        RegistryClient("registry.example", RegistryOptions(proxy="nonsense://x"))


def test_open_store_with_mirrors() -> None:
    plain, _ = open_store("docker://127.0.0.1:1/app:1")
    mirrored, tag = open_store(
        "docker://127.0.0.1:1/app:1",
        StoreOptions(mirrors=("http://127.0.0.1:2",), health_check_interval=4.0),
    )
    try:
        assert type(plain) is RegistryStore and tag == "1"
        assert isinstance(mirrored, MirroredRegistryStore)
        assert mirrored.health_check_interval == 4.0
        assert [m.store.client.base_url for m in mirrored.mirrors] == ["http://127.0.0.1:2"]
        assert mirrored.name == "docker://127.0.0.1:1/app"  # messages name the origin
    finally:
        plain.close()  # type: ignore[attr-defined]
        mirrored.close()  # type: ignore[attr-defined]


# -- MirroredRegistryStore over in-memory registries -------------------------------------------


class FakeRegistry:
    """A registry holding ``blobs`` for REPOSITORY; ``mode`` says how it behaves:
    "ok", "down" (connection refused), "503", "corrupt" (first byte of bodies flipped)."""

    def __init__(self, blobs: dict[str, bytes], mode: str = "ok") -> None:
        self.blobs = blobs
        self.mode = mode
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200)
        if self.mode == "503":
            return httpx.Response(503)
        prefix = f"/v2/{REPOSITORY}/blobs/"
        data = self.blobs.get(path[len(prefix) :]) if path.startswith(prefix) else None
        if data is None:
            return httpx.Response(404)
        if self.mode == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(data))})
        wanted = request.headers.get("Range")
        if wanted:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), int(last) if last else len(data) - 1
            return httpx.Response(
                206,
                headers={"Content-Range": f"bytes {start}-{end}/{len(data)}"},
                content=data[start : end + 1],
            )
        return httpx.Response(200, content=data)

    def blob_gets(self) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and "/blobs/" in p)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _client(host: str, registry: FakeRegistry) -> RegistryClient:
    return RegistryClient(
        host,
        RegistryOptions(retries=0, backoff=0.0),
        transport=httpx.MockTransport(registry),
        scheme="http",
    )


def _store(
    origin: FakeRegistry, *mirrors: FakeRegistry, interval: float = 10.0
) -> tuple[MirroredRegistryStore, Clock]:
    clock = Clock()
    store = MirroredRegistryStore(
        _client("origin.example", origin),
        REPOSITORY,
        [_client(f"mirror{i}.example", m) for i, m in enumerate(mirrors)],
        health_check_interval=interval,
        clock=clock,
    )
    return store, clock


BLOB = bytes(range(256)) * 64
DIGEST = _digest(BLOB)


def _stats(store: MirroredRegistryStore) -> tuple[int, int, int, int]:
    s: MirrorStats = store.stats()
    return (s.mirror_reads, s.origin_fallbacks, s.mirror_failures, s.mirror_misses)


def test_blob_reads_go_to_the_mirror_and_the_rest_to_the_origin() -> None:
    origin, mirror = FakeRegistry({DIGEST: BLOB}), FakeRegistry({DIGEST: BLOB})
    store, _ = _store(origin, mirror)
    assert store.read_range(DIGEST, 10, 100) == BLOB[10:110]
    assert store.read_blob(DIGEST) == BLOB
    assert store.blob_size(DIGEST) == len(BLOB) and store.has_blob(DIGEST)
    with store.open_blob(DIGEST) as stream:
        assert stream.read() == BLOB
    assert origin.requests == []  # not even a ping
    assert _stats(store) == (5, 0, 0, 0)
    with pytest.raises(NotFoundError):  # the fake takes no uploads; writes: the origin only
        store.push_blob_bytes(b"new", _digest(b"new"))
    assert any(m == "POST" for m, _ in origin.requests)
    assert not any(m == "POST" for m, _ in mirror.requests)


def test_a_failed_mirror_rests_for_the_interval() -> None:
    origin, mirror = FakeRegistry({DIGEST: BLOB}), FakeRegistry({DIGEST: BLOB}, "down")
    store, clock = _store(origin, mirror)
    assert store.read_range(DIGEST, 0, 10) == BLOB[:10]
    assert _stats(store) == (0, 1, 1, 0)
    asked = len(mirror.requests)
    clock.now += 9.9
    assert store.read_range(DIGEST, 0, 10) == BLOB[:10]
    assert len(mirror.requests) == asked  # skipped
    assert _stats(store) == (0, 2, 1, 0)
    mirror.mode = "ok"
    clock.now += 0.1
    assert store.read_range(DIGEST, 0, 10) == BLOB[:10]
    assert _stats(store) == (1, 2, 1, 0)


@pytest.mark.parametrize("mode", ["down", "503", "corrupt"])
def test_whole_blob_reads_fall_back(mode: str) -> None:
    origin, mirror = FakeRegistry({DIGEST: BLOB}), FakeRegistry({DIGEST: BLOB}, mode)
    store, _ = _store(origin, mirror)
    assert store.read_blob(DIGEST) == BLOB
    assert _stats(store) == (0, 1, 1, 0)


def test_a_miss_falls_back_and_keeps_the_mirror_healthy() -> None:
    origin, mirror = FakeRegistry({DIGEST: BLOB}), FakeRegistry({})
    store, _ = _store(origin, mirror)
    for _ in range(3):
        assert store.read_range(DIGEST, 0, 10) == BLOB[:10]
        assert store.has_blob(DIGEST)
    assert _stats(store) == (0, 6, 0, 6)
    assert not store.has_blob(_digest(b"nowhere"))  # the origin's answer, not the mirror's


def test_the_next_mirror_before_the_origin() -> None:
    origin = FakeRegistry({DIGEST: BLOB})
    first, second = FakeRegistry({DIGEST: BLOB}, "503"), FakeRegistry({DIGEST: BLOB})
    store, _ = _store(origin, first, second)
    assert store.read_blob(DIGEST) == BLOB
    assert _stats(store) == (1, 0, 1, 0) and origin.blob_gets() == 0


def test_the_origin_failing_is_the_readers_error() -> None:
    origin, mirror = FakeRegistry({}, "503"), FakeRegistry({}, "down")
    store, _ = _store(origin, mirror)
    with pytest.raises(StorageError):
        store.read_range(DIGEST, 0, 1)
    origin.mode = "ok"
    with pytest.raises(NotFoundError):
        store.read_blob(DIGEST)


def _chunked_blob(parts: list[bytes]) -> tuple[bytes, list[ChunkRecord]]:
    """A blob of zstd chunks, and their records (blob index 0)."""
    algo = DigestAlgorithm.SHA256
    blob, records = b"", []
    for part in parts:
        compressed = ZstdCodec().compress(part)
        records.append(
            ChunkRecord(algo.digest(part), 0, len(blob), len(compressed), len(part), CodecId.ZSTD)
        )
        blob += compressed
    return blob, records


def test_wrong_chunk_bytes_from_a_mirror_are_never_served() -> None:
    parts = [bytes([i]) * 5000 + b"tail" for i in range(4)]
    blob, records = _chunked_blob(parts)
    digest = _digest(blob)
    origin, mirror = FakeRegistry({digest: blob}), FakeRegistry({digest: blob}, "corrupt")
    store, _ = _store(origin, mirror)
    reader = ChunkReader(store, DigestAlgorithm.SHA256)
    verified: list[bytes] = []
    real_verify = reader.verify

    def counting_verify(blob: BlobRef, chunk: ChunkRecord, compressed: bytes | memoryview) -> bytes:
        out = real_verify(blob, chunk, compressed)
        verified.append(chunk.digest)
        return out

    reader.verify = counting_verify  # type: ignore[method-assign]
    assert reader.read(BlobRef(digest), records) == parts
    assert _stats(store) == (0, 1, 1, 0)
    # The corrupted first chunk failed before any was accepted; the origin's range then
    # verified each chunk exactly once.
    assert verified == [r.digest for r in records]
    # The origin's wrong bytes are the reader's IntegrityError, as without mirrors.
    origin.mode = "corrupt"
    with pytest.raises(IntegrityError):
        reader.read(BlobRef(digest), records)


def test_a_mirror_stream_that_lies_raises_at_its_end_and_rests() -> None:
    origin, mirror = FakeRegistry({DIGEST: BLOB}), FakeRegistry({DIGEST: BLOB}, "corrupt")
    store, _ = _store(origin, mirror)
    with store.open_blob(DIGEST) as stream, pytest.raises(IntegrityError, match="mirror"):
        stream.read()
    assert _stats(store) == (1, 0, 1, 0)
    with store.open_blob(DIGEST) as stream:  # the mirror rests: the origin's stream
        assert stream.read() == BLOB


def test_read_range_verified_default_reads_then_verifies(tmp_path: Path) -> None:
    store = OciLayoutStore.create(tmp_path / "layout")
    store.push_blob_bytes(BLOB, DIGEST)
    seen: list[bytes] = []
    assert store.read_range_verified(DIGEST, 1, 3, seen.append) == BLOB[1:4]
    assert seen == [BLOB[1:4]]

    def refuse(data: bytes) -> None:
        raise IntegrityError("no")

    with pytest.raises(IntegrityError):
        store.read_range_verified(DIGEST, 1, 3, refuse)


def test_a_bad_chunk_is_read_again_alone_and_the_rest_of_its_range_served() -> None:
    """Issue 16, defect 1: every source's bytes are wrong at the first chunk. The other
    chunks of the range are served; the bad one is read once more on its own (from the
    next source: the mirror is skipped now) and only it fails."""
    parts = [bytes([i]) * 5000 + b"tail" for i in range(4)]
    blob, records = _chunked_blob(parts)
    digest = _digest(blob)
    origin, mirror = (
        FakeRegistry({digest: blob}, "corrupt"),
        FakeRegistry({digest: blob}, "corrupt"),
    )
    store, _ = _store(origin, mirror)
    reader = ChunkReader(store, DigestAlgorithm.SHA256)
    results = reader.read_each(BlobRef(digest), records)
    assert isinstance(results[0], IntegrityError) and results[1:] == parts[1:]
    assert (mirror.blob_gets(), origin.blob_gets()) == (1, 2)  # the range; then chunk 0 alone
    assert reader.verify_failures == 3  # the mirror's range, the origin's, the origin's again
    with pytest.raises(IntegrityError, match=records[0].digest.hex()):
        reader.read(BlobRef(digest), records)
