"""Proxies and mirrors, with real servers on loopback: registry traffic through tinyproxy;
blob reads from a docker-registry pull-through cache (``proxy.remoteurl``) with the
origin as fallback when the mirror is killed (between reads and in the middle of one),
answers 5xx, misses, or sends wrong bytes (never served); a failed mirror rests for the
health-check interval, then serves again; ``ketch mount`` and ``ketch run`` with
``--mirror`` and ``--proxy``.

The origin is the session's plain registry seen through a ``FaultProxy`` that records
every request, so "the origin saw no blob GET" is what the origin was asked by Ketch
(the mirror fetches from the registry directly, not through the recorder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scripts.registry import RegistryServer

from ketch.cli.main import main
from ketch.config import RegistryOptions
from ketch.format.blob import read_blob_table
from ketch.format.records import ChunkRecord
from ketch.fs.image_fs import ImageFS
from ketch.image.check import check_image
from ketch.image.ketch_image import KetchImage, open_ketch_image
from ketch.storage.blobs import BlobRef
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.registry.client import RegistryClient
from ketch.storage.registry.mirrors import MirroredRegistryStore, mirror_client
from ketch.storage.registry.store import RegistryStore
from tests.fixtures.mirrors import (  # noqa: F401 (fixtures)
    MirrorServer,
    RunningProxy,
    StartMirror,
    ThrottledRelay,
    http_proxy_fixture,
    start_mirror_fixture,
    wait_until_cached,
)
from tests.fixtures.registry import (  # noqa: F401 (fixtures)
    FaultProxy,
    RunningRegistry,
    blob_get,
    registry_plain_fixture,
)

pytestmark = pytest.mark.integration

KETCH = [sys.executable, "-m", "ketch.cli.main"]
SOURCE_REPOSITORY = "mirrors/source"
REPOSITORY = "mirrors/ketch"
TAG = "py1"
MiB = 1 << 20


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=600, env=env
    )
    assert result.returncode == 0, (
        f"`{' '.join(command)}` exited {result.returncode}: {result.stderr[-3000:]}"
    )
    return result.stdout


@dataclass(frozen=True, slots=True)
class OriginImage:
    registry: RunningRegistry
    manifest_digest: str
    blobs: list[str]  # every blob of the Ketch image: data blobs, bootstrap, config


@pytest.fixture(scope="module")
def origin_image(corpus_oci: Path, registry_plain: RunningRegistry) -> OriginImage:
    """Corpus py1 copied by skopeo to the plain registry, then converted by
    ``ketch convert docker://... docker://...`` next to it."""
    host = registry_plain.host
    _run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{corpus_oci}:{TAG}",
            f"docker://{host}/{SOURCE_REPOSITORY}:{TAG}",
        ]
    )
    out = _run(
        [
            *KETCH,
            "convert",
            f"docker://{host}/{SOURCE_REPOSITORY}:{TAG}",
            f"docker://{host}/{REPOSITORY}:{TAG}",
            "--json",
        ]
    )
    summary = json.loads(out)
    store = RegistryStore(RegistryClient(host), REPOSITORY)
    try:
        descriptor, manifest, _ = store.resolve(TAG)
    finally:
        store.close()
    blobs = [layer.digest for layer in manifest.layers] + [manifest.config.digest]
    assert descriptor.digest == summary["manifest_digest"]
    return OriginImage(registry_plain, descriptor.digest, blobs)


@pytest.fixture
def origin(origin_image: OriginImage) -> Iterator[FaultProxy]:
    """The origin registry as Ketch sees it: a recorder of every request in front of it."""
    with FaultProxy(origin_image.registry.host) as proxy:
        yield proxy


@pytest.fixture
def warm_mirror(start_mirror: StartMirror, origin_image: OriginImage) -> Iterator[MirrorServer]:
    """A pull-through cache of the origin that already holds every blob of the image."""
    mirror = start_mirror(origin_image.registry.url)
    wait_until_cached(mirror.url, REPOSITORY, origin_image.blobs)
    yield mirror


def _blob_requests(proxy: FaultProxy, method: str = "GET") -> int:
    return proxy.count(method, f"/v2/{REPOSITORY}/blobs/")


