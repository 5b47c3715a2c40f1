"""The registry client and store against a real ``docker-registry`` (distribution 2.8) on
loopback: blobs, ranges, uploads, mounts, manifests, indexes, referrers, auth, retries,
timeouts, redirects, digest checks; then whole conversions between registries and OCI
layouts, read back by skopeo, umoci and Ketch itself."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ketch.cli.main import main
from ketch.config import RegistryOptions, StoreOptions
from ketch.errors import IntegrityError, NotFoundError, StorageError, UsageError
from ketch.image.layout import ANNOTATION_KETCH_SOURCE, KETCH_BOOTSTRAP
from ketch.oci import mediatypes as mt
from ketch.oci.manifest import Descriptor, Manifest, Platform, canonical_json
from ketch.storage.open import open_store
from ketch.storage.registry.client import RegistryClient
from ketch.storage.registry.store import RegistryStore
from tests.fixtures.registry import (  # noqa: F401 (fixtures)
    FaultProxy,
    ObjectStore,
    RunningRegistry,
    SilentServer,
    blob_get,
    registry_basic_fixture,
    registry_plain_fixture,
    registry_token_fixture,
    write_docker_config,
)
from tests.treecmp import compare_trees

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(size: int, seed: int = 0) -> bytes:
    """Incompressible, distinct per seed: each test pushes blobs no other test has."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _client(host: str, creds: str | None = None, **options: object) -> RegistryClient:
    defaults: dict[str, object] = {"creds": creds, "backoff": 0.05}
    defaults.update(options)
    return RegistryClient(host, RegistryOptions(**defaults))  # type: ignore[arg-type]


@pytest.fixture
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Docker config directory: nothing from ~/.docker is read."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    return directory


def _push_image(
    store: RegistryStore,
    tag: str,
    layers: list[bytes],
    *,
    config: dict[str, object] | None = None,
    subject: Descriptor | None = None,
    docker: bool = False,
) -> Descriptor:
    """Push a small image (config, tar layers as given, manifest) and tag it."""
    config_bytes = canonical_json(config or {"architecture": "amd64", "os": "linux"})
    store.push_blob_bytes(config_bytes, _digest(config_bytes))
    for layer in layers:
        store.push_blob_bytes(layer, _digest(layer))
    kind = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    manifest = Manifest(
        kind,
        Descriptor(
            mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG, _digest(config_bytes), len(config_bytes)
        ),
        [
            Descriptor(mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_TAR, _digest(x), len(x))
            for x in layers
        ],
        {"test": tag},
        subject,
    )
    return store.put_manifest(manifest.to_bytes(), kind, tag)


# -- blobs ------------------------------------------------------------------------------


