"""FUSE mounts of real images: the mounted tree equals umoci's, chunks load on demand and
are verified, the cache survives a killed daemon, containers start on the mount."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ketch.daemon.api import api_get
from ketch.daemon.state import read_record
from ketch.runtime.overlay import Overlay
from tests.integration.ketch_cli import ketch
from tests.treecmp import compare_trees


@pytest.fixture(scope="session")
def ketch_layout(corpus_oci: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus images converted once for every mount test of this worker."""
    layout = tmp_path_factory.mktemp("ketch-layout")
    for tag in ("base", "py1", "py2"):
        ketch("convert", f"oci:{corpus_oci}:{tag}", f"oci:{layout}:{tag}")
    return layout


pytestmark = pytest.mark.usefixtures("private_state")


class Mounted:
    def __init__(self, mountpoint: Path, cache: Path) -> None:
        self.path = mountpoint
        self.cache = cache
        record = read_record(mountpoint)
        assert record is not None
        self.record = record

    def metrics(self) -> dict[str, float]:
        text = api_get(Path(self.record.api_sock), "/metrics").decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                values[name] = float(value)
        return values

    def files(self) -> list[dict[str, object]]:
        result: list[dict[str, object]] = json.loads(
            api_get(Path(self.record.api_sock), "/api/v1/files")
        )
        return result


MountFactory = Callable[..., Mounted]


@pytest.fixture
def mount(tmp_path: Path, ketch_layout: Path) -> MountFactory:
    def do_mount(
        tag: str, *extra: str, cache: Path | None = None, layout: Path | None = None
    ) -> Mounted:
        mountpoint = tmp_path / f"mnt-{tag}-{len(list(tmp_path.glob('mnt-*')))}"
        mountpoint.mkdir()
        cache = cache or tmp_path / "cache"
        ketch(
            "mount",
            f"oci:{layout or ketch_layout}:{tag}",
            str(mountpoint),
            "--cache-dir",
            str(cache),
            *extra,
        )
        return Mounted(mountpoint, cache)

    return do_mount


@pytest.mark.parametrize("tag", ["base", "py1", "py2"])
def test_mounted_tree_equals_umoci(
    tag: str, mount: MountFactory, corpus_oci: Path, umoci_unpacked: Callable[[Path, str], Path]
) -> None:
    mounted = mount(tag)
    assert mounted.metrics()["ketch_backend_read_bytes_total"] == 0  # nothing fetched at mount
    differences = compare_trees(umoci_unpacked(corpus_oci, tag), mounted.path)
    assert differences == [], "\n".join(str(d) for d in differences[:20])
    assert mounted.metrics()["ketch_chunk_verify_failures_total"] == 0