class Clock:
    """A clock the test moves by hand: health-check intervals without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _mirrored(
    origin: FaultProxy, mirror_urls: list[str], interval: float = 30.0, clock: Clock | None = None
) -> MirroredRegistryStore:
    options = RegistryOptions(backoff=0.01)
    return MirroredRegistryStore(
        RegistryClient(origin.host, options),
        REPOSITORY,
        [mirror_client(url, options) for url in mirror_urls],
        health_check_interval=interval,
        clock=clock or Clock(),
    )


def _open(store: MirroredRegistryStore | RegistryStore) -> tuple[KetchImage, ImageFS]:
    image = open_ketch_image(store, TAG)
    return image, ImageFS(image.bootstrap, ChunkReader(store, image.bootstrap.digest_algorithm))


def _largest_files(tree: Path, count: int) -> list[str]:
    """The ``count`` largest regular files of an unpacked tree, as image paths."""
    files = [
        (p.stat().st_size, "/" + str(p.relative_to(tree)))
        for p in tree.rglob("*")
        if p.is_file() and not p.is_symlink()
    ]
    return [path for _, path in sorted(files, reverse=True)[:count]]


def _read_file(fs: ImageFS, path: str) -> bytes:
    ino = fs.resolve(path)
    return fs.read(ino, 0, fs.getattr(ino).size)


# -- the HTTP proxy ---------------------------------------------------------------------


def test_registry_reads_go_through_the_http_proxy(
    origin_image: OriginImage,
    http_proxy: RunningProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = origin_image.registry.host
    reference = f"docker://{host}/{REPOSITORY}:{TAG}"
    before = len(http_proxy.requests())
    assert main(["check", reference, "--proxy", http_proxy.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    through = http_proxy.requests()[before:]
    prefix = f"http://{host}/v2/{REPOSITORY}/"
    assert any(r.method == "GET" and r.url.startswith(prefix + "manifests/") for r in through)
    blob_gets = [r for r in through if r.method == "GET" and r.url.startswith(prefix + "blobs/")]
    assert len(blob_gets) >= len(origin_image.blobs) - 1  # every data blob and the bootstrap

    # The same proxy from the configuration file.
    config = tmp_path / "config.toml"
    config.write_text(f'[registry]\nproxy = "{http_proxy.url}"\n')
    before = len(http_proxy.requests())
    assert main(["--config", str(config), "inspect", reference, "--json"]) == 0
    capsys.readouterr()
    assert len(http_proxy.requests()) > before

    # Without a proxy nothing goes through it.
    before = len(http_proxy.requests())
    assert main(["inspect", reference, "--json"]) == 0
    capsys.readouterr()
    assert len(http_proxy.requests()) == before


# -- mirrors: served, warmed, missed ------------------------------------------------------


def test_a_cold_pull_through_cache_warms_then_serves_every_blob_read(
    origin_image: OriginImage, origin: FaultProxy, start_mirror: StartMirror
) -> None:
    mirror = start_mirror(origin_image.registry.url)
    cold = _mirrored(origin, [mirror.url])
    try:
        image = open_ketch_image(cold, TAG)
        assert check_image(image).ok
    finally:
        cold.close()
    # A cold cache sends a large blob whole to a Range request: a miss, not a failure.
    assert cold.mirror_failures == 0
    assert cold.mirror_reads > 0

    wait_until_cached(mirror.url, REPOSITORY, origin_image.blobs)
    origin.seen.clear()
    warm = _mirrored(origin, [mirror.url])
    try:
        report = check_image(open_ketch_image(warm, TAG))
    finally:
        warm.close()
    assert report.ok and report.chunks > 100
    stats = warm.stats()
    assert (stats.mirror_failures, stats.mirror_misses, stats.origin_fallbacks) == (0, 0, 0)
    assert stats.mirror_reads > report.blobs
    assert _blob_requests(origin, "GET") == 0
    assert _blob_requests(origin, "HEAD") == 0
    assert origin.count("GET", f"/v2/{REPOSITORY}/manifests/") >= 1  # manifests: origin only


def test_a_mirror_without_the_repository_misses_and_stays_healthy(
    origin_image: OriginImage, origin: FaultProxy, tmp_path: Path
) -> None:
    with RegistryServer("plain", tmp_path / "empty") as empty:
        store = _mirrored(origin, [empty.url])
        try:
            image = open_ketch_image(store, TAG)
            assert check_image(image).ok
        finally:
            store.close()
    stats = store.stats()
    assert stats.mirror_failures == 0 and stats.mirror_reads == 0
    # Every read asked the mirror first (it stays healthy), then the origin.
    assert stats.mirror_misses == stats.origin_fallbacks > 10


# -- mirrors killed ---------------------------------------------------------------------------


def test_a_mirror_killed_between_two_reads(
    origin_image: OriginImage,
    origin: FaultProxy,
    warm_mirror: MirrorServer,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
) -> None:
    mirror = warm_mirror
    tree = umoci_unpacked(corpus_oci, TAG)
    first, second, third = _largest_files(tree, 3)
    clock = Clock()
    store = _mirrored(origin, [mirror.url], interval=30.0, clock=clock)
    try:
        _, fs = _open(store)
        assert _read_file(fs, first) == (tree / first[1:]).read_bytes()
        assert store.mirror_reads > 0 and _blob_requests(origin) == 0

        mirror.terminate(kill=True)
        assert _read_file(fs, second) == (tree / second[1:]).read_bytes()
        assert store.mirror_failures == 1
        fallbacks = store.origin_fallbacks
        assert fallbacks >= 1 and _blob_requests(origin) >= 1

        # Skipped while the interval runs: no new attempt, no new failure.
        assert _read_file(fs, third) == (tree / third[1:]).read_bytes()
        assert store.mirror_failures == 1 and store.origin_fallbacks > fallbacks

        # Back after the interval, and served by the mirror again.
        mirror.restart()
        clock.now += 30.0
        reads = store.mirror_reads
        assert _read_file(fs, first) == (tree / first[1:]).read_bytes()
        assert store.mirror_reads > reads and store.mirror_failures == 1
    finally:
        store.close()


def _big_contiguous_run(image: KetchImage, limit: int) -> tuple[str, list[ChunkRecord]]:
    """Chunks of the image's largest data blob, adjacent, up to ``limit`` bytes in all
    (from the blob's own chunk table, as ``ketch check`` reads it)."""
    blobs = image.bootstrap.blobs()
    index = max(range(len(blobs)), key=lambda i: blobs[i].size)
    digest = blobs[index].oci_digest
    _, entries = read_blob_table(digest, blobs[index].size, image.store.range_reader(digest))
    run: list[ChunkRecord] = []
    for e in sorted(entries, key=lambda e: e.compressed_offset):
        if run and e.compressed_offset != run[-1].compressed_offset + run[-1].compressed_size:
            break
        if run and e.compressed_offset + e.compressed_size - run[0].compressed_offset > limit:
            break
        run.append(
            ChunkRecord(
                e.digest,
                index,
                e.compressed_offset,
                e.compressed_size,
                e.uncompressed_size,
                e.codec,
            )
        )
    return digest, run


def test_a_mirror_killed_during_a_large_range_read(
    origin_image: OriginImage, origin: FaultProxy, warm_mirror: MirrorServer
) -> None:
    mirror = warm_mirror
    reference_store = RegistryStore(RegistryClient(origin_image.registry.host), REPOSITORY)
    try:
        image = open_ketch_image(reference_store, TAG)
        blob, run = _big_contiguous_run(image, 48 * MiB)
        span = run[-1].compressed_offset + run[-1].compressed_size - run[0].compressed_offset
        assert span > 8 * MiB, f"expected a large run of chunks, found {span} bytes"
        expected = ChunkReader(reference_store, image.bootstrap.digest_algorithm).read(
            BlobRef(blob), run
        )
    finally:
        reference_store.close()

    # The relay passes the mirror's answer on at about 12 MiB/s: the mirror is killed
    # when 2 MiB of the one range read have gone through.
    with ThrottledRelay(mirror.host) as relay:
        store = _mirrored(origin, [relay.url])
        try:
            image = open_ketch_image(store, TAG)  # the bootstrap, from the mirror
            reads = store.mirror_reads
            start = relay.relayed
            reader = ChunkReader(store, image.bootstrap.digest_algorithm, max_merge=64 * MiB)
            result: list[list[bytes]] = []
            errors: list[BaseException] = []

            def read() -> None:
                try:
                    result.append(reader.read(BlobRef(blob), run))
                except BaseException as exc:  # handed to the test thread
                    errors.append(exc)

            origin.seen.clear()
            thread = threading.Thread(target=read)
            thread.start()
            relay.wait_relayed(start + 2 * MiB)
            mirror.terminate(kill=True)
            thread.join(timeout=120)
            assert not thread.is_alive()
        finally:
            store.close()
    assert errors == []
    assert result == [expected]
    assert store.mirror_reads == reads  # the range was not the mirror's
    assert (store.mirror_failures, store.origin_fallbacks) == (1, 1)
    ranges = [r.headers.get("Range") for r in origin.seen if blob in r.path]
    assert ranges == [f"bytes={run[0].compressed_offset}-{run[0].compressed_offset + span - 1}"]


def test_a_blob_stream_continues_from_the_origin_when_the_mirror_dies(
    origin_image: OriginImage, origin: FaultProxy, warm_mirror: MirrorServer
) -> None:
    mirror = warm_mirror
    store = _mirrored(origin, [mirror.url])
    try:
        image = open_ketch_image(store, TAG)
        sizes = {blob.oci_digest: blob.size for blob in image.bootstrap.blobs()}
        digest = max(sizes, key=lambda d: sizes[d])
        assert sizes[digest] > 16 * MiB
        sha = hashlib.sha256()
        with store.open_blob(digest) as stream:
            head = stream.read(MiB)
            sha.update(head)
            mirror.terminate(kill=True)
            while block := stream.read(MiB):
                sha.update(block)
    finally:
        store.close()
    assert "sha256:" + sha.hexdigest() == digest
    assert store.mirror_failures == 1
    resumed = [r.headers.get("Range", "") for r in origin.seen if digest in r.path]
    assert len(resumed) == 1 and resumed[0].startswith("bytes=") and resumed[0] != "bytes=0-"


# -- mirrors that lie or fail -----------------------------------------------------------------


def test_wrong_bytes_from_a_mirror_are_never_served(
    origin_image: OriginImage,
    origin: FaultProxy,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
) -> None:
    tree = umoci_unpacked(corpus_oci, TAG)
    first, second = _largest_files(tree, 2)
    clock = Clock()
    # The "mirror": the origin registry behind a proxy that corrupts blob bodies.
    with FaultProxy(origin_image.registry.host) as liar:
        liar.plan(["corrupt", "corrupt"], match=blob_get)
        store = _mirrored(origin, [f"http://{liar.host}"], interval=10.0, clock=clock)
        try:
            # 1. A whole blob (the bootstrap): checked against its digest, re-read.
            _, fs = _open(store)
            assert (store.mirror_failures, store.origin_fallbacks) == (1, 1)
            assert liar.pending == 1

            # 2. Skipped while the interval runs: the liar is not asked.
            asked = len(liar.seen)
            assert _read_file(fs, first) == (tree / first[1:]).read_bytes()
            assert len(liar.seen) == asked and store.mirror_failures == 1

            # 3. Tried again after the interval: a range whose chunks fail their digests.
            clock.now += 10.0
            assert _read_file(fs, second) == (tree / second[1:]).read_bytes()
            assert liar.pending == 0 and store.mirror_failures == 2
            assert len(liar.seen) == asked + 1

            # 4. After the next interval the mirror is honest again, and used.
            clock.now += 10.0
            reads = store.mirror_reads
            assert _read_file(fs, first) == (tree / first[1:]).read_bytes()
            assert store.mirror_reads > reads and store.mirror_failures == 2
        finally:
            store.close()


def test_a_mirror_answering_5xx_fails_over_at_once(
    origin_image: OriginImage, origin: FaultProxy
) -> None:
    with FaultProxy(origin_image.registry.host) as broken:
        broken.plan(["503"], match=blob_get)
        store = _mirrored(origin, [f"http://{broken.host}"])
        try:
            open_ketch_image(store, TAG)
        finally:
            store.close()
    # No retries against a mirror: the origin is its retry.
    assert broken.count("GET", "/blobs/") == 1
    assert (store.mirror_failures, store.origin_fallbacks, store.mirror_reads) == (1, 1, 0)


def test_the_next_mirror_is_tried_before_the_origin(
    origin_image: OriginImage, origin: FaultProxy, warm_mirror: MirrorServer
) -> None:
    dead = FaultProxy(origin_image.registry.host)
    dead_url = f"http://{dead.host}"
    dead.close()  # nothing listens there any more: connection refused
    store = _mirrored(origin, [dead_url, warm_mirror.url])
    try:
        image = open_ketch_image(store, TAG)
        assert check_image(image).ok
    finally:
        store.close()
    assert store.mirror_failures == 1 and store.origin_fallbacks == 0
    assert _blob_requests(origin) == 0


# -- the CLI: mount and run -------------------------------------------------------------------


@pytest.fixture
def state_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's daemons register under a private state dir, all stopped at the end
    (short, not under ``tmp_path``: the API socket's path must fit in 108 bytes)."""
    state = Path(tempfile.mkdtemp(prefix="ketch-state-"))
    monkeypatch.setenv("KETCH_STATE_DIR", str(state))
    yield state
    for record in (state / "mounts").glob("*.json") if (state / "mounts").exists() else []:
        mountpoint = json.loads(record.read_text())["mountpoint"]
        subprocess.run([*KETCH, "umount", mountpoint], capture_output=True, check=False)
    shutil.rmtree(state, ignore_errors=True)


def test_ketch_mount_reads_chunks_from_the_mirror(
    origin: FaultProxy,
    warm_mirror: MirrorServer,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
    state_dir: Path,
) -> None:
    tree = umoci_unpacked(corpus_oci, TAG)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with FaultProxy(warm_mirror.host) as mirror:
        env = {**os.environ, "KETCH_STATE_DIR": str(state_dir)}
        _run(
            [
                *KETCH,
                "mount",
                f"docker://{origin.host}/{REPOSITORY}:{TAG}",
                str(mountpoint),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--mirror",
                f"http://{mirror.host}",
            ],
            env,
        )
        try:
            for path in ["/app/main.py", *_largest_files(tree, 1)]:
                assert (mountpoint / path[1:]).read_bytes() == (tree / path[1:]).read_bytes()
            metrics = json.loads(_run([*KETCH, "status", str(mountpoint), "--json"], env))[
                "metrics"
            ]
            assert metrics["ketch_mirror_reads_total"] > 0
            assert metrics["ketch_mirror_failures_total"] == 0
        finally:
            _run([*KETCH, "umount", str(mountpoint)], env)
        ranged = [r for r in mirror.seen if r.method == "GET" and "Range" in r.headers]
    assert ranged, "expected range reads of chunks at the mirror"
    assert _blob_requests(origin, "GET") == 0 and _blob_requests(origin, "HEAD") == 0
    assert origin.count("GET", f"/v2/{REPOSITORY}/manifests/") >= 1


def test_ketch_run_through_the_proxy_and_a_mirror(
    origin_image: OriginImage,
    warm_mirror: MirrorServer,
    http_proxy: RunningProxy,
    tmp_path: Path,
    state_dir: Path,
) -> None:
    mirror_url: str = warm_mirror.url
    before = len(http_proxy.requests())
    out = _run(
        [
            *KETCH,
            "run",
            f"docker://{origin_image.registry.host}/{REPOSITORY}:{TAG}",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--rm-mount",
            "--mirror",
            mirror_url,
            "--proxy",
            http_proxy.url,
        ],
        {**os.environ, "KETCH_STATE_DIR": str(state_dir)},
    )
    assert out.strip() == '{"ok": true}'
    through = http_proxy.requests()[before:]
    # The daemon's chunk reads went to the mirror, through the proxy.
    assert any(r.url.startswith(f"{mirror_url}/v2/{REPOSITORY}/blobs/") for r in through)
