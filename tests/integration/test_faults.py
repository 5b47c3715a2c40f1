"""Whole real images read through faults (issue 16): a mount daemon never serves a wrong
byte, never dies of a fault, fails only the reads whose chunks are bad, and counts what
it met exactly as the fault proxy injected it.

The random faults come from a seed printed by each test (``KETCH_FAULT_SEED=N`` replays
a run)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.format.digests import DigestAlgorithm
from tests.fixtures.registry import (  # noqa: F401 (fixtures)
    FaultProxy,
    RunningRegistry,
    fault_seed,
    registry_plain_fixture,
)
from tests.integration.ketch_cli import KETCH, ketch
from tests.treecmp import compare_trees

pytestmark = pytest.mark.integration

REPOSITORY = "faults/py1"
TAG = "py1"
TIMEOUT = 2.0  # the daemon's read timeout; a stall lasts longer
#: kinds of fault injected while a whole image is read, each request at RATE
KINDS = ["503", "429", "reset", "reset-body", "truncate", "flip", "stall"]
RATE = 0.08
#: fault -> the cause the daemon counts it under (flip: a failed chunk check instead)
CAUSES = {
    "503": "http_503",
    "429": "http_429",
    "reset": "connection",
    "reset-body": "connection",
    "truncate": "connection",
    "stall": "timeout",
}


@pytest.fixture(scope="module")
def pushed(corpus_oci: Path, registry_plain: RunningRegistry) -> RunningRegistry:
    """Corpus py1 converted into the registry (``ketch convert oci:... docker://...``)."""
    ketch(
        "convert", f"oci:{corpus_oci}:{TAG}", f"docker://{registry_plain.host}/{REPOSITORY}:{TAG}"
    )
    return registry_plain


@pytest.fixture
def state_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's daemons register under a private state dir (short: the API socket's
    path must fit in 108 bytes); every mount left is unmounted at the end."""
    state = Path(tempfile.mkdtemp(prefix="ketch-faults-"))
    monkeypatch.setenv("KETCH_STATE_DIR", str(state))
    yield state
    for record in (state / "mounts").glob("*.json") if (state / "mounts").exists() else []:
        mountpoint = json.loads(record.read_text())["mountpoint"]
        subprocess.run([*KETCH, "umount", mountpoint], capture_output=True, check=False)


def _status(mountpoint: Path) -> dict[str, float]:
    result = ketch("status", str(mountpoint), "--json")
    metrics: dict[str, float] = json.loads(result.stdout)["metrics"]
    return metrics


def _by_cause(metrics: dict[str, float], name: str) -> dict[str, int]:
    prefix = f'{name}{{cause="'
    return {
        key[len(prefix) : -2]: int(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and value
    }


def _read_tree(root: Path) -> dict[str, bytes | int]:
    """Every regular file under ``root``: its bytes, or the errno reading it gave."""
    found: dict[str, bytes | int] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                found[str(path.relative_to(root))] = path.read_bytes()
            except OSError as exc:
                found[str(path.relative_to(root))] = exc.errno or -1
    return found


def test_a_whole_image_read_through_random_faults_is_exact(
    pushed: RunningRegistry,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
    state_dir: Path,
) -> None:
    seed = fault_seed()
    print(f"fault injection: KETCH_FAULT_SEED={seed}")
    tree = umoci_unpacked(corpus_oci, TAG)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with FaultProxy(pushed.host, stall=TIMEOUT + 1.0) as proxy:
        ketch(
            "mount",
            f"docker://{proxy.host}/{REPOSITORY}:{TAG}",
            str(mountpoint),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--timeout",
            str(TIMEOUT),
            "--retries",
            "10",
        )
        before = _status(mountpoint)
        assert not _by_cause(before, "ketch_request_retries_total")
        proxy.inject(seed, RATE, KINDS)
        differences = compare_trees(tree, mountpoint)
        proxy.stop_injecting()
        assert differences == [], f"seed {seed}: " + "\n".join(map(str, differences[:20]))
        metrics = _status(mountpoint)  # the daemon is alive and answers
        injected = dict(proxy.injected)
    print(f"injected: {injected}")
    assert sum(injected.values()) >= 5, f"seed {seed}: too few faults to mean anything"
    expected: dict[str, int] = {}
    for kind, count in injected.items():
        if kind in CAUSES:
            expected[CAUSES[kind]] = expected.get(CAUSES[kind], 0) + count
    assert _by_cause(metrics, "ketch_request_retries_total") == expected, f"seed {seed}"
    assert _by_cause(metrics, "ketch_request_failures_total") == {}, f"seed {seed}"
    assert metrics["ketch_fetch_timeouts_total"] == injected.get("stall", 0)
    assert metrics["ketch_chunk_verify_failures_total"] == injected.get("flip", 0)
    assert metrics["ketch_read_errors_total"] == 0


def test_mount_time_requests_are_retried(
    pushed: RunningRegistry, tmp_path: Path, state_dir: Path
) -> None:
    """The manifest, config and bootstrap reads of a mount meet a fault each."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with FaultProxy(pushed.host, stall=TIMEOUT + 1.0) as proxy:
        proxy.plan(
            ["truncate", "reset-body", "503", "reset", "stall", "429"],
            match=lambda method, path: "/manifests/" in path or "/blobs/" in path,
        )
        ketch(
            "mount",
            f"docker://{proxy.host}/{REPOSITORY}:{TAG}",
            str(mountpoint),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--timeout",
            str(TIMEOUT),
            "--retries",
            "10",
        )
        assert proxy.pending == 0
        assert (mountpoint / "etc").is_dir()