def test_tools_behave_on_the_mount(mount: MountFactory) -> None:
    mounted = mount("py1")
    stat = os.statvfs(mounted.path)  # overlayfs needs statfs
    assert stat.f_bsize == 4096 and stat.f_files > 1000
    first = os.listdir(mounted.path / "usr" / "lib")
    assert first == os.listdir(mounted.path / "usr" / "lib")  # stable listing
    for _ in range(2):  # a missing name is a (cached) negative entry: ENOENT both times
        with pytest.raises(FileNotFoundError):
            os.stat(mounted.path / "etc" / "no-such-file")
        with pytest.raises(FileNotFoundError):
            os.stat(mounted.path / "no-such-dir" / "x")
    assert {".", ".."} <= set(
        subprocess.run(
            ["ls", "-a", str(mounted.path)], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    subprocess.run(["ls", "-lR", str(mounted.path / "etc")], capture_output=True, check=True)
    found = subprocess.run(
        ["find", str(mounted.path), "-type", "f"], capture_output=True, text=True, check=True
    )
    assert len(found.stdout.splitlines()) > 1000
    tar = subprocess.run(
        ["tar", "cf", "-", "-C", str(mounted.path), "app", "etc"], capture_output=True, check=True
    )
    assert len(tar.stdout) > 3_000_000
    out = subprocess.run(
        [
            "chroot",
            str(mounted.path),
            "python3",
            "-c",
            "import json, sqlite3; print(json.dumps([1]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[1]"
    assert mounted.files()  # python's imports were traced
    with pytest.raises(OSError):
        (mounted.path / "etc" / "new").write_text("x")


def test_partial_read_fetches_only_covering_chunks(mount: MountFactory, corpus_oci: Path) -> None:
    mounted = mount("py1")
    model = mounted.path / "app" / "model.bin"  # 3 MB of random data: 3 chunks of 1 MiB
    with model.open("rb") as f:
        f.seek(1_500_000)
        f.read(10)
    fetched = mounted.metrics()["ketch_backend_read_bytes_total"]
    # One chunk (plus what the kernel's readahead asked for), never the whole file.
    assert 0 < fetched <= 2 * (1 << 20) + 4096
    files = mounted.files()
    assert files[0]["path"] == "/app/model.bin"


def test_corrupt_blob_gives_eio_and_never_wrong_bytes(
    mount: MountFactory,
    ketch_layout: Path,
    tmp_path: Path,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
) -> None:
    layout = tmp_path / "corrupt"
    ketch("convert", f"oci:{corpus_oci}:py1", f"oci:{layout}:py1")
    info = json.loads(ketch("inspect", f"oci:{layout}:py1", "/app/model.bin", "--json").stdout)
    chunk = info["chunks"][1]
    blob = layout / "blobs" / "sha256" / chunk["blob"][7:]
    data = bytearray(blob.read_bytes())
    data[chunk["compressed_offset"] + 100] ^= 0xFF
    blob.write_bytes(bytes(data))
    mounted = mount("py1", layout=layout)
    good = (umoci_unpacked(corpus_oci, "py1") / "app" / "model.bin").read_bytes()
    with (mounted.path / "app" / "model.bin").open("rb") as f:
        assert f.read(1 << 20) == good[: 1 << 20]  # chunk 0 is fine
        with pytest.raises(OSError) as error:
            f.seek(1 << 20)
            f.read(1 << 20)
        assert error.value.errno == 5  # EIO
    assert mounted.metrics()["ketch_chunk_verify_failures_total"] >= 1
    log = Path(mounted.record.log_file).read_text()
    assert chunk["blob"] in log and chunk["digest"] in log
    # Nothing bad was cached: the corrupt chunk is not in the cache directory.
    assert not list(mounted.cache.rglob(chunk["digest"]))


def test_killed_daemon_leaves_no_stuck_mount_and_cache_stays_sound(
    mount: MountFactory,
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
) -> None:
    mounted = mount("py2")
    reference = umoci_unpacked(corpus_oci, "py2")
    files = sorted(
        p
        for p in (reference / "usr" / "lib" / "python3" / "dist-packages" / "numpy").rglob("*.so*")
    )
    assert files

    def read_all() -> None:
        for path in files:
            try:
                (mounted.path / path.relative_to(reference)).read_bytes()
            except OSError:
                return

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(read_all) for _ in range(4)]
        time.sleep(0.3)
        os.kill(mounted.record.pid, signal.SIGKILL)
        for future in futures:
            future.result()
    ketch("umount", str(mounted.path))  # clears the dead mount
    assert not any(
        str(mounted.path) in line for line in Path("/proc/mounts").read_text().splitlines()
    )
    again = mount("py2", cache=mounted.cache)
    for path in files:
        assert (again.path / path.relative_to(reference)).read_bytes() == path.read_bytes()
    metrics = again.metrics()
    assert metrics["ketch_cache_hits_total"] > 0


def test_concurrent_readers(
    mount: MountFactory, corpus_oci: Path, umoci_unpacked: Callable[[Path, str], Path]
) -> None:
    mounted = mount("py2")
    reference = umoci_unpacked(corpus_oci, "py2")
    candidates = [p for p in (reference / "usr").rglob("*") if p.is_file() and not p.is_symlink()]
    rng = random.Random(5)
    picks = rng.sample(candidates, 320)

    def check(path: Path) -> bool:
        return (mounted.path / path.relative_to(reference)).read_bytes() == path.read_bytes()

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(check, picks))
    assert mounted.metrics()["ketch_read_errors_total"] == 0


def test_prefetch_list_fills_the_cache(mount: MountFactory, tmp_path: Path) -> None:
    listing = tmp_path / "prefetch.txt"
    listing.write_text("/app/model.bin\n/usr/bin/python3.11\n# a comment\n/no/such/file\n")
    mounted = mount("py1", "--prefetch-file", str(listing))
    total = sum((mounted.path / p).stat().st_size for p in ("app/model.bin", "usr/bin/python3.11"))
    deadline = time.monotonic() + 60
    while mounted.metrics()["ketch_prefetch_bytes_total"] < total and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mounted.metrics()["ketch_prefetch_bytes_total"] == total
    before = mounted.metrics()["ketch_backend_read_bytes_total"]
    (mounted.path / "app" / "model.bin").read_bytes()
    assert mounted.metrics()["ketch_backend_read_bytes_total"] == before  # served from the cache
    assert mounted.files()[0]["path"] == "/app/model.bin"


def test_umount_stops_the_daemon(mount: MountFactory) -> None:
    mounted = mount("base")
    pid = mounted.record.pid
    result = ketch("umount", str(mounted.path))
    assert "unmounted" in result.stdout
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("daemon still running after umount")
    failed = ketch("umount", str(mounted.path), check=False)
    assert failed.returncode == 3 and failed.stderr.startswith("ketch: error:")


def test_a_mountpoint_reached_through_a_symlink_mounts_and_unmounts(
    tmp_path: Path, ketch_layout: Path
) -> None:
    real = tmp_path / "real"
    (real / "mnt").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    ketch(
        "mount", f"oci:{ketch_layout}:base", str(link / "mnt"), "--cache-dir", str(tmp_path / "c")
    )
    assert (real / "mnt" / "etc" / "os-release").read_bytes()
    status = json.loads(ketch("status", str(link / "mnt"), "--json").stdout)
    assert status["daemon"]["pid"] > 0
    ketch("umount", str(link / "mnt"))
    # Gone from the kernel's table too: no mount left behind at the real path.
    assert f" {real / 'mnt'} " not in Path("/proc/self/mountinfo").read_text()
    assert os.listdir(real / "mnt") == []


def test_mount_errors_are_one_line(tmp_path: Path, ketch_layout: Path) -> None:
    result = ketch("mount", f"oci:{ketch_layout}:nope", str(tmp_path), check=False)
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "nope" in result.stderr
    result = ketch("mount", f"oci:{ketch_layout}:py1", str(tmp_path / "missing"), check=False)
    assert result.returncode == 2 and "not a directory" in result.stderr


@pytest.mark.parametrize(("tag", "expected"), [("py1", '{"ok": true}'), ("py2", "3")])
def test_ketch_run_on_a_lazy_mount(
    tag: str, expected: str, ketch_layout: Path, tmp_path: Path
) -> None:
    result = ketch(
        "run", f"oci:{ketch_layout}:{tag}", "--cache-dir", str(tmp_path / "cache"), "--rm-mount"
    )
    assert result.stdout.strip() == expected
    code = ketch(
        "run",
        f"oci:{ketch_layout}:{tag}",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--rm-mount",
        "--",
        "sh",
        "-c",
        "echo written > /tmp/x && cat /tmp/x && exit 7",
        check=False,
    )
    assert code.returncode == 7 and code.stdout.strip() == "written"
    assert not any(
        "fuse.ketch" in line and str(tmp_path) in line
        for line in Path("/proc/mounts").read_text().splitlines()
    )


def test_ketch_run_with_a_state_dir_reached_through_a_symlink(
    ketch_layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # runc refuses a rootfs path with a symlink in it; containers live in the state dir.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("KETCH_STATE_DIR", str(tmp_path / "link" / "state"))
    result = ketch(
        "run", f"oci:{ketch_layout}:py1", "--cache-dir", str(tmp_path / "cache"), "--rm-mount"
    )
    assert result.stdout.strip() == '{"ok": true}'


def test_overlayfs_over_the_mount(mount: MountFactory, tmp_path: Path) -> None:
    mounted = mount("py1")
    original = (mounted.path / "app" / "main.py").read_bytes()
    with Overlay(mounted.path, tmp_path / "overlay") as overlay:
        merged = overlay.merged
        assert (merged / "app" / "main.py").read_bytes() == original
        (merged / "app" / "main.py").write_text("changed\n")
        (merged / "etc" / "new-file").write_text("new\n")
        assert (merged / "app" / "main.py").read_text() == "changed\n"
        assert sorted(os.listdir(merged / "app")) == sorted([*os.listdir(mounted.path / "app")])
    assert (mounted.path / "app" / "main.py").read_bytes() == original
    assert not (mounted.path / "etc" / "new-file").exists()


def test_prefetch_table_from_an_access_trace(
    mount: MountFactory, corpus_oci: Path, tmp_path: Path
) -> None:
    # A first run records what the workload read; the next build stores it in the image.
    first = mount("py1")
    subprocess.run(
        ["chroot", str(first.path), "python3", "/app/main.py"], check=True, capture_output=True
    )
    trace = ketch("status", str(first.path), "--paths").stdout.splitlines()
    # main.py is hardlinked: the trace names its first name, main-link.py
    assert any(p.startswith("/app/main") for p in trace)
    assert any(p.startswith("/usr/bin/python3") for p in trace)
    listing = tmp_path / "trace.txt"
    listing.write_text("\n".join([*trace, "/app/model.bin", "/no/such/file"]) + "\n")
    layout = tmp_path / "with-prefetch"
    ketch("convert", f"oci:{corpus_oci}:py1", f"oci:{layout}:py1", "--prefetch-list", str(listing))
    info = json.loads(ketch("inspect", f"oci:{layout}:py1", "--json").stdout)
    assert info["prefetch_files"] == len(set(trace)) + 1  # the missing path is skipped
    mounted = mount("py1", layout=layout, cache=tmp_path / "cache2")
    deadline = time.monotonic() + 60
    while (
        mounted.metrics()["ketch_prefetch_bytes_total"] < 3_000_000 and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    deadline = time.monotonic() + 60
    before = -1.0
    while time.monotonic() < deadline:  # until the prefetch stops fetching
        now = mounted.metrics()["ketch_backend_read_bytes_total"]
        if now == before:
            break
        before = now
        time.sleep(0.5)
    (mounted.path / "app" / "model.bin").read_bytes()
    assert mounted.metrics()["ketch_backend_read_bytes_total"] == before
    assert mounted.files()[0]["path"] == "/app/model.bin"