def test_monolithic_and_chunked_uploads(registry_plain: RunningRegistry) -> None:
    with FaultProxy(registry_plain.host) as proxy:
        store = RegistryStore(_client(proxy.host, chunk_size=MiB), "blobs/upload")
        small, large = _blob(MiB // 2, 1), _blob(2 * MiB + 12345, 2)
        store.push_blob_bytes(small, _digest(small))
        assert proxy.count("PATCH") == 0
        assert proxy.count("PUT", "digest=") == 1
        store.push_blob_bytes(large, _digest(large))
        assert proxy.count("PATCH") == 3  # 1 MiB, 1 MiB, the rest
        patches = [r for r in proxy.seen if r.method == "PATCH"]
        assert [r.headers["Content-Range"] for r in patches] == [
            f"0-{MiB - 1}",
            f"{MiB}-{2 * MiB - 1}",
            f"{2 * MiB}-{len(large) - 1}",
        ]
        assert proxy.count("PUT", "digest=") == 2
        assert store.read_blob(_digest(small)) == small
        assert store.read_blob(_digest(large)) == large
        with store.open_blob(_digest(large)) as stream:
            assert stream.read() == large
        stats = store.client.stats
        assert (stats.blobs_uploaded, stats.bytes_uploaded) == (2, len(small) + len(large))
        # Pushed again: HEAD says present, nothing is uploaded.
        path = store.scratch_dir() / "again"
        path.write_bytes(large)
        store.push_blob_file(path, _digest(large))
        assert not path.exists()
        assert stats.blobs_skipped == 1
        assert stats.blobs_uploaded == 2
        store.close()


def test_head_and_ranges(registry_plain: RunningRegistry) -> None:
    store = RegistryStore(_client(registry_plain.host), "blobs/ranges")
    data = _blob(3 * MiB, 3)
    digest = _digest(data)
    store.push_blob_bytes(data, digest)
    assert store.has_blob(digest)
    assert store.blob_size(digest) == len(data)
    for offset, length in [(0, 1), (12345, 100_000), (len(data) - 7, 7), (MiB, 2 * MiB), (5, 0)]:
        assert store.read_range(digest, offset, length) == data[offset : offset + length]
    assert store.range_reader(digest)(10, 10) == data[10:20]
    missing = _digest(b"never pushed")
    assert not store.has_blob(missing)
    with pytest.raises(NotFoundError, match=rf"blobs/ranges: blob {missing}"):
        store.blob_size(missing)
    with pytest.raises(NotFoundError, match=r"blob .*: not found \(HTTP 404 BLOB_UNKNOWN"):
        store.read_blob(missing)
    with pytest.raises(NotFoundError):
        store.read_range(missing, 0, 10)
    with pytest.raises(IntegrityError, match=r"expected 10 bytes, found 0 \(HTTP 416"):
        store.read_range(digest, len(data) + 10, 10)
    with pytest.raises(IntegrityError, match="expected 10 bytes, found 5"):
        store.read_range(digest, len(data) - 5, 10)
    with pytest.raises(IntegrityError, match=r"size: expected <= 1000"):
        store.read_blob(digest, max_size=1000)
    store.close()


def test_concurrent_range_reads(registry_plain: RunningRegistry) -> None:
    """The read path of a mount: many threads, one store, one connection pool."""
    store = RegistryStore(_client(registry_plain.host), "blobs/concurrent")
    data = _blob(2 * MiB, 9)
    digest = _digest(data)
    store.push_blob_bytes(data, digest)
    ranges = [((n * 7919) % (len(data) - 5000), 1000 + n) for n in range(160)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: store.read_range(digest, *r), ranges))
    assert results == [data[offset : offset + length] for offset, length in ranges]
    store.close()


def test_mount_across_repositories(registry_plain: RunningRegistry) -> None:
    with FaultProxy(registry_plain.host) as proxy:
        client = _client(proxy.host)
        source = RegistryStore(client, "mount/source")
        dest = RegistryStore(client, "mount/dest")
        data = _blob(MiB, 4)
        digest = _digest(data)
        source.push_blob_bytes(data, digest)
        uploaded = client.stats.bytes_uploaded
        dest.copy_blob_from(source, digest)
        assert client.stats.blobs_mounted == 1
        assert client.stats.bytes_uploaded == uploaded
        mounts = [r for r in proxy.seen if r.method == "POST" and "mount=" in r.path]
        assert len(mounts) == 1
        assert digest.removeprefix("sha256:") in mounts[0].path
        assert dest.read_blob(digest) == data
        dest.copy_blob_from(source, digest)  # present: nothing to do
        assert client.stats.blobs_skipped == 1
        # A repository that lacks the blob cannot lend it: the registry answers 202 and
        # the blob is uploaded.
        other = _blob(1000, 5)
        result = client.push_blob(
            "mount/dest2",
            _digest(other),
            len(other),
            lambda: io.BytesIO(other),
            mount_from="mount/empty",
        )
        assert result == "uploaded"
        assert RegistryStore(client, "mount/dest2").read_blob(_digest(other)) == other
        client.close()