def test_a_corrupt_chunk_fails_only_its_files_and_the_daemon_serves_on(
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
    state_dir: Path,
) -> None:
    """Issue 16, defect 1: one byte flipped in a small file's chunk, in a copy of the
    layout. Reading the whole image reads that chunk ahead with its neighbours; only the
    files holding it fail (EIO), every other byte is served, and the daemon lives."""
    tree = umoci_unpacked(corpus_oci, TAG)
    layout = tmp_path / "layout"
    ketch("convert", f"oci:{corpus_oci}:{TAG}", f"oci:{layout}:{TAG}")
    candidates = sorted(
        p
        for p in (tree / "usr" / "lib").rglob("*.py")
        if p.is_file() and not p.is_symlink() and 20_000 < p.stat().st_size < 200_000
    )
    victim = candidates[len(candidates) // 2]
    path = "/" + str(victim.relative_to(tree))
    info = json.loads(ketch("inspect", f"oci:{layout}:{TAG}", path, "--json").stdout)
    chunk = info["chunks"][0]
    blob = layout / "blobs" / "sha256" / chunk["blob"][len("sha256:") :]
    data = bytearray(blob.read_bytes())
    data[chunk["compressed_offset"] + 10] ^= 0xFF
    blob.write_bytes(bytes(data))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    ketch("mount", f"oci:{layout}:{TAG}", str(mountpoint), "--cache-dir", str(tmp_path / "c"))
    expected = _read_tree(tree)
    found = _read_tree(mountpoint)
    failed = {name for name, value in found.items() if isinstance(value, int)}
    holding = {name for name, value in expected.items() if value == expected[path[1:]]}
    assert failed == holding, f"expected EIO for {sorted(holding)}, found {sorted(failed)}"
    assert {found[name] for name in failed} == {errno.EIO}
    assert {k: v for k, v in found.items() if k not in failed} == {
        k: v for k, v in expected.items() if k not in failed
    }
    metrics = _status(mountpoint)
    assert metrics["ketch_chunk_verify_failures_total"] >= 1
    assert metrics["ketch_read_errors_total"] >= 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem of 1 MiB (tmpfs): a chunk cache there fills at once."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_cache_disk_is_counted_logged_and_the_daemon_serves_on(
    ketch_layout_py1: Path,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
    small_disk: Path,
    state_dir: Path,
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    started = time.monotonic()
    ketch("mount", f"oci:{ketch_layout_py1}:{TAG}", str(mountpoint), "--cache-dir", str(small_disk))
    differences = compare_trees(umoci_unpacked(corpus_oci, TAG), mountpoint)
    assert differences == [], "\n".join(map(str, differences[:20]))
    metrics = _status(mountpoint)
    assert metrics["ketch_cache_no_space_total"] > 0
    assert metrics["ketch_cache_store_errors_total"] == metrics["ketch_cache_no_space_total"]
    assert metrics["ketch_read_errors_total"] == 0
    record = json.loads(next((state_dir / "mounts").glob("*.json")).read_text())
    log = Path(record["log_file"]).read_text()
    # Logged once a minute at most, each line with the count since the last.
    minutes = (time.monotonic() - started) / 60
    assert 1 <= log.count("chunk cache full") <= 1 + minutes
    assert "bootstrap not cached, kept in memory" in log


@pytest.fixture(scope="module")
def ketch_layout_py1(corpus_oci: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = tmp_path_factory.mktemp("ketch-py1")
    ketch("convert", f"oci:{corpus_oci}:{TAG}", f"oci:{layout}:{TAG}")
    return layout


def test_damaged_cache_entries_are_counted_and_replaced(
    ketch_layout_py1: Path,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
    state_dir: Path,
) -> None:
    good = (umoci_unpacked(corpus_oci, TAG) / "app" / "model.bin").read_bytes()
    cache = tmp_path / "cache"
    image = f"oci:{ketch_layout_py1}:{TAG}"
    first = tmp_path / "first"
    first.mkdir()
    ketch("mount", image, str(first), "--cache-dir", str(cache))
    assert (first / "app" / "model.bin").read_bytes() == good
    ketch("umount", str(first))
    entries = [p for p in (cache / "chunks").rglob("*") if p.is_file()]
    assert entries
    for entry in entries:  # every entry damaged while no daemon runs
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
    second = tmp_path / "second"
    second.mkdir()
    ketch("mount", image, str(second), "--cache-dir", str(cache))
    assert (second / "app" / "model.bin").read_bytes() == good
    metrics = _status(second)
    assert metrics["ketch_cache_corrupt_entries_total"] >= 3  # model.bin is 3 chunks
    assert metrics["ketch_read_errors_total"] == 0
    # Replaced: model.bin's entries are whole and right again (written behind the reads).
    info = json.loads(ketch("inspect", image, "/app/model.bin", "--json").stdout)
    algo = DigestAlgorithm.from_name(entries[0].parent.parent.name)
    paths = [
        cache / "chunks" / algo.label / chunk["digest"][:2] / chunk["digest"]
        for chunk in info["chunks"]
    ]

    def replaced() -> bool:
        return all(p.is_file() and algo.digest(p.read_bytes()).hex() == p.name for p in paths)

    deadline = time.monotonic() + 30
    while not replaced():
        assert time.monotonic() < deadline, "damaged cache entries were not replaced"
        time.sleep(0.1)