def test_copy_between_registries_streams(
    registry_plain: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    source = RegistryStore(_client(registry_plain.host), "copy/source")
    dest = RegistryStore(_client(registry_basic.host, registry_basic.creds), "copy/dest")
    data = _blob(MiB + 1, 6)
    source.push_blob_bytes(data, _digest(data))
    dest.copy_blob_from(source, _digest(data))
    assert dest.client.stats.blobs_mounted == 0
    assert dest.read_blob(_digest(data)) == data
    source.close()
    dest.close()


# -- manifests, indexes, referrers --------------------------------------------------------


def test_manifests_by_tag_and_digest(registry_plain: RunningRegistry) -> None:
    store = RegistryStore(_client(registry_plain.host), "manifests/oci")
    layer = _blob(5000, 7)
    pushed = _push_image(store, "v1", [layer])
    by_tag = store.resolve("v1")
    by_digest = store.resolve(pushed.digest)
    assert by_tag == by_digest
    descriptor, manifest, raw = by_tag
    assert descriptor == Descriptor(mt.OCI_MANIFEST, pushed.digest, pushed.size)
    assert _digest(raw) == pushed.digest
    assert manifest.layers[0].digest == _digest(layer)
    assert store.client.head_manifest("manifests/oci", "v1") == descriptor
    assert store.client.head_manifest("manifests/oci", "nope") is None
    with pytest.raises(NotFoundError, match=r"manifests/oci:nope: no such tag \(tags: v1\)"):
        store.resolve("nope")
    # A manifest is a blob too, as in an OCI layout.
    assert store.has_blob(pushed.digest)
    assert store.blob_size(pushed.digest) == pushed.size
    assert store.read_blob(pushed.digest) == raw
    assert store.read_range(pushed.digest, 2, 5) == raw[2:7]
    # open_store: a digest reference opens the same image; its "tag" is the digest.
    opened, reference = open_store(f"docker://{registry_plain.host}/manifests/oci@{pushed.digest}")
    assert reference == pushed.digest
    assert opened.resolve(reference)[0] == descriptor
    assert isinstance(opened, RegistryStore)
    opened.close()
    store.close()


def test_docker_schema2_manifest(registry_plain: RunningRegistry) -> None:
    store = RegistryStore(_client(registry_plain.host), "manifests/docker")
    pushed = _push_image(store, "v1", [_blob(3000, 8)], docker=True)
    descriptor, manifest, _ = store.resolve("v1")
    assert descriptor.media_type == mt.DOCKER_MANIFEST
    assert manifest.media_type == mt.DOCKER_MANIFEST
    assert descriptor.digest == pushed.digest
    store.close()


def test_index_platform_selection(registry_plain: RunningRegistry) -> None:
    store = RegistryStore(_client(registry_plain.host), "manifests/index")
    entries = []
    for number, (arch, variant) in enumerate([("arm64", "v8"), ("amd64", None), ("arm", "v7")]):
        config: dict[str, object] = {"architecture": arch, "os": "linux"}
        pushed = _push_image(store, f"only-{arch}", [_blob(100, 20 + number)], config=config)
        platform = {"architecture": arch, "os": "linux"} | ({"variant": variant} if variant else {})
        entries.append(Descriptor(pushed.media_type, pushed.digest, pushed.size, platform=platform))
    index = canonical_json(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    )
    pushed_index = store.put_manifest(index, mt.OCI_INDEX, "multi")
    assert store.resolve("multi")[0].digest == entries[1].digest  # linux/amd64 by default
    assert store.resolve("multi", Platform("linux", "arm64"))[0].digest == entries[0].digest
    assert store.resolve(pushed_index.digest, Platform("linux", "arm", "v7"))[0].digest == (
        entries[2].digest
    )
    chosen = store.resolve("multi", Platform("linux", "arm64"))[0]
    assert chosen.platform == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    with pytest.raises(NotFoundError, match=r"no manifest for platform linux/s390x \(found: "):
        store.resolve("multi", Platform("linux", "s390x"))
    store.close()


def test_referrers_fall_back_to_the_tag_schema(registry_plain: RunningRegistry) -> None:
    with FaultProxy(registry_plain.host) as proxy:
        store = RegistryStore(_client(proxy.host), "referrers/app")
        subject = _push_image(store, "v1", [_blob(100, 30)])
        assert store.referrers(subject.digest) == []
        referrer = _push_image(store, "v1-sig", [_blob(100, 31)], subject=subject)
        referrer2 = _push_image(
            store,
            "v1-sbom",
            [_blob(100, 32)],
            config={"architecture": "amd64", "os": "linux", "sbom": True},
            subject=subject,
        )
        assert proxy.count("GET", f"/referrers/{subject.digest}") >= 1  # 2.8 answers 404
        found = store.referrers(subject.digest)
        assert [d.digest for d in found] == [referrer.digest, referrer2.digest]
        assert found[0].artifact_type == mt.OCI_CONFIG
        assert found[0].annotations == {"test": "v1-sig"}
        fallback = "sha256-" + subject.digest.removeprefix("sha256:")
        descriptor, raw = store.client.get_manifest("referrers/app", fallback)
        assert descriptor.media_type == mt.OCI_INDEX
        assert json.loads(raw)["manifests"][1]["digest"] == referrer2.digest
        # Pushing a referrer again lists it once.
        store.put_manifest(
            store.client.get_manifest("referrers/app", referrer.digest)[1], mt.OCI_MANIFEST, "x"
        )
        assert len(store.referrers(subject.digest)) == 2
        assert store.referrers(subject.digest, artifact_type="application/none") == []
        store.close()


# -- auth -------------------------------------------------------------------------------


def test_basic_auth(registry_basic: RunningRegistry, no_docker_config: Path) -> None:
    store = RegistryStore(_client(registry_basic.host, registry_basic.creds), "auth/basic")
    data = _blob(2000, 40)
    store.push_blob_bytes(data, _digest(data))
    assert store.read_blob(_digest(data)) == data
    assert store.client.auth.scheme == "basic"
    store.close()
    wrong = RegistryStore(_client(registry_basic.host, "ketch:wrong"), "auth/basic")
    with pytest.raises(UsageError, match=r"auth/basic: blob .*refused the credentials as 'ketch'"):
        wrong.read_blob(_digest(data))
    anonymous = RegistryStore(_client(registry_basic.host), "auth/basic")
    with pytest.raises(UsageError, match="requires credentials; give --creds"):
        anonymous.has_blob(_digest(data))


def test_token_auth(registry_token: RunningRegistry, no_docker_config: Path) -> None:
    client = _client(registry_token.host, registry_token.creds)
    store = RegistryStore(client, "auth/token")
    data = _blob(2000, 41)
    store.push_blob_bytes(data, _digest(data))
    assert client.auth.scheme == "bearer"
    fetched = client.auth.tokens_fetched
    for _ in range(3):
        assert store.read_blob(_digest(data)) == data
        assert store.read_range(_digest(data), 10, 10) == data[10:20]
    assert fetched == 2  # pull (the HEAD before pushing), then pull,push
    assert client.auth.tokens_fetched == fetched  # reads reuse the cached pull token
    # A mount needs push on the destination and pull on the source: one token for both.
    other = RegistryStore(client, "auth/token-other")
    other.copy_blob_from(store, _digest(data))
    assert client.stats.blobs_mounted == 1
    assert other.read_blob(_digest(data)) == data
    store.close()
    wrong = RegistryStore(_client(registry_token.host, "ketch:wrong"), "auth/token")
    with pytest.raises(UsageError, match=r"token server refused for 'ketch'.*check --creds"):
        wrong.has_blob(_digest(data))
    anonymous = RegistryStore(_client(registry_token.host), "auth/token")
    with pytest.raises(UsageError, match="token server refused anonymously"):
        anonymous.has_blob(_digest(data))


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_credentials_from_the_docker_config(
    mode: str,
    registry_basic: RunningRegistry,
    registry_token: RunningRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = registry_basic if mode == "basic" else registry_token
    assert registry.username and registry.password
    directory = tmp_path / "docker"
    write_docker_config(directory, registry.host, registry.username, registry.password)
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    data = _blob(500, 42)
    store, tag = open_store(f"docker://{registry.host}/auth/config:v1")
    assert tag == "v1"
    store.push_blob_bytes(data, _digest(data))
    assert store.read_blob(_digest(data)) == data
    # The path can also be given directly.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    explicit, _ = open_store(
        f"docker://{registry.host}/auth/config:v1",
        StoreOptions(RegistryOptions(docker_config=directory / "config.json")),
    )
    assert explicit.has_blob(_digest(data))
    for opened in (store, explicit):
        assert isinstance(opened, RegistryStore)
        opened.close()


# -- failures: retries, timeouts, redirects, digests ----------------------------------------


def test_retries_on_503_429_and_resets(registry_plain: RunningRegistry) -> None:
    waits: list[float] = []
    with FaultProxy(registry_plain.host) as proxy:
        client = RegistryClient(proxy.host, RegistryOptions(backoff=0.01), sleep=waits.append)
        store = RegistryStore(client, "faults/retry")
        data = _blob(MiB, 50)
        digest = _digest(data)
        store.push_blob_bytes(data, digest)
        proxy.plan(["503", "429", "reset", "500"], match=blob_get)
        assert store.read_blob(digest) == data
        assert proxy.pending == 0
        assert client.stats.retries == 4
        assert 1.0 in waits  # Retry-After: 1 honoured
        proxy.plan(["reset", "503"], match=blob_get)
        assert store.read_range(digest, 100, 200) == data[100:300]
        # Too many: the error names the blob and the last failure.
        proxy.plan(["503"] * 10, match=blob_get)
        with pytest.raises(
            StorageError, match=rf"faults/retry: blob {digest}: .*HTTP 503.*5 attempts"
        ):
            store.read_blob(digest)
        store.close()


def test_retried_uploads_start_again(registry_plain: RunningRegistry) -> None:
    with FaultProxy(registry_plain.host) as proxy:
        client = RegistryClient(
            proxy.host, RegistryOptions(backoff=0.01, chunk_size=MiB), sleep=lambda s: None
        )
        store = RegistryStore(client, "faults/upload")
        chunked = _blob(2 * MiB + 1, 51)
        proxy.plan(["503"], match=lambda method, path: method == "PATCH")
        store.push_blob_bytes(chunked, _digest(chunked))
        assert store.read_blob(_digest(chunked)) == chunked
        monolithic = _blob(1000, 52)
        proxy.plan(["reset"], match=lambda method, path: method == "PUT")
        store.push_blob_bytes(monolithic, _digest(monolithic))
        assert store.read_blob(_digest(monolithic)) == monolithic
        assert client.stats.retries == 2
        assert proxy.count("POST", "/blobs/uploads/") == 4  # each failure restarted its upload
        store.close()


def test_a_dropped_stream_resumes_with_range(registry_plain: RunningRegistry) -> None:
    with FaultProxy(registry_plain.host) as proxy:
        client = RegistryClient(proxy.host, RegistryOptions(), sleep=lambda s: None)
        store = RegistryStore(client, "faults/stream")
        data = _blob(3 * MiB, 53)
        store.push_blob_bytes(data, _digest(data))
        proxy.plan(["truncate"], match=blob_get)
        with store.open_blob(_digest(data)) as stream:
            assert stream.read() == data
        resumed = [r for r in proxy.seen if r.method == "GET" and "Range" in r.headers]
        assert len(resumed) == 1
        assert resumed[0].headers["Range"].startswith("bytes=")
        proxy.plan(["truncate"], match=blob_get)
        assert store.read_blob(_digest(data)) == data  # whole reads are retried
        store.close()


def test_a_server_that_never_answers_times_out() -> None:
    with SilentServer() as server:
        client = RegistryClient(
            server.host,
            RegistryOptions(connect_timeout=1.0, read_timeout=1.0, retries=1, backoff=0.1),
        )
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"GET /v2/: .*timed out.*2 attempts"):
            RegistryStore(client, "x").has_blob(_digest(b"x"))
        elapsed = time.monotonic() - started
        client.close()
    assert 1.5 < elapsed < 8.0


def test_redirects_are_followed(registry_plain: RunningRegistry) -> None:
    with FaultProxy(registry_plain.host) as proxy:
        store = RegistryStore(_client(proxy.host), "redirect/plain")
        data = _blob(2 * MiB, 60)
        digest = _digest(data)
        store.push_blob_bytes(data, digest)
        proxy.plan(["redirect-all"], match=blob_get)  # to the registry itself, another origin
        assert store.read_blob(digest) == data
        assert store.read_range(digest, 7, 1000) == data[7:1007]
        with store.open_blob(digest) as stream:
            assert stream.read() == data
        assert sum(1 for r in proxy.seen if r.fault == "redirect-all") == 3
        store.close()


def test_redirects_do_not_carry_credentials_to_another_host(
    registry_basic: RunningRegistry,
) -> None:
    data = _blob(MiB, 61)
    digest = _digest(data)
    path = f"/v2/redirect/basic/blobs/{digest}"
    with FaultProxy(registry_basic.host) as proxy, ObjectStore({path: data}) as objects:
        store = RegistryStore(_client(proxy.host, registry_basic.creds), "redirect/basic")
        store.push_blob_bytes(data, digest)
        proxy.plan(["redirect-all"], match=blob_get, redirect_to=objects.url)
        assert store.read_blob(digest) == data
        assert store.read_range(digest, 5, 10) == data[5:15]
        assert len(objects.seen) == 2
        assert all("authorization" not in headers for headers in objects.seen)
        assert objects.seen[1]["range"] == "bytes=5-14"
        redirected = [r for r in proxy.seen if r.fault == "redirect-all"]
        assert all(r.headers.get("Authorization", "").startswith("Basic ") for r in redirected)
        store.close()


def test_a_store_that_ignores_range(registry_plain: RunningRegistry) -> None:
    small, large = _blob(100_000, 62), _blob(5 * MiB, 63)
    blobs = {
        f"/v2/redirect/norange/blobs/{_digest(small)}": small,
        f"/v2/redirect/norange/blobs/{_digest(large)}": large,
    }
    with (
        FaultProxy(registry_plain.host) as proxy,
        ObjectStore(blobs, ranges=False) as objects,
    ):
        store = RegistryStore(_client(proxy.host), "redirect/norange")
        proxy.plan(["redirect-all"], match=blob_get, redirect_to=objects.url)
        assert store.read_range(_digest(small), 10, 20) == small[10:30]  # sliced
        with pytest.raises(StorageError, match=r"expected HTTP 206 .* found 200 with 5242880"):
            store.read_range(_digest(large), 10, 20)
        store.close()


def test_digest_mismatches_are_detected(registry_plain: RunningRegistry) -> None:
    with FaultProxy(registry_plain.host) as proxy:
        store = RegistryStore(_client(proxy.host), "faults/digest")
        data = _blob(100_000, 70)
        digest = _digest(data)
        pushed = _push_image(store, "v1", [data])
        proxy.plan(["corrupt"], match=blob_get)
        with pytest.raises(
            IntegrityError,
            match=rf"faults/digest: blob {digest}: digest: expected {digest}, found sha256:",
        ):
            store.read_blob(digest)
        for reference in ("v1", pushed.digest):
            proxy.plan(["corrupt"], match=lambda method, path: "/manifests/" in path)
            with pytest.raises(
                IntegrityError, match=rf"manifest {reference}: digest: expected {pushed.digest}"
            ):
                store.resolve(reference)
        # Bytes pushed under another digest are not stored.
        wrong = _digest(b"something else")
        with pytest.raises(
            StorageError, match=rf"pushing blob {wrong}: the data has digest {_digest(b'these')}"
        ):
            store.push_blob_bytes(b"these", wrong)
        assert not store.has_blob(wrong)
        # Copied from a store that serves the wrong bytes: an integrity error naming it.
        source = RegistryStore(_client(proxy.host), "faults/digest-source")
        source.push_blob_bytes(data, digest)
        proxy.plan(["corrupt"], match=blob_get)
        dest = RegistryStore(_client(registry_plain.host), "faults/digest-dest")
        with pytest.raises(IntegrityError, match=rf"faults/digest-source: blob {digest}: digest"):
            dest.copy_blob_from(source, digest)
        assert not dest.has_blob(digest)
        store.close()


# -- whole conversions ------------------------------------------------------------------


def _skopeo(*args: str) -> str:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"skopeo {' '.join(args)}: {result.stderr[-2000:]}"
    return result.stdout


def _ketch_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main([*argv, "--json"]) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


@pytest.fixture(scope="module")
def corpus_registry(corpus_oci: Path, registry_plain: RunningRegistry) -> Iterator[str]:
    """The corpus's py1 and py2, copied by skopeo into ``corpus`` on the plain registry."""
    for tag in ("py1", "py2"):
        _skopeo(
            "copy",
            "--quiet",
            f"oci:{corpus_oci}:{tag}",
            f"docker://{registry_plain.host}/corpus:{tag}",
            "--dest-tls-verify=false",
        )
    yield registry_plain.host


def test_registry_to_registry(
    corpus_registry: str,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_docker_config: Path,
) -> None:
    host = corpus_registry
    source, dest = f"docker://{host}/corpus:py1", f"docker://{host}/ketch:py1"
    summary = _ketch_json(capsys, "convert", source, dest)
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{host}/ketch:py1"))
    assert inspected["Env"] == ["PATH=/usr/local/bin:/usr/bin:/bin"]
    assert inspected["Digest"] == summary["manifest_digest"]
    raw = json.loads(
        _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/ketch:py1")
    )
    source_raw = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/corpus:py1")
    source_digest = _digest(source_raw.encode())
    assert raw["subject"]["digest"] == source_digest == summary["source_manifest"]
    assert raw["subject"]["size"] == len(source_raw.encode())
    assert raw["annotations"][ANNOTATION_KETCH_SOURCE] == source_digest
    assert raw["layers"][-1]["mediaType"] == KETCH_BOOTSTRAP
    store, _ = open_store(dest)
    assert isinstance(store, RegistryStore)
    assert [d.digest for d in store.referrers(source_digest)] == [summary["manifest_digest"]]
    store.close()

    copied = tmp_path / "copied"
    _skopeo("copy", "--quiet", "--src-tls-verify=false", dest, f"oci:{copied}:py1")
    assert _ketch_json(capsys, "check", f"oci:{copied}:py1")["ok"] is True

    unpacked = _ketch_json(capsys, "unpack", dest, str(tmp_path / "tree"))
    assert unpacked["files"]
    differences = compare_trees(umoci_unpacked(corpus_oci, "py1"), tmp_path / "tree")
    assert differences == [], "\n".join(str(d) for d in differences[:20])

    # Converted again: every blob is already there, and the manifest is the same.
    again = _ketch_json(capsys, "convert", source, dest)
    assert again["manifest_digest"] == summary["manifest_digest"]


def test_oci_to_registry_and_registry_to_oci(
    corpus_registry: str,
    corpus_oci: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_docker_config: Path,
) -> None:
    host = corpus_registry
    pushed = _ketch_json(capsys, "convert", f"oci:{corpus_oci}:py2", f"docker://{host}/ketch:py2")
    local = tmp_path / "local"
    pulled = _ketch_json(capsys, "convert", f"docker://{host}/corpus:py2", f"oci:{local}:py2")
    # The same source image, from either side, gives the same Ketch image.
    assert pushed["manifest_digest"] == pulled["manifest_digest"]
    assert pushed["root_digest"] == pulled["root_digest"]
    assert _ketch_json(capsys, "check", f"oci:{local}:py2")["ok"] is True
    digest = str(pushed["manifest_digest"])
    inspected = _ketch_json(capsys, "inspect", f"docker://{host}/ketch@{digest}")
    assert inspected["root_digest"] == pushed["root_digest"]
    _skopeo("inspect", "--tls-verify=false", f"docker://{host}/ketch:py2")


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_convert_to_registries_with_auth(
    mode: str,
    registry_basic: RunningRegistry,
    registry_token: RunningRegistry,
    corpus_oci: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI has no credential options yet: its default reads the Docker config."""
    registry = registry_basic if mode == "basic" else registry_token
    assert registry.username and registry.password
    directory = tmp_path / "docker"
    write_docker_config(directory, registry.host, registry.username, registry.password)
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    dest = f"docker://{registry.host}/ketch:base"
    summary = _ketch_json(capsys, "convert", f"oci:{corpus_oci}:base", dest)
    inspected = _ketch_json(capsys, "inspect", dest)
    assert inspected["manifest_digest"] == summary["manifest_digest"]
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nothing"))
    assert main(["inspect", dest]) == 2  # UsageError: credentials needed
    assert "give --creds" in capsys.readouterr().err


def test_skopeo_copies_a_ketch_image_with_a_subject_in_a_layout(
    corpus_oci: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OCI layout holds the subject field too, and skopeo copies it unchanged."""
    dest = tmp_path / "ketch"
    summary = _ketch_json(capsys, "convert", f"oci:{corpus_oci}:base", f"oci:{dest}:base")
    raw = json.loads(_skopeo("inspect", "--raw", f"oci:{dest}:base"))
    assert raw["subject"]["digest"] == summary["source_manifest"]
    _skopeo("copy", "--quiet", f"oci:{dest}:base", f"oci:{tmp_path / 'copy'}:base")
    copied = json.loads(_skopeo("inspect", "--raw", f"oci:{tmp_path / 'copy'}:base"))
    assert copied == raw
    assert os.path.isdir(tmp_path / "copy")


def test_mount_and_run_from_a_registry(
    corpus_registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_docker_config: Path
) -> None:
    """Only the manifest and bootstrap come at mount; chunks by Range; a container runs."""
    host = corpus_registry
    dest = f"docker://{host}/ketch-run:py1"
    _ketch_json(capsys, "convert", f"docker://{host}/corpus:py1", dest)
    env = {**os.environ, "KETCH_STATE_DIR": str(tmp_path / "state")}
    ketch = [sys.executable, "-m", "ketch.cli.main"]
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(
        [*ketch, "mount", dest, str(mountpoint), "--cache-dir", str(tmp_path / "cache")],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        assert (mountpoint / "app" / "main.py").read_bytes().startswith(b"import json")
        status = json.loads(
            subprocess.run(
                [*ketch, "status", str(mountpoint), "--json"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        assert 0 < status["metrics"]["ketch_backend_read_bytes_total"] < 2 << 20
    finally:
        subprocess.run(
            [*ketch, "umount", str(mountpoint)], env=env, check=True, capture_output=True
        )
    result = subprocess.run(
        [*ketch, "run", dest, "--cache-dir", str(tmp_path / "cache"), "--rm-mount"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"ok": true}'
